"""``nnUNetv2_petct_import_weights``: turn released pretrained weights into a foundation checkpoint, and write
nnU-Net plans for a target dataset that rebuild exactly that network.

Thin layer over :mod:`nnunetv2_petct.transfer.importers` (the conversion) and
:func:`nnunetv2_petct.nnunet.plans.write_plans_for_checkpoint` (the plans).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

EPILOG = """\
formats (--format; auto detects)
  liu2026           the released MAE weights of Liu et al. 2026 (nnunet_v2_mim_best.pth, linked from
                    github.com/liu-xiaofeng/MAE-for-PET-CT): keys 'nnunet.'/'module.nnunet.' stripped, optimizer/
                    scaler/scheduler state dropped, channels reordered from (PET, CT) to this package's
                    (_0000 = CT, _0001 = PET) in the first convolution and every alias of it (and in the
                    reconstruction heads, which nnU-Net never loads into a segmentation head). A file whose
                    tensors do not match the paper's architecture is refused.
  petct-foundation  a foundation checkpoint of this package (e.g. from an older version): rewritten with the
                    current adaptation plan (needed for upstream nnU-Net's nnssl route)

the whole path from the downloaded file (AutoPET as dataset 221; each step's --help says more)
  nnUNetv2_petct_convert autopet /downloads/FDG-PET-CT-Lesions -d 221 --normalization zscore-both
  nnUNetv2_plan_and_preprocess -d 221 -c 3d_fullres --no_pp
  nnUNetv2_petct_import_weights nnunet_v2_mim_best.pth -o foundation_liu2026.pth -d 221
  nnUNetv2_preprocess -d 221 -plans_name nnUNetPlans_liu2026 -c 3d_fullres -np 8
  nnUNetv2_train 221 3d_fullres 0 -p nnUNetPlans_liu2026 -tr nnUNetTrainerPETCTFinetune \\
      -pretrained_weights foundation_liu2026.pth
  nnUNetv2_predict -i imagesTs -o pred -d 221 -c 3d_fullres -f 0 -p nnUNetPlans_liu2026 \\
      -tr nnUNetTrainerPETCTFinetune

-d TARGET writes <plans>.json (default nnUNetPlans_liu2026 / nnUNetPlans_foundation) into the target's
nnU-Net preprocessed folder: the checkpoint's network, spacing and normalization (liu2026: the paper's
U-Net at 3 x 2 x 2 mm, both channels z-scored per image), patch = the checkpoint's (96 x 128 x 128 for
liu2026; --patch, multiples of 32), batch 2 (--batch-size). The target must have the checkpoint's channels
in its order (CT, PET); a 1-channel target gets the nnUNetv2_petct_adapt_checkpoint command to run first.
The plans decide the normalization whatever the channel names; converting with --normalization zscore-both
records the same choice in dataset.json.

