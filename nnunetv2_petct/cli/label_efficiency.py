"""``nnUNetv2_petct_label_efficiency``: the label-efficiency grid (pretrained vs baselines vs probes, seeds).

Thin layer over :func:`nnunetv2_petct.nnunet.label_efficiency.label_efficiency`.
"""

from __future__ import annotations

import argparse
import logging
import sys

EPILOG = """\
the paper's two claims
  1. "10 % labels + pretraining ~ 100 % labels from scratch":
       nnUNetv2_petct_label_efficiency -d DATASET --pretrained foundation_final.pth --fractions 0.1 0.3 1.0 \
           --seeds 3
     -> the paired comparisons "claim 1": pretrained @ frac0.1 vs scratch / nnunet_default @ frac1.
  2. "joint PET/CT pretraining beats separated-modality pretraining in 5-shot linear probing":
       nnUNetv2_petct_label_efficiency -d DATASET --pretrained foundation_final.pth \
           --pretrained-ct CT_ONLY/foundation_final.pth --pretrained-pet PET_ONLY/foundation_final.pth \
           --methods probe late_fusion_probe --fractions --shots 5 --seeds 5
     -> the paired comparison "claim 2": probe vs late_fusion_probe @ shots5.

what it does
  1. splits: a fixed, patient-grouped validation set and, from the rest of the training pool, one
     patient-grouped training subset per --fractions value (nested, one seed) and per --shots value
     (K lesion-positive cases of K patients), for each of --seeds N replicates: replicate k uses seed
     SEED + 1000 k for its subset draws (N different draws; 100 % is the whole pool each time) and as
     the training seed of its runs (NNUNETV2_PETCT_SEED, recorded in the fold's training_seed.json).
     Each (subset, replicate) becomes one fold of splits_final.json in the preprocessed dataset folder
     (existing folds kept, ours appended, identical folds reused). The held-out test set is never trained
     or validated on, and it is the same for every method, fraction and seed.
  2. runs, one per subset, replicate and method, with the stock nnUNetv2_train (sequentially; --dry-run
     prints the commands and writes OUT/commands.sh for a cluster, then run again with --skip-training).
     Default grid (each at its own tuned recipe):
       pretrained        -> nnUNetTrainerPETCTFinetune   SGD peak 1e-3, 5 % warm-up, poly (-pretrained_weights)
       scratch           -> nnUNetTrainerPETCTScratch    SGD peak 1e-2 (nnU-Net's tuned rate), same warm-up/length
       nnunet_default    -> nnUNetTrainerPETCT           stock nnU-Net: lr 1e-2, poly, no warm-up
       probe             -> nnUNetTrainerPETCTLinearProbe  frozen joint model, final 1x1x1 conv trained
     On request: late_fusion_probe (nnUNetTrainerPETCTLateFusionProbe: frozen CT-only + PET-only models
     on their own channels, concatenated features, one 1x1x1 head; needs --pretrained-ct/--pretrained-pet),
     scratch_lr1e3 (ablation: random weights at the fine-tuning rate 1e-3), frozen_encoder,
     probe_random_init. --trainer-suffix _tiny / _demo picks those schedules.
     A run whose checkpoint_final.pth exists is not trained again (its recorded seed must match).
  3. nnUNetv2_predict on the test set with checkpoint_final.pth, autoPET metrics with the evaluation
     library, then in OUT: label_efficiency.csv (per test case x method x subset x seed),
     label_efficiency_runs.csv, label_efficiency_summary.csv (mean, sd, n over seeds),
     label_efficiency_paired.csv, label_efficiency.md and label_efficiency_dice.png (error bars = sd over
     seeds).

statistics
  Cells: mean ± sd over seeds of each run's mean over the test cases, n = seeds. Paired comparisons
  (pretrained vs each from-scratch baseline; probe vs late_fusion_probe / probe_random_init; pretrained at
  each fraction < 1 vs the from-scratch baselines at fraction 1): the paired unit is a test case (each
  method's value averaged over its seeds), cases where both are defined (n reported); mean difference with a
  seeded percentile bootstrap 95 % CI over test cases (--bootstrap-resamples) and a two-sided Wilcoxon
  signed-rank p-value.

leakage guard
  The foundation checkpoints list the cases they were pretrained on; if any test case is among them the
  runner stops (naming the cases) unless --allow-test-overlap (then recorded in the design and the table).
  OUT/label_efficiency_design.json and the table record which test cases were verified absent. Build the
  pretraining set with nnUNetv2_petct_pretraining_dataset --protect-test-cases to catch this early.

test set: --test-images DIR --test-labels DIR (external, e.g. imagesTs/labelsTs), or --test-cases FILE
(case ids of this dataset: text file one per line, JSON list, or CSV with case_id), else a seeded
patient-grouped --test-fraction of the dataset.

exit codes: 0 done, 1 a run failed (log file named), 2 bad input.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnUNetv2_petct_label_efficiency",
        description="Label-efficiency grid on an nnU-Net dataset: fine-tuning from a foundation checkpoint vs "
        "from-scratch baselines vs linear probes, at several label fractions and seeds; tables with mean ± sd, "
        "paired comparisons (bootstrap CI, Wilcoxon p) and a plot.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-d", "--dataset", required=True, help="target dataset id or name (planned and preprocessed)")
    p.add_argument("--pretrained", help="foundation checkpoint (foundation_final.pth) for pretrained/probe runs")
    p.add_argument("--fractions", type=float, nargs="*", default=[0.1, 0.3, 1.0],
                   help="label fractions of the training pool (default: 0.1 0.3 1.0)")
    p.add_argument("--shots", type=int, nargs="*", default=[], help="K-shot subsets, e.g. --shots 5")
    p.add_argument("--pretrained-ct", metavar="CKPT", help="CT-only foundation checkpoint (late_fusion_probe)")
    p.add_argument("--pretrained-pet", metavar="CKPT", help="PET-only foundation checkpoint (late_fusion_probe)")
    p.add_argument("--methods", nargs="+", default=None,
                   help="default: pretrained scratch nnunet_default probe; also late_fusion_probe scratch_lr1e3 "
                   "frozen_encoder probe_random_init")
    p.add_argument("--seeds", type=int, default=1,
                   help="number of replicates: different subset draws and training seeds (default 1)")
    p.add_argument("--bootstrap-resamples", type=int, default=10_000,
                   help="bootstrap resamples for the paired CIs (default 10000)")
    p.add_argument("--allow-test-overlap", action="store_true",
                   help="run even if test cases were in the pretraining set (recorded loudly)")
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
        DEFAULT_METHODS,
        TABLE_MD,
        LabelEfficiencyError,
        RunFailedError,
        label_efficiency,
    )

    out = a.output or f"label_efficiency_{a.dataset}"
    try:
        test_cases = read_case_list(a.test_cases) if a.test_cases else None
        rows = label_efficiency(
            a.dataset, out, fractions=a.fractions, shots=a.shots, pretrained=a.pretrained,
            methods=a.methods or DEFAULT_METHODS, seeds=a.seeds, pretrained_ct=a.pretrained_ct,
            pretrained_pet=a.pretrained_pet, allow_test_overlap=a.allow_test_overlap,
            n_resamples=a.bootstrap_resamples,
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
