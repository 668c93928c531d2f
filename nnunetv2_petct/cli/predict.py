"""``nnUNetv2_petct_predict``: PET/CT studies (DICOM or NIfTI) -> lesion mask, DICOM-SEG and SUV lesion report.

Thin layer over :func:`nnunetv2_petct.clinical.pipeline.predict_studies` with
:class:`nnunetv2_petct.nnunet.predictor.NnUNetLesionPredictor` (nnU-Net's own predictor).
Exit codes: 0 every study done (or already there), 1 some study failed (the others are written),
2 bad input (missing folder, no study, model not found or unfit, an output folder that cannot be written,
the disk filling up during the run), 130 interrupted (Ctrl-C; nothing half-written).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

EPILOG = """\
input (-i, read only): any folder with DICOM PET/CT studies (found from the headers, any file names,
several studies allowed) and/or nnU-Net-style NIfTI pairs <case>_0000.nii.gz (CT, HU) +
<case>_0001.nii.gz (PET in SUVbw). DICOM PET is converted to SUVbw from the headers (QIBA).

output (-o), one folder per study, each written completely or not at all:
  <study>/lesions.nii.gz   lesion mask (uint8) on the PET grid
  <study>/lesions_seg.dcm  DICOM Segmentation referencing the PET series (DICOM input only); written
                           also when nothing is found (all-empty frames, "no lesion found")
  <study>/lesions.csv      per lesion: volume (ml), SUVmax, SUVpeak (1 ml sphere), SUVmean, TLG, centroid
                           and hottest voxel in DICOM patient coordinates (mm), sorted by SUVmax
  <study>/report.json      all of it plus TMTV, total TLG, the SUV derivation, CT coverage, model, versions
  <study>/report.html      self-contained report (MIPs with lesion outlines, table), research use only
  summary.csv              one line per study of the run, with the reason of each failure
<study> is <PatientID>_<StudyDate> (DICOM), the case id (NIfTI), or study_<hash> with --anonymize.

partial CT coverage: where the CT does not reach, the network sees air (-1024 HU) as CT; the study is
predicted and the report says which axial range had no CT. A CT that misses the PET entirely fails.

interactive (a click-guided model, nnUNetTrainerPETCTInteractive*): --clicks gives each study its clicks
(clicks.json for a single study, or a folder of <study>.json); a click outside the PET image, a negative
or non-integer index or a malformed file is named and nothing is written for that study. --autopet-iv
runs the autoPET IV container layout (/input -> /output/images/tumor-lesion-segmentation/<uuid>.mha).

exit codes: 0 every study done (or already there), 1 some study failed (its reason is printed and in
summary.csv; the others are written), 2 the run cannot start (missing folder, no study, model not found,
unreadable or unsafe checkpoint, output folder not writable) or the disk filled up, 130 interrupted (Ctrl-C).
Warnings (e.g. a PatientWeight outside 20-250 kg) are printed as "WARNING <study>: ..." and kept in report.json.

example (a fine-tuned model):
  nnUNetv2_petct_predict -i /data/incoming_dicom -o /data/lesions -d 221 -c 3d_fullres -f 0 1 2 3 4 \\
      -tr nnUNetTrainerPETCTFinetune
  nnUNetv2_petct_predict -i study_dir -o out -m MODEL_FOLDER -f 0 --clicks clicks.json
  nnUNetv2_petct_predict --autopet-iv -i /input -o /output -m MODEL_FOLDER -f 0 -device cuda
  nnUNetv2_petct_predict -i study_dir -o out -m $nnUNet_results/Dataset221_AutoPET/nnUNetTrainerPETCTFinetune__nnUNetPlans__3d_fullres -f 0
