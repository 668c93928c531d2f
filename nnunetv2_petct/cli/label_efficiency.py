"""``nnUNetv2_petct_label_efficiency``: the label-efficiency grid (pretrained vs scratch vs probe).

Thin layer over :func:`nnunetv2_petct.nnunet.label_efficiency.label_efficiency`.
"""

from __future__ import annotations

import argparse
import logging
import sys

EPILOG = """\
what it does
  1. splits: a fixed, patient-grouped validation set and, from the rest of the training pool, one
     patient-grouped training subset per --fractions value (nested, one seed) and per --shots value
     (K lesion-positive cases of K patients). Each subset becomes one fold of splits_final.json in the
     preprocessed dataset folder (existing folds are kept, ours appended; identical folds reused). The
     held-out test set is never trained or validated on.
  2. runs, one per subset and method, with the stock nnUNetv2_train (sequentially; --dry-run prints the
     commands and writes OUT/commands.sh for a cluster, then run again with --skip-training):
       pretrained -> nnUNetTrainerPETCTFinetune   (-pretrained_weights FOUNDATION)
       scratch    -> nnUNetTrainerPETCTScratch    (same schedule, random init)
       probe      -> nnUNetTrainerPETCTLinearProbe (frozen network, output conv trained)
     (+ frozen_encoder, probe_random_init, nnunet_default on request; --trainer-suffix _tiny for tests).
     A run whose checkpoint_final.pth exists is not trained again.
  3. nnUNetv2_predict on the test set with checkpoint_final.pth, autoPET metrics with the evaluation
     library, and OUT/label_efficiency.csv, .md (fraction x method: Dice, FPV, FNV, n cases) and
     OUT/label_efficiency_dice.png.

test set: --test-images DIR --test-labels DIR (external, e.g. imagesTs/labelsTs), or --test-cases FILE
(case ids of this dataset: text file one per line, JSON list, or CSV with case_id), else a seeded
patient-grouped --test-fraction of the dataset.

exit codes: 0 done, 1 a run failed (log file named), 2 bad input.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnUNetv2_petct_label_efficiency",
        description="Label-efficiency grid on an nnU-Net dataset: fine-tuning from a foundation checkpoint vs "
        "training from scratch vs linear probing, at several label fractions; one table and one plot.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-d", "--dataset", required=True, help="target dataset id or name (planned and preprocessed)")
    p.add_argument("--pretrained", help="foundation checkpoint (foundation_final.pth) for pretrained/probe runs")
    p.add_argument("--fractions", type=float, nargs="*", default=[0.1, 0.3, 1.0],
                   help="label fractions of the training pool (default: 0.1 0.3 1.0)")
    p.add_argument("--shots", type=int, nargs="*", default=[], help="K-shot subsets, e.g. --shots 5")
    p.add_argument("--methods", nargs="+", default=["pretrained", "scratch", "probe"],
                   help="pretrained scratch probe [frozen_encoder probe_random_init nnunet_default]")
    p.add_argument("--trainer-suffix", default="", help="e.g. _tiny for the tiny test schedules")
    p.add_argument("--test-cases", metavar="FILE", help="case ids of this dataset to hold out for testing")
    p.add_argument("--test-images", metavar="DIR", help="external test images (nnU-Net raw naming)")
    p.add_argument("--test-labels", metavar="DIR", help="external test labels")
    p.add_argument("--test-fraction", type=float, default=0.2,
                   help="held-out share when no test set is given (default 0.2)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="fixed validation share (default 0.1)")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("-c", "--configuration", default="3d_fullres")
    p.add_argument("-p", "--plans", default="nnUNetPlans")
    p.add_argument("-device", "--device", default="cuda", choices=("cuda", "cpu", "mps"))
    p.add_argument("--disable-tta", action="store_true", help="pass --disable_tta to nnUNetv2_predict")
    p.add_argument("-npp", type=int, default=None, help="nnUNetv2_predict preprocessing processes")
    p.add_argument("-nps", type=int, default=None, help="nnUNetv2_predict export processes (-npp 0 -nps 0: sequential, "
                   "no worker processes; good on small machines)")
    p.add_argument("-o", "--output", default=None, help="output folder (default: label_efficiency_<dataset>)")
    p.add_argument("--dry-run", action="store_true", help="write splits + commands.sh and print the commands")
    p.add_argument("--skip-training", action="store_true", help="only predict + evaluate finished runs")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if a.quiet else logging.INFO, format="%(message)s")
    from nnunetv2_petct.io import CaseListError, read_case_list
    from nnunetv2_petct.nnunet.label_efficiency import (
        TABLE_MD,
        LabelEfficiencyError,
        RunFailedError,
        label_efficiency,
    )

    out = a.output or f"label_efficiency_{a.dataset}"
    try:
        test_cases = read_case_list(a.test_cases) if a.test_cases else None
        rows = label_efficiency(
            a.dataset, out, fractions=a.fractions, shots=a.shots, pretrained=a.pretrained, methods=a.methods,
            trainer_suffix=a.trainer_suffix, configuration=a.configuration, plans=a.plans, test_cases=test_cases,
            test_images=a.test_images, test_labels=a.test_labels, test_fraction=a.test_fraction,
            val_fraction=a.val_fraction, seed=a.seed, device=a.device, disable_tta=a.disable_tta, npp=a.npp,
            nps=a.nps, dry_run=a.dry_run, skip_training=a.skip_training, quiet=a.quiet,
        )
    except (LabelEfficiencyError, CaseListError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1 if isinstance(e, RunFailedError) else 2
    if rows and not a.quiet:
        from pathlib import Path

        print(Path(out, TABLE_MD).read_text())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
