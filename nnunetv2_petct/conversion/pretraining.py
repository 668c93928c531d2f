"""Merge converted datasets into one unlabeled nnU-Net pretraining dataset (SPEC §2, §5).

Every case of every source dataset (``nnUNetv2_petct_convert`` output) becomes a case
``<cohort>_<case id>`` (cohort families: all AutoPET layouts -> ``autopet``, ``deep-psma`` ->
``deeppsma``, ``vimed-pet`` -> ``vimed``, ...), so the same AutoPET study converted from two layouts
is detected as a duplicate and kept once. The label is a body mask (CT > -500 HU, largest component,
axial holes filled), which nnU-Net planning needs (all-zero labels crash its fingerprinting); lesion
labels are dropped. Labels are ``{"background": 0, "body": 1}``.

Images are hard-linked from the source dataset when possible (same file system), else copied. Cases
that were not cropped at conversion (labeled cohorts keep the PET grid) are cropped to the body here
by default (the authors crop every scan), which means rewriting them.

A summary (cases per cohort: available, excluded, duplicates, written, failed) is printed and
written as ``summary.json`` and ``summary.md`` in the new dataset folder.

Leakage guard (``protect_test_cases``): the test set of a label-efficiency study (a case list or the
runner's ``label_efficiency_design.json``) must not enter the pretraining set. Any protected case that
would be written (matched by case id, source case id or AutoPET study key, see
:mod:`nnunetv2_petct.transfer.leakage`) stops the assembly before anything is written, naming the cases;
leave them out with ``exclude`` (the same file works), or pass ``allow_test_overlap`` to pretrain on
them anyway — then a loud warning is printed and ``summary.json`` records the overlap.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnunetv2_petct.conversion.core import (
    BODY_THRESHOLD_HU,
    BadInputError,
    CaseResult,
    ConversionError,
    _partial_dir,
    case_paths,
    check_dataset_folder,
    clean_partial,
    commit_images,
    files_fingerprint,
    finalize_dataset,
    finished_case_ids,
    marker_payload,
    orphan_files,
    output_failure_reason,
    print_above_progress,
    read_image,
    read_manifest,
    remove_case,
    reuse_problem,
    write_marker,
)
from nnunetv2_petct.conversion.registry import dataset_folder, find_dataset_dir, resolve_raw_dir
from nnunetv2_petct.io import (
    WriteError,
    atomic_write,
    probe_writable_dir,
    read_case_list,
    run_parallel,
    write_json_atomic,
    write_text_atomic,
)

WRITER = "nnUNetv2_petct_pretraining_dataset"

COHORT_PREFIX = {
    "autopet": "autopet", "autopet-nnunet": "autopet", "autopet-dicom": "autopet",
    "deep-psma": "deeppsma", "spade": "spade", "vimed-pet": "vimed", "dicom": "dicom",
}


def cohort_prefix(cohort: str) -> str:
    """Case-id prefix of a cohort (one per cohort *family*, see the module docstring)."""
    return COHORT_PREFIX.get(cohort, "".join(ch for ch in cohort.lower() if ch.isalnum()) or "cohort")


@dataclass
class PretrainingSummary:
    dataset_dir: Path
    per_cohort: dict[str, dict[str, int]] = field(default_factory=dict)
    failed: list[dict] = field(default_factory=list)
    num_training: int = 0
    seconds: float = 0.0
    protected_test_cases: dict | None = None

    @property
    def ok(self) -> bool:
        return not self.failed

    def table(self) -> str:
        cols = ("available", "excluded", "duplicates", "written", "failed")
        lines = ["| cohort | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        totals = dict.fromkeys(cols, 0)
        for cohort, row in sorted(self.per_cohort.items()):
            lines.append(f"| {cohort} | " + " | ".join(str(row.get(c, 0)) for c in cols) + " |")
            for c in cols:
                totals[c] += row.get(c, 0)
        lines.append("| **total** | " + " | ".join(str(totals[c]) for c in cols) + " |")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"dataset_dir": str(self.dataset_dir), "per_cohort": self.per_cohort, "failed": self.failed,
                "num_training": self.num_training, "seconds": round(self.seconds, 2),
                "protected_test_cases": self.protected_test_cases}


def link_or_copy(src: Path, dst: Path, dataset_dir: Path) -> str:
    """Hard-link ``src`` to ``dst`` (atomically, through ``.partial/``), copying when linking is not
    possible (another file system, no permission). Returns ``"hardlink"`` or ``"copy"``."""
    with atomic_write(dst, tmp_dir=_partial_dir(dataset_dir)) as tmp:
        try:
            os.link(src, tmp)
            how = "hardlink"
        except OSError:
            shutil.copyfile(src, tmp)
            how = "copy"
    return how


def pretraining_fingerprint(src_dir: str | os.PathLike, case_id: str, crop: bool, margin_vox: int) -> dict:
    """What a pretraining case is made from: the source dataset case's files (path, size, modification
    time: :func:`~nnunetv2_petct.conversion.core.files_fingerprint`) and the options that shape it."""
    src = case_paths(Path(src_dir), case_id)
    fp = files_fingerprint([src[k] for k in ("ct", "pet", "record")], Path(src_dir), f"{Path(src_dir).name}/{case_id}")
    fp["options"] = {"crop": bool(crop), "body_margin_vox": int(margin_vox)}
    return fp


def assemble_one(src_dir: str, record: dict, out_dir: str, new_id: str, crop: bool, margin_vox: int,
                 overwrite: bool, fingerprint: dict | None = None) -> CaseResult:
    """Put one converted case into the pretraining dataset (worker function; never raises).

    A finished case is kept unless ``overwrite`` or its source fingerprint changed
    (:func:`pretraining_fingerprint`)."""
    import SimpleITK as sitk

    from nnunetv2_petct.conversion.geometry import body_mask, mask_bbox_zyx

    t0 = time.perf_counter()
    out = Path(out_dir)
    src = case_paths(Path(src_dir), record["case_id"])
    dst = case_paths(out, new_id)
    fingerprint = fingerprint or pretraining_fingerprint(src_dir, record["case_id"], crop, margin_vox)
    if not overwrite and reuse_problem(out, new_id, fingerprint) is None:
        return CaseResult(new_id, "existing", str(src["ct"].parent))
    try:
        if dst["record"].exists():
            dst["record"].unlink()
        ct = read_image(src["ct"])
        ct_arr = sitk.GetArrayViewFromImage(ct)
        mask = body_mask(ct_arr, BODY_THRESHOLD_HU)
        if not mask.any():
            raise ConversionError("empty body mask (no CT voxel above -500 HU)")
        recrop = crop and not record.get("cropped", False)
        new = json.loads(json.dumps(record))
        if recrop:
            pet = read_image(src["pet"])
            box = mask_bbox_zyx(mask, margin_vox)
            sz, sy, sx = box
            lab = sitk.GetImageFromArray(mask.astype(np.uint8))
            lab.CopyInformation(ct)
            images = {k: v[sx.start:sx.stop, sy.start:sy.stop, sz.start:sz.stop]
                      for k, v in {"ct": ct, "pet": pet, "label": lab}.items()}
            commit_images(out, images, dst)
            files = "rewritten (cropped to the body)"
            new["cropped"] = True
            new["crop_box_zyx"] = [[s.start, s.stop] for s in box]
            new["shape_zyx"] = [int(s) for s in reversed(images["pet"].GetSize())]
            new["origin_mm_xyz"] = [round(float(o), 4) for o in images["pet"].GetOrigin()]
            n_fg = int(np.count_nonzero(mask[box]))
        else:
            how = {link_or_copy(src[k], dst[k], out) for k in ("ct", "pet")}
            files = "/".join(sorted(how))
            lab = sitk.GetImageFromArray(mask.astype(np.uint8))
            lab.CopyInformation(ct)
            commit_images(out, {"label": lab}, dst)
            n_fg = int(np.count_nonzero(mask))
        voxel_ml = float(np.prod(ct.GetSpacing())) / 1000.0
        new.update({
            "case_id": new_id,
            "patient_id": f"{cohort_prefix(record['cohort'])}_{record['patient_id']}",
            "source_dataset": Path(src_dir).name,
            "source_case_id": record["case_id"],
            "label": {"kind": "body_mask", "source": f"CT > {BODY_THRESHOLD_HU:g} HU, largest component",
                      "foreground_voxels": n_fg, "foreground_ml": round(n_fg * voxel_ml, 3),
                      "file": str(dst["label"].relative_to(out))},
            "pretraining_files": files,
            "source_fingerprint": fingerprint,
        })
        for k, key in (("0", "ct"), ("1", "pet")):
            new["channels"][k]["file"] = str(dst[key].relative_to(out))
        write_json_atomic(new, dst["record"])
    except Exception as e:  # noqa: BLE001 - one bad case must not stop the others
        reason = str(e) if isinstance(e, (ConversionError, WriteError)) else f"{type(e).__name__}: {e}"
        for key in ("record", "ct", "pet", "label"):  # nothing half-built stays behind
            if dst[key].exists():
                dst[key].unlink()
        fatal = output_failure_reason(e, out)
        return CaseResult(new_id, "failed", str(src["ct"].parent), fatal or reason, time.perf_counter() - t0,
                          fatal=bool(fatal))
    return CaseResult(new_id, "converted", str(src["ct"].parent), "", time.perf_counter() - t0)


def _excluded(record: dict, new_id: str, exclusions: set[str]) -> bool:
    keys = record.get("source_keys") or {}
    cands = {record["case_id"], new_id}
    if keys.get("patient") and keys.get("scan"):
        cands.add(f"{keys['patient']}/{keys['scan']}")
    return bool(cands & exclusions)


def _check_protected(tasks: Sequence[tuple], protect: Path | Iterable[str] | None, allow: bool) -> dict | None:
    """The leakage guard of :func:`build_pretraining_dataset` over the cases about to be written."""
    from nnunetv2_petct.io import CaseListError
    from nnunetv2_petct.transfer.leakage import OVERRIDE_FLAG, find_overlap, read_protected_cases
    from nnunetv2_petct.transfer.splits import record_study_key

    if protect is None:
        return None
    if isinstance(protect, (str, os.PathLike)):
        try:
            protected, what = read_protected_cases(protect)
        except CaseListError as e:
            raise BadInputError(f"--protect-test-cases: {e}") from None
    else:
        protected, what = sorted({str(c) for c in protect}), "given case ids"
    entries = []
    for src, record, _, new_id, *_ in tasks:
        sk = record_study_key(record)
        entry = {"case_id": new_id, "source_case_id": record["case_id"], "dataset_name": Path(src).name}
        if sk is not None:
            entry["study_key"] = f"{sk[0]}/{sk[1]}"
        entries.append(entry)
    overlap = find_overlap(protected, entries)
    cases = sorted({o["test_case"] for o in overlap})
    if overlap and not allow:
        shown = "; ".join(f"{o['test_case']} = {o['pretraining_case']} from {o['pretraining_dataset']} "
                          f"({o['shared']})" for o in overlap[:10])
        raise BadInputError(
            f"{len(cases)} protected test case(s) ({what}) would enter the pretraining set: {shown}"
            f"{' ...' if len(overlap) > 10 else ''}. Leave them out with --exclude (the same file works), or pass "
            f"{OVERRIDE_FLAG} to pretrain on them anyway (recorded in summary.json; the label-efficiency runner "
            f"will then refuse this foundation model for that test set unless given {OVERRIDE_FLAG} too).")
    if overlap:
        msg = (f"WARNING: {OVERRIDE_FLAG}: {len(cases)} protected test case(s) ENTER the pretraining set "
               f"({', '.join(cases[:10])}{' ...' if len(cases) > 10 else ''}); results on them are not "
               f"held out from pretraining. Recorded in summary.json.")
        logging.getLogger(__name__).warning(msg)
        print(f"[nnunetv2_petct] {msg}", file=sys.stderr)
    return {"source": what, "n_protected": len(protected), "verified_excluded": not overlap,
            "allow_test_overlap": bool(allow), "overlapping_test_cases": cases, "overlap": overlap}


def build_pretraining_dataset(dataset_id: int, from_datasets: Sequence[int | str], raw_dir: str | os.PathLike | None = None,
                              *, name: str = "PETCTPretraining", exclude: Path | Iterable[str] | None = None,
                              crop: bool = True, body_margin_vox: int = 3, num_processes: int = 1,
                              overwrite: bool = False, quiet: bool = False,
                              protect_test_cases: Path | Iterable[str] | None = None,
                              allow_test_overlap: bool = False) -> PretrainingSummary:
    """Build ``<raw_dir>/DatasetXXX_<name>`` from converted datasets (ids or folder names).

    Args:
        exclude: a text file (one case id per line: the source case id, the prefixed id, or a
            SPADE ``patient/scan``; ``#`` comments) or an iterable of ids.
        crop: crop cases that were not cropped at conversion (default True).
        protect_test_cases: test cases that must not enter the set (a case list file, a
            ``label_efficiency_design.json``, or an iterable of ids); see the module doc.
        allow_test_overlap: write protected cases anyway (warned loudly, recorded in ``summary.json``).

    The output folder carries the package's marker; an existing folder without it is refused. A
    finished case is kept only when its source case and the options are unchanged; ``overwrite``
    rebuilds every case and removes cases that no longer come from the sources. The folder is checked
    for writing once, up front; a run with nothing to do writes nothing.

    Raises:
        BadInputError: unknown source dataset, a source without manifest, the output being one of
            the sources, sources with different channel names (PET normalization), or an output folder
            this package did not write, an unreadable protected-case file, or
            protected test cases that would enter the set (named, with the fix).
        WriteError: the output folder cannot be written (read-only, not a folder, disk full, no inodes).
    """
    t0 = time.perf_counter()
    raw = resolve_raw_dir(raw_dir)
    out_dir = dataset_folder(raw, dataset_id, name)
    sources = [find_dataset_dir(raw, d) for d in from_datasets]
    if not sources:
        raise BadInputError("no source dataset given (--from)")
    if any(s.resolve() == out_dir.resolve() for s in sources):
        raise BadInputError(f"{out_dir.name} cannot be built from itself")
    if exclude is None:
        exclusions: set[str] = set()
    elif isinstance(exclude, (str, os.PathLike)):
        exclusions = set(read_case_list(Path(exclude)))
    else:
        exclusions = set(exclude)

    norms, tasks, per_cohort = {}, [], {}
    seen: dict[str, str] = {}
    for src in sources:
        try:
            dj = json.loads((src / "dataset.json").read_text())
            records = read_manifest(src)
        except (OSError, ValueError) as e:
            raise BadInputError(f"{src.name}: {e}") from None
        norms[src.name] = dj.get("petct_normalization", {}).get("pet", "zscore")
        for r in records:
            prefix = cohort_prefix(r["cohort"])
            row = per_cohort.setdefault(prefix, {"available": 0, "excluded": 0, "duplicates": 0, "written": 0,
                                                 "failed": 0})
            row["available"] += 1
            new_id = f"{prefix}_{r['case_id']}"
            if _excluded(r, new_id, exclusions):
                row["excluded"] += 1
                continue
            if new_id in seen:
                row["duplicates"] += 1
                continue
            seen[new_id] = src.name
            tasks.append((str(src), r, str(out_dir), new_id, crop, body_margin_vox, overwrite))
    if len(set(norms.values())) > 1:
        raise BadInputError(f"source datasets disagree on normalization {norms}; reconvert with one "
                            f"nnUNetv2_petct_convert --normalization choice")
    protection = _check_protected(tasks, protect_test_cases, allow_test_overlap)
    pet_norm = next(iter(norms.values()))
    marker = check_dataset_folder(out_dir, "pretraining", WRITER)
    summary = PretrainingSummary(dataset_dir=out_dir, per_cohort=per_cohort, protected_test_cases=protection)

    # plan: keep finished cases whose source case and options are unchanged
    done_before = set(finished_case_ids(out_dir)) if out_dir.is_dir() else set()
    todo, kept = [], []
    for t in tasks:
        fp = pretraining_fingerprint(t[0], t[1]["case_id"], crop, body_margin_vox)
        if not overwrite and reuse_problem(out_dir, t[3], fp) is None:
            kept.append(t[3])
        else:
            todo.append((*t[:6], True, fp))
    stale = sorted(done_before - set(seen))
    payload = marker_payload("pretraining", WRITER, per_cohort,
                             {"crop": bool(crop), "body_margin_vox": int(body_margin_vox),
                              "sources": [s.name for s in sources], "pet_normalization": pet_norm})
    old_marker = {k: v for k, v in (marker or {}).items() if k not in ("created_utc", "updated_utc")}
    must_write = bool(todo) or (overwrite and bool(stale or orphan_files(out_dir))) or old_marker != payload \
        or (out_dir / ".partial").exists()
    if must_write:
        probe_writable_dir(out_dir, "dataset folder")
        write_marker(out_dir, marker, payload)
        for sub in ("imagesTr", "labelsTr", "manifest"):
            (out_dir / sub).mkdir(parents=True, exist_ok=True)
        clean_partial(out_dir)

    def crashed(task: tuple, exc: BaseException) -> CaseResult:
        return CaseResult(task[3], "failed", task[0], f"worker crashed: {type(exc).__name__}: {exc}")

    prefix_of = {t[3]: cohort_prefix(t[1]["cohort"]) for t in tasks}
    for new_id in kept:
        per_cohort[prefix_of[new_id]]["written"] += 1
    stopped = None
    results = run_parallel(assemble_one, todo, num_processes, desc=f"assemble {out_dir.name}", quiet=quiet,
                           on_crash=crashed)
    try:
        for res in results:
            row = per_cohort[prefix_of[res.case_id]]
            if res.status == "failed":
                row["failed"] += 1
                summary.failed.append({"case_id": res.case_id, "source_path": res.source_path, "reason": res.reason})
                print_above_progress(f"[nnunetv2_petct] FAILED {res.case_id}: {res.reason}")
                if res.fatal:
                    stopped = res
                    break
            else:
                row["written"] += 1
    finally:
        results.close()
    if must_write:
        clean_partial(out_dir)
    if stopped is None and overwrite:
        for case_id in stale:
            remove_case(out_dir, case_id)
        for rel in orphan_files(out_dir):
            (out_dir / rel).unlink()
    if out_dir.is_dir():
        dj = finalize_dataset(out_dir, name=name, labeled=False, pet_normalization=pet_norm,
                              description="unlabeled PET/CT pretraining set (body-mask pseudo-labels) from "
                                          + ", ".join(s.name for s in sources),
                              extra={"petct_sources": [s.name for s in sources]})
        summary.num_training = dj["numTraining"]
    summary.failed.sort(key=lambda f: f["case_id"])
    summary.seconds = time.perf_counter() - t0
    if must_write:
        write_json_atomic(summary.to_dict(), out_dir / "summary.json")
        write_text_atomic(f"# {out_dir.name}\n\nSources: {', '.join(s.name for s in sources)}\n\n"
                          f"{summary.table()}\n\nnumTraining = {summary.num_training}\n", out_dir / "summary.md")
    if stopped is not None:
        err = WriteError(f"{stopped.reason}. The run stopped; finished cases are kept: fix the output folder "
                         f"and rerun to build the rest")
        raise err
    return summary
