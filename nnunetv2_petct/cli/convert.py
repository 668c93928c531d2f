"""``nnUNetv2_petct_convert``: convert a public PET/CT cohort into an nnU-Net raw dataset.

Exit codes: 0 all cases converted (or already done), 1 some case failed (the others are written),
2 bad input (unknown cohort, missing folder, layout mismatch, no nnUNet_raw, a dataset folder this tool
did not write) or an output folder that cannot be written (read-only, not a folder, disk full).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

EPILOG = """\
cohorts and their layouts:
  autopet         <root>/PETCT_<hash>/<date>-NA-.../{CT,CTres,PET,SUV,SEG}.nii.gz (TCIA NIfTI release)
  autopet-nnunet  <root>/imagesTr/fdg_<hash>_<date>_000{0,1}.nii.gz + labelsTr/ (autoPET III/IV release);
                  --include-psma also takes the psma_* cases
  autopet-dicom   TCIA DICOM release (PET, CT, DICOM-SEG per study)
  deep-psma       <root>/train_XXXX/FDG/{CT,PET,TTB}.nii.gz (PSMA/ folders ignored)
  spade           <root>/<patient>/<scan>/{pet.npy,ct.npy}; --spacing (default 3 3.5 3.5 mm, z y x),
                  --pet-units, --exclude (the 11 known-bad scans are always excluded)
  vimed-pet       per-study folders of arrays (.npy/.npz) or volumes (.nii.gz/.nrrd/.mha);
                  --pet-glob, --ct-glob, --spacing (arrays), --ct-offset/--ct-slope (HU = raw*slope+offset)
  dicom           any folder of DICOM PET/CT studies (SUVbw computed from the headers)

DICOM series selection (dicom, autopet-dicom): per study, from the headers. A series qualifies when it
is a single-frame CT/PET Image Storage volume of >= 3 axial slices on one regular grid; ORIGINAL/DERIVED
and PRIMARY/SECONDARY do not matter. Set aside (with the reason, in the manifest): localizers/scouts,
projections/MIPs, single images, non-axial reformats, irregular stacks (gaps, mixed orientation or
spacing), PET without attenuation correction (CorrectedImage lacks ATTN). Several qualify: PET = largest
axial extent, then earliest acquisition, then finest voxels, then lowest UID; CT = same frame of
reference as the PET, then largest axial overlap with it, then finest slice spacing, then most slices,
then lowest UID. --ct-series/--pet-series pick by SeriesInstanceUID or SeriesDescription (wildcards).
Other objects (RTDOSE, RTPLAN, RTSTRUCT, SR, SEG, KO, PR, ...) are ignored and counted in the summary.
Partial CT coverage: a case whose CT covers less than --min-overlap (0.5) of the PET's axial extent
fails with the measured coverage and the --min-overlap value that would pass; with a lower threshold
the PET outside the CT gets -1024 HU (air) in the CT channel (a warning in the manifest says how much).

output: $nnUNet_raw/DatasetXXX_<Name>/ with imagesTr (_0000 = CT in HU, _0001 = PET), labelsTr
(lesion masks, or body masks for unlabeled cohorts), dataset.json, manifest.jsonl (one record per
case: units, spacing, shape and statistics of the files as written, the source's under source_values,
assumptions; DICOM: the series chosen and why the others were not), conversion_failures.json.
Labeled cohorts keep the PET grid (no crop); unlabeled ones are cropped to the body (--no-crop).
The folder carries a marker (.nnunetv2_petct.json: tool version, cohorts, options); an existing folder
without it (not written by this tool) is refused. Re-running reuses a finished case only when its
source files (path, size, modification time, recorded in the manifest) and the options are unchanged;
other cases are converted again. --overwrite reconverts everything and removes cases and files that
are not in the source. A re-run with nothing to do writes nothing.
Non-finite voxels (NaN/inf; read from the NIfTI data itself, as ITK would turn them into 0) fail the
case unless --nonfinite zero; PET beyond +-1e4 SUV (+-1e10 in other units) and CT beyond +-1e5 HU are
refused as implausible.

exit codes: 0 done, 1 some case failed (the others are written), 2 bad input or unwritable output.

examples:
  nnUNetv2_petct_convert autopet /data/FDG-PET-CT-Lesions -d 221 -np 8
  nnUNetv2_petct_convert spade /data/SPADE -d 223 --exclude bad_scans.txt
  nnUNetv2_petct_convert vimed-pet /data/vimed -d 224 --spacing 3 2.7 2.7 --ct-offset -1024
  nnUNetv2_petct_convert dicom /data/hn_studies -d 225 --min-overlap 0.3 --pet-series "PET AC*"
