"""Benchmark: wall time and peak memory to convert one full-size PET/CT study.

Two full-size phantoms (``make_phantom(seed, size="full")``: PET 326x400x400 at 3x2.04x2.04 mm, CT
328x512x512 at 3x0.98x0.98 mm) are written once in the AutoPET per-study NIfTI layout and, when the
DICOM writer is available, as DICOM studies with DICOM-SEG (``autopet-dicom`` cohort). Each
measurement converts ``w`` studies with ``w`` workers (``-np w``) in a fresh Python process:

- ``wall_s``: wall time of :func:`~nnunetv2_petct.conversion.registry.convert_cohort` (read, resample
  CT onto the PET grid, checks, gzip-compressed writes, manifest), imports and phantom writing excluded;
  ``wall_s_per_study`` = ``wall_s`` / studies (with 2 workers, 2 studies run side by side);
- ``peak_rss_mb_per_study``: peak resident set size (``ru_maxrss``) of the process that converted a
  study: the process itself for 1 worker, the largest worker (``RUSAGE_CHILDREN``) for more; it
  includes the interpreter and libraries, reported separately as ``baseline_rss_mb`` (a process that
  only imports the converter);
- ``peak_rss_mb_all_processes``: sum of the main process's and the workers' peaks (upper bound).

``run()`` prints nothing and returns the figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

_CHILD = """
import json, resource, sys, time
from nnunetv2_petct.conversion.registry import convert_cohort
cohort, source, raw, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
t = time.perf_counter()
if cohort != "none":
    r = convert_cohort(cohort, source, 501, raw, num_processes=workers, quiet=True)
    ok, n = r.ok, r.num_training
else:
    import SimpleITK, numpy, nnunetv2_petct.conversion.core, nnunetv2_petct.conversion.geometry  # noqa: F401
    ok, n = True, 0
wall = time.perf_counter() - t
print(json.dumps({"wall_s": wall, "ok": ok, "n": n,
                  "self_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "children_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def _env() -> dict:
    repo = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)}


def _measure(cohort: str, source: Path, raw: Path, workers: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", _CHILD, cohort, str(source), str(raw), str(workers)],
                          capture_output=True, text=True, env=_env(), timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"conversion benchmark child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link every file of ``src`` into ``dst`` (same relative paths)."""
    for dirpath, _, files in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for f in files:
            os.link(Path(dirpath, f), dst / rel / f)


def prepare_sources(out_dir: str, n_studies: int, seed: int, layouts: Sequence[str]) -> dict:
    """Write ``n_studies`` full-size phantoms as ``<out_dir>/<layout>/study<i>/``; returns facts.

    Run in its own process by :func:`run` (so that the multi-GB phantoms never inflate the peak
    memory the measuring processes inherit)."""
    import dataclasses

    from nnunetv2_petct.phantoms import make_phantom
    from nnunetv2_petct.phantoms.layouts import autopet_ids, write_autopet_layout

    try:
        from nnunetv2_petct.phantoms.dicom_writer import write_dicom_study
    except ImportError:
        write_dicom_study = None
    t0 = time.perf_counter()
    facts: dict = {"written": []}
    for i in range(n_studies):
        case = make_phantom(seed + i, size="full", lesion_free=False, case_id=f"bench{i}",
                            patient_id=f"{seed + i:010x}", study_date="20200101")
        facts["pet_shape_zyx"] = list(reversed(case.pet.GetSize()))
        facts["ct_shape_zyx"] = list(reversed(case.ct.GetSize()))
        for layout in layouts:
            d = Path(out_dir) / layout / f"study{i}"
            if layout == "autopet":
                write_autopet_layout([case], d)
            elif layout == "autopet-dicom" and write_dicom_study is not None:
                tcia = dataclasses.replace(case, patient_id=autopet_ids(case)["patient_id"])
                write_dicom_study(tcia, d, seed=i, with_seg=True)
            else:
                continue
            facts["written"].append([layout, i])
        del case
    facts["seconds_prepare"] = round(time.perf_counter() - t0, 2)
    return facts


def run(workers: Sequence[int] = (1, 2), seed: int = 0, layouts: Sequence[str] = ("autopet", "autopet-dicom")) -> dict:
    """Convert full-size phantom studies with each worker count; see the module docstring."""
    n_max = max(workers)
    results: dict = {"workers": list(workers), "measured": "wall time of convert_cohort; peak RSS (ru_maxrss) "
                     "of the converting process incl. interpreter and libraries", "layouts": {}}
    with tempfile.TemporaryDirectory(prefix="bench_convert_") as tmp:
        tmp = Path(tmp)
        code = ("import json, sys; from nnunetv2_petct.benchmarks.bench_convert import prepare_sources; "
                "print(json.dumps(prepare_sources(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])))")
        proc = subprocess.run([sys.executable, "-c", code, str(tmp / "src"), str(n_max), str(seed), *layouts],
                              capture_output=True, text=True, env=_env(), timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"writing the phantom studies failed:\n{proc.stderr[-3000:]}")
        facts = json.loads(proc.stdout.strip().splitlines()[-1])
        written = {tuple(x) for x in facts.pop("written")}
        results.update(facts)
        results["baseline_rss_mb"] = round(_measure("none", tmp, tmp / "raw_none", 1)["self_kb"] / 1024, 1)
        for layout in layouts:
            if not all((layout, i) in written for i in range(n_max)):
                results["layouts"][layout] = "skipped: writer not available"
                continue
            rows = []
            for w in workers:
                src = tmp / "runs" / f"{layout}_{w}"
                for i in range(w):
                    _link_tree(tmp / "src" / layout / f"study{i}", src / f"study{i}")
                m = _measure(layout, src, tmp / f"raw_{layout}_{w}", w)
                if not m["ok"] or m["n"] != w:
                    raise RuntimeError(f"{layout} with {w} worker(s): {m}")
                per_study_kb = m["self_kb"] if w == 1 else m["children_kb"]
                total_kb = m["self_kb"] + (w * m["children_kb"] if w > 1 else 0)
                rows.append({
                    "workers": w, "studies": w, "wall_s": round(m["wall_s"], 2),
                    "wall_s_per_study": round(m["wall_s"] / w, 2),
                    "peak_rss_mb_per_study": round(per_study_kb / 1024, 1),
                    "peak_rss_mb_all_processes": round(total_kb / 1024, 1),
                })
            results["layouts"][layout] = rows
    return results


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
