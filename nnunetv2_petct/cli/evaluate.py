"""``nnUNetv2_petct_evaluate``: autoPET metrics, lesion detection and SUV quantification of a folder.

Thin argparse layer over :func:`nnunetv2_petct.evaluation.evaluate_folders`.
"""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
outputs (in -o): per_case.csv (Dice, FPV, FNV in ml, lesion counts, TMTV/TLG/SUV totals for ground
truth and prediction), per_lesion.csv (one row per ground-truth and per predicted lesion),
summary.json (means leaving NaN out, as the autoPET challenge does, with the number of cases used)
and summary.md.

metrics: inputs are binarized (label > 0); lesions are 18-connected components; Dice and FNV are
NaN for an empty ground truth, FPV is 0 for an empty prediction; volumes use the reference spacing.
SUVpeak = mean SUV in a 1 ml sphere around the hottest lesion voxel, not restricted to the lesion.

exit codes: 0 ok, 2 bad input (missing folder, case sets or geometries that differ, empty or truncated
files; each named) or an output folder that cannot be written (a file, read-only, disk full).
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnUNetv2_petct_evaluate",
        description="Evaluate lesion segmentations with the autoPET III/IV metrics (Dice, false-positive "
        "and false-negative volume), lesion-wise detection and, given the PET in SUV, per-lesion "
        "SUVmax/SUVmean/SUVpeak/MTV/TLG.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-ref", required=True, metavar="LABELS_DIR",
                   help="reference labels, <case>.nii.gz (e.g. nnU-Net labelsTs)")
    p.add_argument("-pred", required=True, metavar="PRED_DIR",
                   help="predictions, <case>.nii.gz on the reference grids (other files are ignored)")
    p.add_argument("-pet", default=None, metavar="IMAGES_DIR",
                   help="optional PET in SUV: nnU-Net raw images folder with <case>_0001.nii.gz "
                   "(or <case>.nii.gz); enables SUV quantification")
    p.add_argument("-o", required=True, metavar="OUT_DIR", help="output folder (created if needed)")
    p.add_argument("-np", type=int, default=1, metavar="N", help="number of worker processes (default 1)")
    p.add_argument("-q", action="store_true", help="quiet: no progress bar and no summary printout")
    p.add_argument("--overlap", choices=("any", "iou0.1", "iou0.5"), default="any",
                   help="lesion detection rule: any overlap (default) or component IoU >= 0.1 / 0.5 "
                   "with one-to-one matching")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from nnunetv2_petct.evaluation import EvaluationInputError, evaluate_folders
    from nnunetv2_petct.io import WriteError

    if args.np < 1:
        print(f"error: -np must be >= 1, got {args.np}", file=sys.stderr)
        return 2
    try:
        summary = evaluate_folders(args.ref, args.pred, args.o, pet_dir=args.pet, overlap=args.overlap,
                                   num_processes=args.np, quiet=args.q)
    except (EvaluationInputError, WriteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.q:
        m, u, d = summary["mean"], summary["n_used"], summary["detection"]

        def f(v):
            return "n/a" if v is None else f"{v:.4g}"

        print(f"{summary['n_cases']} cases -> {args.o}")
        print(f"Dice {f(m['dice'])} (n={u['dice']})  FPV {f(m['fpv_ml'])} ml (n={u['fpv_ml']})  "
              f"FNV {f(m['fnv_ml'])} ml (n={u['fnv_ml']})")
        print(f"lesions [{summary['overlap']}]: sensitivity {f(d['lesion_sensitivity_pooled'])} "
              f"({d['n_gt_detected']}/{d['n_gt_lesions']}), FP per case {f(d['fp_per_case'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
