"""``nnUNetv2_petct_splits``: write patient-grouped ``splits_final.json`` files.

Subcommands:
  kfold   patient-grouped k-fold over all cases of a converted dataset;
  paper   the paper's AutoPET protocol (10/30/100 % pools, 200-scan test set);
  subset  seeded label-efficiency subsets (fraction or K shots, patient-grouped).

Exit codes: 0 written, 2 bad input (dataset not found, impossible split, nnUNet_preprocessed unset).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--dataset", required=True, help="converted dataset: id or DatasetXXX_Name")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="splits file to write (default: $nnUNet_preprocessed/DatasetXXX_Name/splits_final.json)")
    p.add_argument("--raw-dir", default=None, help="nnU-Net raw root holding the dataset (default: $nnUNet_raw)")
    p.add_argument("--preprocessed-dir", default=None, help="default: $nnUNet_preprocessed")
    p.add_argument("--seed", type=int, default=None, help="random seed")
    p.add_argument("-q", "--quiet", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnUNetv2_petct_splits",
        description="Patient-grouped nnU-Net splits (splits_final.json) from a converted dataset's manifest. "
        "nnU-Net uses an existing splits_final.json instead of making its own case-level folds.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    k = sub.add_parser("kfold", help="patient-grouped k-fold cross-validation over all cases")
    _common(k)
    k.add_argument("--folds", type=int, default=5)
    pp = sub.add_parser(
        "paper", help="the paper's AutoPET protocol",
        description="Folds 0-4: patient-grouped 5-fold CV inside the training pool of the chosen fraction; "
        "fold 5: the whole pool for training, the 200 test scans as validation (the paper's protocol; "
        "nnU-Net predicts and scores them at the end of training; use checkpoint_final). Also writes "
        "paper_split_<P>pct.json (pool, test, unmatched studies) next to the splits file. Never train "
        "with -f all on this dataset: 'all' includes the test scans.",
    )
    _common(pp)
    pp.add_argument("--fraction", type=int, choices=(10, 30, 100), required=True, help="label fraction in percent")
    pp.add_argument("--csv-dir", type=Path, default=None, help="folder of the split CSVs (default: the packaged ones)")
    pp.add_argument("--allow-missing", action="store_true",
                    help="go on when some studies of the split are not in the dataset")
    s = sub.add_parser(
        "subset", help="seeded patient-grouped training subsets",
        description="Fold i trains on a subset drawn with seed+i and validates on the other patients' cases.",
    )
    _common(s)
    grp = s.add_mutually_exclusive_group(required=True)
    grp.add_argument("--fraction", type=float, help="share of the cases in (0, 1], whole patients")
    grp.add_argument("--shots", type=int, help="K cases from K different patients")
    s.add_argument("--repeats", type=int, default=1, help="number of folds (different draws), default 1")
    s.add_argument("--lesion-positive-only", action="store_true", help="draw only cases with lesion voxels")
    s.add_argument("--holdout", type=Path, default=None,
                   help="file of case ids never drawn nor validated on (e.g. a test set)")
    s.add_argument("--holdout-paper-test", action="store_true",
                   help="AutoPET: hold out the paper's 200 test scans")
    s.add_argument("--max-val", type=int, default=None, help="cap the validation set (whole patients)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    from nnunetv2_petct.conversion.core import BadInputError, read_manifest
    from nnunetv2_petct.conversion.registry import find_dataset_dir, resolve_raw_dir
    from nnunetv2_petct.io import CaseListError, read_case_list, write_json_atomic
    from nnunetv2_petct.transfer import splits as S

    try:
        dataset_dir = find_dataset_dir(resolve_raw_dir(a.raw_dir), a.dataset)
        try:
            records = read_manifest(dataset_dir)
        except FileNotFoundError as e:
            raise BadInputError(str(e)) from None
        out = a.output or S.default_splits_path(dataset_dir.name, a.preprocessed_dir)
        c2p = S.case_to_patient_from_records(records)
        seed = a.seed if a.seed is not None else (S.DEFAULT_SEED if a.command != "subset" else 0)
        if a.command == "kfold":
            splits = S.patient_grouped_kfold(c2p, a.folds, seed)
            msg = f"{a.folds} patient-grouped folds over {len(c2p)} cases / {len(set(c2p.values()))} patients"
        elif a.command == "paper":
            ps = S.paper_protocol(records, a.fraction, a.csv_dir, seed=seed, allow_missing=a.allow_missing)
            splits = ps.splits
            info_path = Path(out).parent / f"paper_split_{a.fraction}pct.json"
            write_json_atomic(ps.to_dict(), info_path)
            cv = f"folds 0-{len(splits) - 2} CV in the pool, " if len(splits) > 1 else "no CV (too few patients), "
            msg = (f"paper {a.fraction} %: training pool {len(ps.train_pool)} cases, test {len(ps.test)} cases; "
                   f"{cv}fold {len(splits) - 1} pool vs test; "
                   f"{len(ps.missing)} CSV studies missing from the dataset; details in {info_path}")
        else:
            holdout = set(read_case_list(a.holdout)) if a.holdout else set()
            if a.holdout_paper_test:
                ps = S.paper_protocol(records, 100, allow_missing=True)
                holdout |= set(ps.test)
            eligible = S.lesion_positive_cases(records) if a.lesion_positive_only else None
            splits = S.subset_splits(c2p, fraction=a.fraction, shots=a.shots, seed=seed, repeats=a.repeats,
                                     eligible=eligible, holdout=holdout, max_val=a.max_val)
            what = f"{a.shots} shots" if a.shots else f"fraction {a.fraction:g}"
            msg = (f"{a.repeats} subset fold(s), {what}, seed {seed}: train sizes "
                   f"{[len(s['train']) for s in splits]}, val sizes {[len(s['val']) for s in splits]}")
        S.check_patient_disjoint(splits, c2p)
        S.write_splits(splits, out)
    except (BadInputError, CaseListError, S.SplitError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not a.quiet:
        print(f"{out}: {msg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
