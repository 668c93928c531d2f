"""``nnUNetv2_petct_pretraining_dataset``: merge converted datasets into one unlabeled pretraining set.

Exit codes: 0 done, 1 some case failed (the others are written), 2 bad input (including an output
folder this tool did not write) or an output folder that cannot be written.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

EPILOG = """\
Each case becomes <cohort>_<case id> (all AutoPET layouts share the prefix 'autopet', so a study
converted twice is kept once). Labels are body masks (CT > -500 HU) so nnU-Net planning works;
images are hard-linked from the source datasets when possible. Cases that were not cropped at
conversion (labeled cohorts) are cropped to the body unless --no-crop.
A table of cases per cohort is printed and written to summary.json / summary.md.

leakage guard: --protect-test-cases FILE (a case list, or the label-efficiency runner's
label_efficiency_design.json) names the test cases of your label-efficiency study. If any of them would
enter the pretraining set (same case id, source case id or AutoPET study: patient hash + study date),
nothing is written and the cases are named; leave them out with --exclude (the same file works), or
pass --allow-test-overlap to pretrain on them anyway (a loud warning; recorded in summary.json).
The paper pretrained on all AutoPET studies, test studies included; this protocol does not.

examples:
  nnUNetv2_petct_pretraining_dataset -d 300 --from 221 222 223 224 --exclude qc_rejects.txt
  nnUNetv2_petct_pretraining_dataset -d 300 --from 221 222 223 224 --exclude test_cases.txt \
      --protect-test-cases test_cases.txt
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="nnUNetv2_petct_pretraining_dataset",
        description="Build one unlabeled nnU-Net dataset for pretraining from datasets converted with "
        "nnUNetv2_petct_convert.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-d", "--dataset-id", type=int, required=True, help="id of the new dataset (1..999)")
    p.add_argument("--from", dest="sources", nargs="+", required=True, metavar="ID",
                   help="converted datasets (ids or DatasetXXX_Name folder names)")
    p.add_argument("--name", default="PETCTPretraining", help="dataset name (default PETCTPretraining)")
    p.add_argument("--exclude", type=Path, default=None,
                   help="file of case ids to leave out (source or prefixed ids, or SPADE patient/scan)")
    p.add_argument("--protect-test-cases", type=Path, default=None, metavar="FILE",
                   help="test cases that must not enter the set: case list or label_efficiency_design.json")
    p.add_argument("--allow-test-overlap", action="store_true",
                   help="write protected test cases anyway (loud warning, recorded in summary.json)")
    p.add_argument("--no-crop", dest="crop", action="store_false", help="do not crop uncropped cases to the body")
    p.add_argument("-o", "--raw-dir", default=None, help="nnU-Net raw root (default: $nnUNet_raw)")
    p.add_argument("-np", "--num-processes", type=int, default=1)
    p.add_argument("--overwrite", action="store_true", help="redo cases that are already there")
    p.add_argument("-q", "--quiet", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from nnunetv2_petct.conversion.core import BadInputError
    from nnunetv2_petct.conversion.pretraining import build_pretraining_dataset
    from nnunetv2_petct.io import WriteError

    try:
        summary = build_pretraining_dataset(
            a.dataset_id, a.sources, a.raw_dir, name=a.name, exclude=a.exclude, crop=a.crop,
            num_processes=a.num_processes, overwrite=a.overwrite, quiet=a.quiet,
            protect_test_cases=a.protect_test_cases, allow_test_overlap=a.allow_test_overlap,
        )
    except (BadInputError, WriteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{summary.dataset_dir}: numTraining = {summary.num_training} ({summary.seconds:.1f} s)")
    print(summary.table())
    prot = summary.protected_test_cases
    if prot is not None:
        print(f"protected test cases ({prot['source']}): {prot['n_protected']}; "
              + ("none in the pretraining set" if prot["verified_excluded"] else
                 f"{len(prot['overlapping_test_cases'])} IN the pretraining set (--allow-test-overlap)"))
    for f in summary.failed:
        print(f"  FAILED {f['case_id']}: {f['reason']}")
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