"""


def build_parser() -> argparse.ArgumentParser:
    from nnunetv2_petct.conversion.registry import COHORTS

    p = argparse.ArgumentParser(
        prog="nnUNetv2_petct_convert",
        description="Convert a PET/CT cohort into nnU-Net v2 raw format (CT resampled onto the PET grid).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("cohort", choices=list(COHORTS), help="cohort layout of SOURCE")
    p.add_argument("source", type=Path, help="the cohort's folder as downloaded (read only)")
    p.add_argument("-d", "--dataset-id", type=int, required=True, help="nnU-Net dataset id (1..999)")
    p.add_argument("--name", default=None, help="dataset name (default per cohort, e.g. AutoPET)")
    p.add_argument("-o", "--raw-dir", default=None, help="output root (default: $nnUNet_raw)")
    p.add_argument("-np", "--num-processes", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--overwrite", action="store_true", help="redo cases that are already converted")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar; only failures and the summary")
    crop = p.add_mutually_exclusive_group()
    crop.add_argument("--crop", dest="crop", action="store_true", default=None,
                      help="crop to the body (CT > -500 HU) even for a labeled cohort")
    crop.add_argument("--no-crop", dest="crop", action="store_false",
                      help="keep the full PET grid even for an unlabeled cohort")
    p.add_argument("--normalization", choices=("nnunet", "pet-global", "zscore-both"), default=None,
                   help="how nnU-Net will normalize the channels (set through their names in dataset.json): "
                        "nnunet (default): CT clip + dataset-wide z-score, PET per-image z-score; pet-global: "
                        "PET like CT (dataset-wide, keeps the SUV scale); zscore-both: both channels z-scored "
                        "per image, no CT clipping (the paper's authors; needed for their released weights). "
                        "Pretraining and target datasets must use the same choice")
    p.add_argument("--pet-normalization", choices=("zscore", "global"), default=None,
                   help="older spelling: zscore = --normalization nnunet, global = --normalization pet-global")
    p.add_argument("--nonfinite", choices=("error", "zero"), default="error",
                   help="NaN/inf voxels in a source image: error = the case fails (default); zero = set them "
                        "to 0 (counts recorded in the manifest, warned about)")
    p.add_argument("--min-overlap", type=float, default=0.5,
                   help="fail a case whose CT covers less than this fraction of the PET's axial extent (0.5); "
                        "with less, the PET outside the CT gets -1024 HU in the CT channel")
    g = p.add_argument_group("cohort-specific options")
    g.add_argument("--include-psma", action="store_true", default=None, help="autopet-nnunet: also psma_* cases")
    g.add_argument("--allow-non-fdg", action="store_true", default=None,
                   help="dicom/autopet-dicom: accept non-FDG tracers")
    g.add_argument("--ct-series", default=None, metavar="UID_OR_DESCRIPTION",
                   help="dicom/autopet-dicom: use the CT series with this SeriesInstanceUID or SeriesDescription "
                        "(case-insensitive, * and ? wildcards) in every study")
    g.add_argument("--pet-series", default=None, metavar="UID_OR_DESCRIPTION",
                   help="dicom/autopet-dicom: use the PET series with this SeriesInstanceUID or SeriesDescription "
                        "(case-insensitive, * and ? wildcards) in every study")
    g.add_argument("--missing-seg-empty", action="store_true", default=None,
                   help="autopet-dicom: a study without DICOM-SEG gets an empty label instead of failing")
    g.add_argument("--spacing", type=float, nargs=3, metavar=("Z", "Y", "X"), default=None,
                   help="spade/vimed-pet: voxel spacing in mm of header-less arrays")
    g.add_argument("--array-axes", choices=("zyx", "xyz", "yxz"), default=None,
                   help="spade/vimed-pet: axis order of the stored arrays (default zyx)")
    g.add_argument("--pet-units", default=None, help="spade/vimed-pet: PET units to record (default unknown)")
    g.add_argument("--exclude", type=Path, default=None,
                   help="spade/vimed-pet: file of scans to leave out (patient/scan or case id per line)")
    g.add_argument("--pet-glob", default=None, help="vimed-pet: PET file name pattern (default *pet*)")
    g.add_argument("--ct-glob", default=None, help="vimed-pet: CT file name pattern (default *ct*)")
    g.add_argument("--ct-offset", type=float, default=None, help="vimed-pet: HU = raw * slope + OFFSET")
    g.add_argument("--ct-slope", type=float, default=None, help="vimed-pet: HU = raw * SLOPE + offset")
    return p


COHORT_OPTION_DESTS = ("include_psma", "allow_non_fdg", "missing_seg_empty", "spacing", "array_axes", "pet_units", "exclude",
                       "pet_glob", "ct_glob", "ct_offset", "ct_slope", "ct_series", "pet_series")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from nnunetv2_petct.conversion.core import BadInputError
    from nnunetv2_petct.conversion.registry import convert_cohort
    from nnunetv2_petct.io import WriteError

    if a.num_processes < 1:
        parser.error("-np must be >= 1")
    old = {"zscore": "nnunet", "global": "pet-global"}.get(a.pet_normalization)
    if old and a.normalization and old != a.normalization:
        parser.error(f"--pet-normalization {a.pet_normalization} contradicts --normalization {a.normalization}")
    normalization = a.normalization or old or "nnunet"
    options = {k: getattr(a, k) for k in COHORT_OPTION_DESTS if getattr(a, k) is not None}
    try:
        report = convert_cohort(
            a.cohort, a.source, a.dataset_id, a.raw_dir, name=a.name, num_processes=a.num_processes,
            overwrite=a.overwrite, quiet=a.quiet, crop=a.crop, pet_normalization=normalization,
            min_overlap_fraction=a.min_overlap, nonfinite=a.nonfinite, **options,
        )
    except (BadInputError, WriteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: every case written so far is complete (each is written whole or not at all); the "
              "same command converts the rest", file=sys.stderr)
        return 130
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