exit codes: 0 done, 2 bad input (nothing written).
"""


def _err(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    from nnunetv2_petct.transfer.importers import FORMATS

    p = argparse.ArgumentParser(
        prog="nnUNetv2_petct_import_weights",
        description="Import pretrained weights (e.g. the released weights of Liu et al. 2026) as a foundation "
        "checkpoint that stock `nnUNetv2_train -pretrained_weights` and upstream nnU-Net's nnssl route load, and "
        "write matching nnU-Net plans for a target dataset.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", help="the file to import (.pth)")
    p.add_argument("-o", "--output", default=None, help="the foundation checkpoint to write (.pth)")
    p.add_argument("--format", default="auto", choices=["auto", *FORMATS], help="source format (default: auto)")
    p.add_argument("-d", "--dataset", default=None,
                   help="target dataset id or name: also write plans for it that rebuild the checkpoint's network "
                        "(the dataset must be planned: nnUNetv2_plan_and_preprocess -d ID -c 3d_fullres --no_pp)")
    p.add_argument("-p", "--plans-name", default=None,
                   help="identifier of the plans to write (default nnUNetPlans_liu2026 for liu2026, else "
                        "nnUNetPlans_foundation)")
    p.add_argument("-s", "--source-plans", default="nnUNetPlans", help="the target's existing plans (default "
                   "nnUNetPlans)")
    p.add_argument("--patch", type=int, nargs=3, metavar=("Z", "Y", "X"), default=None,
                   help="patch size of the plans (default: the checkpoint's, 96 128 128 for liu2026)")
    p.add_argument("--batch-size", type=int, default=2, help="batch size of the plans (default 2)")
    p.add_argument("--preprocessed-dir", default=None, help="default: $nnUNet_preprocessed")
    p.add_argument("--trust-pickle", action="store_true",
                   help="load the source with full unpickling when weights-only loading refuses it (can run code: "
                        "only for files you trust)")
    p.add_argument("-f", "--force", action="store_true", help="replace existing output / plans files")
    p.add_argument("-q", "--quiet", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from nnunetv2_petct.conversion.core import BadInputError
    from nnunetv2_petct.conversion.registry import find_dataset_dir
    from nnunetv2_petct.io import WriteError
    from nnunetv2_petct.nnunet.plans import PlansError, plans_for_target, write_plans
    from nnunetv2_petct.transfer.architecture import ArchitectureError
    from nnunetv2_petct.transfer.foundation import FoundationCheckpointError, save_foundation_checkpoint
    from nnunetv2_petct.transfer.importers import WeightsImportError, import_checkpoint

    if a.output is None and a.dataset is None:
        return _err("nothing to do: give -o OUTPUT (the foundation checkpoint) and/or -d TARGET (plans for it)")
    if a.batch_size < 1:
        return _err("--batch-size must be >= 1")
    folder = None
    if a.dataset is not None:  # find the target before the (slow) import, so a typo fails at once
        base = a.preprocessed_dir or os.environ.get("nnUNet_preprocessed")
        if not base:
            return _err("nnUNet_preprocessed is not set (or pass --preprocessed-dir)")
        try:
            folder = find_dataset_dir(Path(base), a.dataset)
        except BadInputError as e:
            return _err(f"{e} (is the target dataset planned? nnUNetv2_plan_and_preprocess -d {a.dataset} -c "
                        f"3d_fullres --no_pp)")
    errors = (FileNotFoundError, FileExistsError, WeightsImportError, FoundationCheckpointError, ArchitectureError,
              PlansError, WriteError)
    try:
        if a.output is not None and Path(a.output).exists() and not a.force:
            raise FileExistsError(f"{a.output} exists (use --force to replace it)")
        ckpt = import_checkpoint(a.source, a.format, trust_pickle=a.trust_pickle)
        info = ckpt["petct_metadata"]["import"]
        if folder is not None:  # every check before anything is written
            plans_name = a.plans_name or ("nnUNetPlans_liu2026" if info["format"] == "liu2026"
                                          else "nnUNetPlans_foundation")
            plans = plans_for_target(folder, ckpt["nnssl_adaptation_plan"], plans_name=plans_name,
                                     source_plans=a.source_plans, patch_size=a.patch, batch_size=a.batch_size)
            write_plans(plans, folder, overwrite=a.force, dry_run=True)
        if a.output is not None:
            if Path(a.output).resolve() == Path(a.source).resolve():
                raise FileExistsError("the output would replace the file being imported; choose another -o")
            path = save_foundation_checkpoint(ckpt, a.output)
            if not a.quiet:
                print(f"wrote {path} (format {info['format']}; source sha256 {info['sha256']})")
                for change in info["changes"]:
                    print(f"  - {change}")
        if folder is not None:
            plans_path = write_plans(plans, folder, overwrite=a.force)
    except errors as e:
        return _err(str(e))
    if folder is not None and not a.quiet:
        c = plans["configurations"]["3d_fullres"]
        print(f"wrote {plans_path}\n  3d_fullres: spacing {c['spacing']} mm, patch {c['patch_size']}, batch "
              f"{c['batch_size']}, normalization {c['normalization_schemes']}")
        for note in plans["petct_plans"]["notes"]:
            print(f"  note: {note}")
        weights = a.output or (a.source if info["format"] == "petct-foundation" else "FOUNDATION.pth (write it with -o)")
        print(f"next:\n  nnUNetv2_preprocess -d {a.dataset} -plans_name {plans_name} -c 3d_fullres\n"
              f"  nnUNetv2_train {a.dataset} 3d_fullres FOLD -p {plans_name} -tr nnUNetTrainerPETCTFinetune "
              f"-pretrained_weights {weights}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