"""


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        return default


def build_parser() -> argparse.ArgumentParser:
    from nnunetv2_petct.evaluation.lesion_report import DEFAULT_MIN_VOLUME_ML

    p = argparse.ArgumentParser(
        prog="nnUNetv2_petct_predict",
        description="Segment FDG-avid lesions in PET/CT studies with a trained nnU-Net model (nnU-Net's own "
        "predictor) and write, per study, the lesion mask, a DICOM-SEG, an SUV lesion table and an HTML report.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-i", required=True, type=Path, metavar="INPUT", help="folder with DICOM studies and/or NIfTI pairs")
    p.add_argument("-o", required=True, type=Path, metavar="OUTPUT", help="output folder (created; not inside INPUT)")
    m = p.add_argument_group("model (as nnUNetv2_predict: -d -c [-tr -p -f -chk], or -m MODEL_FOLDER)")
    m.add_argument("-d", default=None, metavar="DATASET", help="dataset name or id the model was trained on")
    m.add_argument("-c", default=None, metavar="CONFIGURATION", help="nnU-Net configuration, e.g. 3d_fullres")
    m.add_argument("-tr", default="nnUNetTrainer", metavar="TRAINER", help="trainer class (default nnUNetTrainer)")
    m.add_argument("-p", default="nnUNetPlans", metavar="PLANS", help="plans identifier (default nnUNetPlans)")
    m.add_argument("-m", default=None, type=Path, metavar="MODEL_FOLDER",
                   help="the trained model's folder (instead of -d/-c/-tr/-p)")
    m.add_argument("-f", nargs="+", default=["0", "1", "2", "3", "4"], metavar="FOLD",
                   help="folds to ensemble (default 0 1 2 3 4; 'all' allowed)")
    m.add_argument("-chk", default="checkpoint_final.pth", metavar="CHECKPOINT",
                   help="checkpoint file name (default checkpoint_final.pth)")
    r = p.add_argument_group("running (as nnUNetv2_predict)")
    r.add_argument("-device", default="cuda", choices=("cuda", "cpu", "mps"), help="default cuda")
    r.add_argument("--disable_tta", action="store_true", help="no mirroring at test time (faster)")
    r.add_argument("-step_size", type=float, default=0.5, help="sliding-window step (default 0.5)")
    r.add_argument("-npp", type=int, default=_env_int("nnUNet_npp", 3),
                   help="preprocessing processes (default 3; -npp 0 -nps 0 = no worker processes)")
    r.add_argument("-nps", type=int, default=_env_int("nnUNet_nps", 3), help="export processes (default 3)")
    r.add_argument("-np", type=int, default=None, metavar="N", help="shorthand for -npp N -nps N")
    o = p.add_argument_group("report")
    o.add_argument("--min-volume-ml", type=float, default=DEFAULT_MIN_VOLUME_ML,
                   help=f"drop lesions (18-connected components) smaller than this from every output "
                        f"(default {DEFAULT_MIN_VOLUME_ML} ml; 0 keeps all)")
    o.add_argument("--anonymize", action="store_true",
                   help="leave patient/study identifiers out of the reports and name folders study_<hash> "
                        "(the DICOM-SEG keeps the PET's patient/study attributes so it attaches to the study)")
    o.add_argument("--overwrite", action="store_true", help="redo studies whose result folder exists")
    o.add_argument("--allow-non-fdg", action="store_true", help="accept PET tracers other than FDG")
    o.add_argument("--ct-series", default=None, metavar="UID_OR_DESCRIPTION",
                   help="DICOM input: use this CT series (SeriesInstanceUID, or SeriesDescription with * and ? wildcards) instead of the ranking rule of nnUNetv2_petct_convert dicom --help")
    o.add_argument("--pet-series", default=None, metavar="UID_OR_DESCRIPTION",
                   help="DICOM input: use this PET series (as --ct-series)")
    c = p.add_argument_group("interactive (a click-guided model, nnUNetTrainerPETCTInteractive*)")
    c.add_argument("--clicks", default=None, type=Path, metavar="FILE_OR_FOLDER",
                   help="clicks for the model: one JSON file for a run with one study, or a folder with "
                        "<study>.json per study (every study needs one); autoPET IV format "
                        '{"tumor": [[x, y, z], ...], "background": [...]}, voxel indices of the PET image. '
                        "Without --clicks an interactive model predicts with no click")
    c.add_argument("--autopet-iv", action="store_true",
                   help="the autoPET IV container layout instead: -i holds images/ct/<uuid>.mha, "
                        "images/pet/<uuid>.mha and lesion-clicks.json; writes "
                        "-o/images/tumor-lesion-segmentation/<uuid>.mha (no report)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress; only failures and the summary")
    return p


def _clicks_by_study(a) -> tuple[dict, dict]:
    """Read ``--clicks`` for the studies of ``-i``: ``({study: Clicks}, {study: source})``."""
    from nnunetv2_petct.clinical.pipeline import BadRunInput
    from nnunetv2_petct.clinical.studies import find_study_inputs
    from nnunetv2_petct.interactive.clicks import read_click_folder, read_clicks

    names = [s.name for s in find_study_inputs(a.i, anonymize=a.anonymize, ct_series=a.ct_series,
                                               pet_series=a.pet_series)]
    if a.clicks.is_dir():
        clicks = read_click_folder(a.clicks, names)
        return clicks, {n: str(a.clicks / f"{n}.json") for n in clicks}
    if not a.clicks.is_file():
        raise BadRunInput(f"--clicks {a.clicks}: no such file or folder")
    if len(names) != 1:
        raise BadRunInput(f"--clicks {a.clicks} is one click file, but {len(names)} studies were found under "
                          f"{a.i} ({', '.join(names[:5])}{' ...' if len(names) > 5 else ''}): give a folder "
                          "with <study>.json per study")
    return {names[0]: read_clicks(a.clicks)}, {names[0]: str(a.clicks)}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if a.np is not None:
        a.npp = a.nps = a.np
    if a.npp < 0 or a.nps < 0:
        print("error: -npp/-nps/-np must be >= 0", file=sys.stderr)
        return 2
    if a.m is None and (a.d is None or a.c is None):
        print("error: choose the model with -d DATASET -c CONFIGURATION (and -tr/-p/-f) or with -m MODEL_FOLDER",
              file=sys.stderr)
        return 2
    from tqdm import tqdm

    from nnunetv2_petct.clinical.pipeline import BadRunInput
    from nnunetv2_petct.interactive.clicks import ClickFileError
    from nnunetv2_petct.io import WriteError
    from nnunetv2_petct.nnunet.autopet_iv import ContainerLayoutError
    from nnunetv2_petct.nnunet.predictor import ModelSelectionError

    def progress(res) -> None:
        if res.status == "failed":
            tqdm.write(f"FAILED {res.name}: {res.reason}", file=sys.stderr)
            return
        for w in res.warnings:
            tqdm.write(f"WARNING {res.name}: {w}", file=sys.stderr)
        if not a.quiet:
            row = res.row
            what = "already there" if res.status == "exists" else (
                f"{row.get('lesion_count')} lesion(s), TMTV {row.get('tmtv_ml', 0) or 0:.2f} ml")
            tqdm.write(f"{res.status:6s} {res.name}: {what} -> {res.folder}", file=sys.stderr)

    if a.autopet_iv and a.clicks is not None:
        print("error: --autopet-iv reads the clicks from -i/lesion-clicks.json; drop --clicks", file=sys.stderr)
        return 2
    created = not a.o.exists()
    try:
        return _run(a, progress)
    except (BadRunInput, ModelSelectionError, ClickFileError, ContainerLayoutError, WriteError) as e:
        # WriteError: the output folder cannot be written (probed before anything else) or the disk filled up
        # during the run (the studies written so far are complete)
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: nothing half-written in {a.o} (the studies finished so far are complete; the same "
              "command does the rest)", file=sys.stderr)
        return 130
    finally:
        if created:
            _remove_if_empty(a.o)


def _remove_if_empty(folder: Path) -> None:
    """Remove the output folder this run created when nothing was written into it (a refused run leaves none)."""
    try:
        folder.rmdir()
    except OSError:
        pass


def _run(a, progress) -> int:
    """The run behind :func:`main`: folders checked (the output probed for writing), model found and loaded,
    then every study."""
    from nnunetv2_petct.clinical.pipeline import check_run_folders, predict_studies
    from nnunetv2_petct.io import probe_writable_dir
    from nnunetv2_petct.nnunet.predictor import NnUNetLesionPredictor, resolve_model_folder

    check_run_folders(a.i, a.o)
    probe_writable_dir(a.o, "output folder")
    folder = resolve_model_folder(a.d, a.c, a.tr, a.p, a.m)
    if a.autopet_iv:
        return _autopet_iv(a, folder)
    if a.clicks is not None:
        from nnunetv2_petct.nnunet.interactive_predictor import InteractiveLesionPredictor

        clicks, sources = _clicks_by_study(a)
        predictor = InteractiveLesionPredictor(folder, a.f, a.chk, a.device, a.disable_tta, a.npp, a.nps,
                                               a.step_size, quiet=a.quiet, clicks_by_case=clicks,
                                               click_sources=sources)
    else:
        predictor = NnUNetLesionPredictor(folder, a.f, a.chk, a.device, a.disable_tta, a.npp, a.nps,
                                          a.step_size, quiet=a.quiet)
    predictor.load()
    report = predict_studies(a.i, a.o, predictor, min_volume_ml=a.min_volume_ml, anonymize=a.anonymize,
                             overwrite=a.overwrite, allow_non_fdg=a.allow_non_fdg, quiet=a.quiet,
                             ct_series=a.ct_series, pet_series=a.pet_series, on_study=progress)
    print(report.summary())
    return 0 if report.ok else 1


def _autopet_iv(a, folder) -> int:
    """``--autopet-iv``: one container study with its clicks -> the challenge's output layout."""
    from nnunetv2_petct.nnunet.autopet_iv import predict_autopet_iv
    from nnunetv2_petct.nnunet.interactive_predictor import InteractiveLesionPredictor

    predictor = InteractiveLesionPredictor(folder, a.f, a.chk, a.device, a.disable_tta, 0, 0, a.step_size,
                                           quiet=a.quiet)
    out = predict_autopet_iv(a.i, a.o, predictor)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
