"""``nnUNetv2_petct_evaluate_interactive``: the autoPET IV interactive protocol (0..10 clicks) on a test set.

Thin layer over :func:`nnunetv2_petct.nnunet.interactive_eval.evaluate_interactive_model` (a click-guided
model predicts after each click) and :func:`~nnunetv2_petct.nnunet.interactive_eval.evaluate_interactive_predictions`
(``--predictions``: score ``<case>_pred0..10`` made elsewhere).
Exit codes: 0 done, 2 bad input (folders, cases, click files, model; each named).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

EPILOG = """\
the protocol (autoPET IV, Task 1): prediction k (k = 0..N, N = --n-clicks, default 10) sees the first k
tumor and the first k background clicks. Clicks come from --clicks DIR (<case>.json, autoPET IV format,
fixed lists: the challenge's pre-simulated variant), or are simulated from the ground truth:
  --simulate error-driven  (default) after prediction k-1: tumor click at the interior point (maximum of
                           the distance transform, mm) of the largest missed lesion part (false-negative
                           component, 18-connectivity), background click at the interior point of the
                           largest false-positive component; a kind without an error gets no click
  --simulate presimulated  a fixed list made up front from the ground truth (tumor clicks at lesion
                           interiors, largest lesion first; background clicks half on high-uptake
                           non-lesion voxels), seeded with --seed

numbers per case (autoPET definitions: Dice, false-positive volume FPV and false-negative volume FNV in
ml with 18-connected components; Dice is NaN for a case without lesions and left out of the mean):
  dice_auc, fpv_auc, fnv_auc    area under the curve over the click index (trapezoid rule)
  dice_final, fpv_final, fnv_final   after the last click

outputs (-o): predictions/<case>_pred<k>.nii.gz, clicks/<case>.json (the clicks used), interactive.csv
(per case and a mean row with n), interactive_summary.json (means with n, click rule, seconds per
click), dice_vs_clicks.png.

examples:
  nnUNetv2_petct_evaluate_interactive -i imagesTs -l labelsTs -o eval_clicks \\
      -m $nnUNet_results/Dataset221_AutoPET/nnUNetTrainerPETCTInteractive__nnUNetPlans__3d_fullres -f 0
  nnUNetv2_petct_evaluate_interactive --predictions preds -l labelsTs -o eval_clicks
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnUNetv2_petct_evaluate_interactive",
        description="Evaluate a click-guided lesion model with the autoPET IV interactive protocol: predictions "
        "after 0, 1, ..., 10 tumor/background clicks, Dice/FPV/FNV per click, their area under the curve and "
        "final values, a CSV and a Dice-vs-clicks plot.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-i", type=Path, default=None, metavar="IMAGES_DIR",
                   help="test images, nnU-Net layout <case>_0000.nii.gz (CT) + <case>_0001.nii.gz (PET)")
    p.add_argument("-l", type=Path, required=True, metavar="LABELS_DIR", help="reference labels <case>.nii.gz")
    p.add_argument("-o", type=Path, required=True, metavar="OUT_DIR", help="output folder (created)")
    m = p.add_argument_group("model (as nnUNetv2_predict: -d -c [-tr -p -f -chk], or -m MODEL_FOLDER)")
    m.add_argument("-d", default=None, metavar="DATASET")
    m.add_argument("-c", default=None, metavar="CONFIGURATION")
    m.add_argument("-tr", default="nnUNetTrainerPETCTInteractive", metavar="TRAINER",
                   help="a click-guided trainer (default nnUNetTrainerPETCTInteractive)")
    m.add_argument("-p", default="nnUNetPlans", metavar="PLANS")
    m.add_argument("-m", default=None, type=Path, metavar="MODEL_FOLDER")
    m.add_argument("-f", nargs="+", default=["0", "1", "2", "3", "4"], metavar="FOLD")
    m.add_argument("-chk", default="checkpoint_final.pth", metavar="CHECKPOINT")
    m.add_argument("-device", default="cuda", choices=("cuda", "cpu", "mps"))
    m.add_argument("--disable_tta", action="store_true", help="no mirroring at test time (faster)")
    m.add_argument("-step_size", type=float, default=0.5)
    c = p.add_argument_group("clicks")
    c.add_argument("--clicks", type=Path, default=None, metavar="CLICKS_DIR",
                   help="<case>.json per case (fixed lists); default: simulated (--simulate)")
    c.add_argument("--simulate", choices=("error-driven", "presimulated"), default="error-driven")
    c.add_argument("--n-clicks", type=int, default=10, help="the last click count (default 10, as autoPET IV)")
    c.add_argument("--seed", type=int, default=0, help="seed of --simulate presimulated (default 0)")
    p.add_argument("--predictions", type=Path, default=None, metavar="PRED_DIR",
                   help="score <case>_pred0..N.nii.gz made elsewhere instead of running a model")
    p.add_argument("--no-predictions", action="store_true", help="do not keep the predictions/ files")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress; only the summary")
    return p


