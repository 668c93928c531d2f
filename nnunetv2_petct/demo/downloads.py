"""The demo's synthetic "downloads": phantom cohorts in the folder layouts of the real releases.

    python -m nnunetv2_petct.demo.downloads --profile demo DEST

writes ``DEST/autopet`` (labeled, per-study NIfTI), ``DEST/deep_psma``, ``DEST/spade``, ``DEST/vimed``
(+ ``vimed_spacing.json``) and ``DEST/dicom`` (DICOM studies of three vendors). Deterministic: the same
profile always gives the same files. Written to ``DEST.partial`` first and renamed at the end, so ``DEST``
is either complete or absent.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from nnunetv2_petct.demo.config import PROFILES, Profile


def write_downloads(profile: Profile, dest: Path) -> Path:
    """Write the cohorts of ``profile`` to ``dest`` (see the module doc); returns ``dest``.

    Raises:
        FileExistsError: ``dest`` exists already.
    """
    from nnunetv2_petct.phantoms import make_cohort
    from nnunetv2_petct.phantoms.dicom_writer import write_dicom_study
    from nnunetv2_petct.phantoms.layouts import (
        write_autopet_layout,
        write_deep_psma_layout,
        write_spade_layout,
        write_vimed_layout,
    )

    dest = Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest} exists already (delete it to write the downloads again)")
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    size = profile.phantom_size
    # AutoPET: labeled, partly lesion-free, some patients with two studies (as in AutoPET)
    autopet = make_cohort(profile.n_autopet, seed=100, size=size, lesion_free_fraction=profile.autopet_lesion_free,
                          prefix="autopet", n_patients=max(2, profile.n_autopet - 3),
                          lesion_radius_mm=profile.lesion_radius_mm)
    write_autopet_layout(autopet, tmp / "autopet")
    write_deep_psma_layout(make_cohort(profile.n_unlabeled, seed=200, size=size, prefix="deeppsma"), tmp / "deep_psma")
    write_spade_layout(make_cohort(profile.n_unlabeled, seed=300, size=size, prefix="spade"), tmp / "spade")
    vimed = make_cohort(profile.n_unlabeled, seed=400, size=size, prefix="vimed")
    write_vimed_layout(vimed, tmp / "vimed")
    sx, sy, sz = vimed[0].pet.GetSpacing()
    (tmp / "vimed_spacing.json").write_text(json.dumps([sz, sy, sx]))
    for i, case in enumerate(make_cohort(profile.n_dicom, seed=500, size=size, prefix="dicom")):
        write_dicom_study(case, tmp / "dicom" / f"study{i}", vendor=("SIEMENS", "GE", "PHILIPS_CNTS")[i % 3], seed=i)
    tmp.rename(dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nnunetv2_petct.demo.downloads",
                                description="Write the demo's synthetic cohort downloads (phantoms in the "
                                "AutoPET, DEEP-PSMA, SPADE, ViMed-PET and DICOM layouts).")
    p.add_argument("dest", type=Path, help="folder to create")
    p.add_argument("--profile", choices=sorted(PROFILES), default="demo")
    a = p.parse_args(argv)
    try:
        write_downloads(PROFILES[a.profile], a.dest)
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"downloads written to {a.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
