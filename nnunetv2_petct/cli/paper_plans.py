"""``nnUNetv2_petct_paper_plans``: plans that set up the paper's network, spacing, patch and batch on a dataset."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EPILOG = """\
what the plans contain (one configuration, 3d_fullres)
  network   PlainConvUNet (dynamic_network_architectures), 6 stages, features 32-64-128-256-320-320,
            3x3x3 kernels, strides 1 then 2 in all axes, 2 convs per stage (encoder and decoder), conv bias,
            InstanceNorm3d (eps 1e-5, affine), LeakyReLU 0.01, no dropout: the released weights of
            Liu et al. 2026 fit it exactly (nnUNetv2_petct_import_weights)
  spacing   3 x 2 x 2 mm (z, y, x); the plans use the identity axis order, so z, y, x are the arrays' axes
  patch     96 x 128 x 128 (z, y, x); --patch to change it (each axis a multiple of 32)
  batch     16 (--purpose pretraining, the paper's) or 2 (--purpose finetuning); --batch-size overrides
  normalization  nnunet: CT clip + dataset-wide z-score, PET per-image z-score (this package's default);
            zscore-both: both channels per-image z-score, no CT clipping (the authors; upstream nnU-Net's
            nnssl route; required for the released weights); pet-global: PET like CT.
            Pretraining and target datasets must use the same choice.

then (the plans are only a JSON file; preprocessing writes the data for them)
  nnUNetv2_preprocess -d DATASET -plans_name nnUNetPlans_paper -c 3d_fullres -np 8
  nnUNetv2_train DATASET 3d_fullres all -p nnUNetPlans_paper -tr nnUNetTrainerPETCTMAE_paper     # pretraining
  nnUNetv2_train DATASET 3d_fullres FOLD -p nnUNetPlans_paper -tr nnUNetTrainerPETCTFinetune \\
      -pretrained_weights foundation_final.pth                                                # fine-tuning

exit codes: 0 written (or already identical), 2 bad input.
"""


def main(argv: list[str] | None = None) -> int:
    from nnunetv2_petct.nnunet.plans import (
        PAPER_BATCH_SIZE_FINETUNING,
        PAPER_BATCH_SIZE_PRETRAINING,
        PAPER_PLANS_NAME,
        PLANS_NORMALIZATION_CHOICES,
    )

    p = argparse.ArgumentParser(
        prog="nnUNetv2_petct_paper_plans",
        description="Write nnU-Net plans that reproduce the paper's set-up (Liu et al. 2026) on a planned dataset: "
        "its U-Net at 3x2x2 mm with a 96x128x128 patch. Needs the dataset's nnU-Net plans first "
        "(nnUNetv2_plan_and_preprocess -d DATASET -c 3d_fullres --no_pp).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-d", "--dataset", required=True, help="dataset id or name (DatasetXXX_Name)")
    p.add_argument("-o", "--plans-name", default=PAPER_PLANS_NAME, help=f"new plans identifier (default "
                   f"{PAPER_PLANS_NAME})")
    p.add_argument("-s", "--source-plans", default="nnUNetPlans",
                   help="the dataset's existing plans to start from (default nnUNetPlans)")
    p.add_argument("--patch", type=int, nargs=3, metavar=("Z", "Y", "X"), default=None,
                   help="patch size in voxels, z y x (default 96 128 128; multiples of 32)")
    p.add_argument("--purpose", choices=("pretraining", "finetuning"), default="pretraining",
                   help=f"sets the batch size: pretraining {PAPER_BATCH_SIZE_PRETRAINING} (default), finetuning "
                        f"{PAPER_BATCH_SIZE_FINETUNING}")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (overrides --purpose)")
    p.add_argument("--normalization", choices=PLANS_NORMALIZATION_CHOICES, default="nnunet",
                   help="channel normalization (default nnunet; zscore-both for the released weights)")
    p.add_argument("--preprocessed-dir", default=None, help="default: $nnUNet_preprocessed")
    p.add_argument("-f", "--force", action="store_true", help="replace an existing plans file of that name")
    p.add_argument("-q", "--quiet", action="store_true")
    a = p.parse_args(argv)

    from nnunetv2_petct.conversion.core import BadInputError
    from nnunetv2_petct.conversion.registry import find_dataset_dir
    from nnunetv2_petct.nnunet.plans import PlansError, write_paper_plans

    batch = a.batch_size if a.batch_size is not None else (
        PAPER_BATCH_SIZE_PRETRAINING if a.purpose == "pretraining" else PAPER_BATCH_SIZE_FINETUNING)
    if batch < 1:
        return _err("--batch-size must be >= 1")
    base = a.preprocessed_dir or os.environ.get("nnUNet_preprocessed")
    if not base:
        return _err("nnUNet_preprocessed is not set (or pass --preprocessed-dir)")
    try:
        folder = find_dataset_dir(Path(base), a.dataset)
        path, plans = write_paper_plans(folder, plans_name=a.plans_name, source_plans=a.source_plans,
                                        patch_size=a.patch, batch_size=batch, normalization=a.normalization,
                                        overwrite=a.force)
    except (BadInputError, FileNotFoundError, FileExistsError, PlansError) as e:
        return _err(str(e))
    if not a.quiet:
        c = plans["configurations"]["3d_fullres"]
        print(f"wrote {path}\n  3d_fullres: spacing {c['spacing']} mm, patch {c['patch_size']}, batch "
              f"{c['batch_size']}, normalization {c['normalization_schemes']}")
        for note in plans["petct_plans"]["notes"]:
            print(f"  note: {note}")
        print(f"next: nnUNetv2_preprocess -d {a.dataset} -plans_name {a.plans_name} -c 3d_fullres")
    return 0


def _err(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