def _print_summary(result: dict) -> None:
    s = result["summary"]
    print(f"{result['n_cases']} case(s), clicks 0..{result['n_clicks']} ({result['click_rule'].split(':')[0]})")
    for key in ("dice_auc", "fpv_auc", "fnv_auc", "dice_final", "fpv_final", "fnv_final"):
        v = s[key]
        mean = v["mean"] if isinstance(v, dict) else v
        n = v.get("n") if isinstance(v, dict) else None
        print(f"  {key:11s} {mean if mean is None else f'{mean:.4f}'}" + (f"  (n={n})" if n is not None else ""))
    if result.get("seconds_per_click_mean") is not None:
        print(f"  seconds per click (in memory, no re-preprocessing): {result['seconds_per_click_mean']:.3f}")
    print(f"  -> {result['files']['csv']}")


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from nnunetv2_petct.interactive.clicks import ClickFileError
    from nnunetv2_petct.io import WriteError
    from nnunetv2_petct.nnunet.interactive_eval import (
        InteractiveEvaluationError,
        evaluate_interactive_model,
        evaluate_interactive_predictions,
    )
    from nnunetv2_petct.nnunet.predictor import ModelSelectionError, resolve_model_folder

    try:
        if a.predictions is not None:
            result = evaluate_interactive_predictions(a.predictions, a.l, a.o, n_clicks=a.n_clicks)
        else:
            if a.i is None:
                raise InteractiveEvaluationError("give the test images with -i (or score predictions with "
                                                 "--predictions)")
            if a.m is None and (a.d is None or a.c is None):
                raise ModelSelectionError("choose the model with -d DATASET -c CONFIGURATION [-tr -p -f] or -m "
                                          "MODEL_FOLDER")
            from nnunetv2_petct.nnunet.interactive_predictor import InteractiveLesionPredictor

            folder = resolve_model_folder(a.d, a.c, a.tr, a.p, a.m)
            predictor = InteractiveLesionPredictor(folder, a.f, a.chk, a.device, a.disable_tta, 0, 0, a.step_size,
                                                   quiet=True)

            def progress(case: str, row: dict) -> None:
                if not a.quiet:
                    print(f"{case}: dice after 0/{a.n_clicks} clicks {row['dice_0']:.3f} -> "
                          f"{row['dice_final']:.3f}, dice_auc {row['dice_auc']:.3f}", file=sys.stderr)

            result = evaluate_interactive_model(
                predictor, a.i, a.l, a.o, clicks_dir=a.clicks, simulate=a.simulate, n_clicks=a.n_clicks,
                seed=a.seed, write_predictions=not a.no_predictions, label=folder.name.split("__")[0],
                on_case=progress)
    except (InteractiveEvaluationError, ClickFileError, ModelSelectionError, WriteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _print_summary(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
