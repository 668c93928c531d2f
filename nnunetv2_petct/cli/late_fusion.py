"""``nnUNetv2_petct_late_fusion_checkpoint``: bundle a CT-only and a PET-only foundation checkpoint for the
separated-modality linear probe.

Thin layer over :func:`nnunetv2_petct.transfer.late_fusion.write_late_fusion_checkpoint`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

EPILOG = """\
what it makes
  One weights_only-safe checkpoint whose network_weights are the two single-channel networks under
  branches.ct.* and branches.pet.* (their output layers dropped), for
    nnUNetv2_train DATASET 3d_fullres FOLD -tr nnUNetTrainerPETCTLateFusionProbe -pretrained_weights OUT
  The late-fusion network runs the CT network on channel 0 and the PET network on channel 1, concatenates
  their last decoder features (the input of each network's final 1x1x1 layer) and trains one 1x1x1 head:
  the same number of trainable parameters per input feature as the joint probe
  (nnUNetTrainerPETCTLinearProbe). This is the fair way to probe separated-modality pretraining: each
  network computes exactly the features it was pretrained to compute.

  Do NOT merge the two networks into one 2-channel network (nnUNetv2_petct_adapt_checkpoint --ct/--pet)
  to probe them: independently trained networks are not aligned unit by unit, so a merged network
  computes neither model's features; that merge is only a starting point for fine-tuning.

inputs
  --ct / --pet: foundation_final.pth of nnUNetTrainerPETCTMAE_CTOnly / _PETOnly trained on the plans of
  the target dataset (same architecture). A 2-channel (joint) checkpoint, a swapped pair (the metadata
  says which channel a model was pretrained on) or two different architectures are refused.
  --check TARGET: would nnUNetv2_train -tr nnUNetTrainerPETCTLateFusionProbe -pretrained_weights OUT
  accept it for TARGET (plans file, trained-model folder or preprocessed dataset folder)?

Everything is checked before the output is written: a refused run (exit 1 or 2) writes nothing.

exit codes: 0 written (and compatible with --check), 1 incompatible with --check (not written), 2 bad input.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnUNetv2_petct_late_fusion_checkpoint",
        description="Bundle a CT-only and a PET-only foundation checkpoint into one late-fusion checkpoint for "
        "nnUNetTrainerPETCTLateFusionProbe (the separated-modality linear probe).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--ct", required=True, metavar="CKPT", help="CT-only foundation checkpoint")
    p.add_argument("--pet", required=True, metavar="CKPT", help="PET-only foundation checkpoint")
    p.add_argument("-o", "--output", required=True, help="output checkpoint (.pth)")
    p.add_argument("--check", metavar="PLANS_OR_MODEL_DIR",
                   help="check the bundle against a plans file, trained-model folder or preprocessed dataset folder")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier for a preprocessed folder")
    p.add_argument("-c", "--configuration", default=None, help="configuration (default: from the folder, else "
                   "3d_fullres)")
    p.add_argument("-f", "--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if a.quiet else logging.INFO, format="%(message)s")
    from nnunetv2_petct.transfer.late_fusion import LateFusionError, load_late_fusion_bundle
    from nnunetv2_petct.transfer.weights import (
        IncompatibleCheckpointError,
        check_compatibility,
        save_checkpoint,
    )

    if Path(a.output).exists() and not a.force:
        print(f"error: {a.output} exists (use -f to overwrite)", file=sys.stderr)
        return 2
    # everything is checked before anything is written: the sources, the --check target, the compatibility
    try:
        bundle = load_late_fusion_bundle(a.ct, a.pet)
    except (FileNotFoundError, IncompatibleCheckpointError, LateFusionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = None
    if a.check:
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        from nnunetv2_petct.nnunet.trainers.finetune import load_check_target
        from nnunetv2_petct.nnunet.trainers.late_fusion import build_late_fusion_network

        try:
            plans, dataset_json, configuration = load_check_target(a.check, a.plans, a.configuration)
            pm = PlansManager(plans)
            n_out = pm.get_label_manager(dataset_json).num_segmentation_heads if dataset_json else 2
            net = build_late_fusion_network(pm, pm.get_configuration(configuration), 2, n_out)
        except (FileNotFoundError, ValueError, KeyError) as e:
            print(f"error: --check {a.check}: {e} (nothing written)", file=sys.stderr)
            return 2
        report = check_compatibility(bundle, net)
        print(report.message())
        if not report.ok:
            print(f"{a.output} not written: the bundle does not fit {a.check}", file=sys.stderr)
            return 1
    try:
        save_checkpoint(bundle, a.output)
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not a.quiet:
        print(f"wrote {a.output}: {len(bundle['network_weights'])} tensors (branches ct, pet) for "
              f"nnUNetTrainerPETCTLateFusionProbe")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
