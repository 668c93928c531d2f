"""Merging converted cohorts into one unlabeled pretraining dataset."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_petct.conversion.core import BadInputError, read_manifest
from nnunetv2_petct.conversion.geometry import body_mask
from nnunetv2_petct.conversion.pretraining import build_pretraining_dataset
from nnunetv2_petct.conversion.registry import convert_cohort
from nnunetv2_petct.phantoms.layouts import (
    autopet_ids,
    spade_ids,
    write_autopet_layout,
    write_autopet_nnunet_layout,
    write_spade_layout,
)


@pytest.fixture(scope="module")
def converted(phantom_cases, tmp_path_factory):
    """AutoPET (labeled, full PET grid) as 221, the same studies from the nnU-Net release as 222,
    SPADE (unlabeled, cropped) as 224."""
    tmp = tmp_path_factory.mktemp("pre")
    raw = tmp / "raw"
    convert_cohort("autopet", write_autopet_layout(phantom_cases, tmp / "ap"), 221, raw, quiet=True)
    convert_cohort("autopet-nnunet", write_autopet_nnunet_layout(phantom_cases[:2], tmp / "apn"), 222, raw,
                   quiet=True)
    spacing = [float(s) for s in reversed(phantom_cases[0].pet.GetSpacing())]
    convert_cohort("spade", write_spade_layout(phantom_cases[:3], tmp / "spade"), 224, raw, quiet=True,
                   spacing=spacing)
    return raw


def test_pretraining_dataset_merges_cohorts(phantom_cases, converted, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for d in converted.iterdir():  # a private copy of the raw root (this test writes a new dataset)
        os.symlink(d, raw / d.name)
    excl = tmp_path / "exclude.txt"
    p, s = spade_ids(phantom_cases[1])
    excl.write_text(f"{p}/{s}\n")
    summary = build_pretraining_dataset(300, [221, 222, 224], raw, exclude=excl, quiet=True)
    assert summary.ok
    # autopet: 4 + 2 available, the 2 nnU-Net-release studies are duplicates; spade: 3, 1 excluded
    assert summary.per_cohort["autopet"] == {"available": 6, "excluded": 0, "duplicates": 2, "written": 4,
                                             "failed": 0}
    assert summary.per_cohort["spade"] == {"available": 3, "excluded": 1, "duplicates": 0, "written": 2,
                                           "failed": 0}
    ds = raw / "Dataset300_PETCTPretraining"
    dj = json.loads((ds / "dataset.json").read_text())
    assert dj["numTraining"] == 6 == len(list((ds / "imagesTr").glob("*_0000.nii.gz")))
    assert dj["labels"] == {"background": 0, "body": 1} and dj["channel_names"] == {"0": "CT", "1": "PET"}
    assert (ds / "summary.md").read_text().count("| autopet |") == 1
    assert json.loads((ds / "summary.json").read_text())["per_cohort"]["spade"]["written"] == 2

    records = {r["case_id"]: r for r in read_manifest(ds)}
    ap = autopet_ids(phantom_cases[0])["case_id"]
    rec = records[f"autopet_{ap}"]
    assert rec["source_dataset"] == "Dataset221_AutoPET" and rec["cropped"] is True
    assert rec["patient_id"] == "autopet_" + autopet_ids(phantom_cases[0])["patient_id"]
    # uncropped AutoPET case: rewritten, cropped to the body; body-mask label from its CT
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(ds / "imagesTr" / f"autopet_{ap}_0000.nii.gz")))
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(ds / "labelsTr" / f"autopet_{ap}.nii.gz")))
    assert ct.shape == lab.shape and np.prod(ct.shape) < np.prod(sitk.GetArrayFromImage(phantom_cases[0].pet).shape)
    np.testing.assert_array_equal(lab, body_mask(ct).astype(np.uint8))
    # already-cropped SPADE case: images hard-linked from the converted dataset, not copied
    p, s = spade_ids(phantom_cases[0])
    src = converted / "Dataset224_SPADE" / "imagesTr" / f"{p}_{s}_0001.nii.gz"
    dst = ds / "imagesTr" / f"spade_{p}_{s}_0001.nii.gz"
    assert os.stat(src).st_ino == os.stat(dst).st_ino
    assert records[f"spade_{p}_{s}"]["pretraining_files"] == "hardlink"

    again = build_pretraining_dataset(300, [221, 222, 224], raw, exclude=excl, quiet=True)
    assert again.num_training == 6 and again.ok  # idempotent


def test_pretraining_refuses_mixed_pet_normalization(phantom_cases, converted, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    os.symlink(converted / "Dataset221_AutoPET", raw / "Dataset221_AutoPET")
    convert_cohort("spade", write_spade_layout(phantom_cases[:1], tmp_path / "spade", include_known_bad=False),
                   230, raw, quiet=True, pet_normalization="global")
    with pytest.raises(BadInputError, match="normalization"):
        build_pretraining_dataset(301, [221, 230], raw, quiet=True)
    with pytest.raises(BadInputError, match="Dataset999"):
        build_pretraining_dataset(301, [999], raw, quiet=True)


def test_pretraining_refuses_protected_test_cases_and_records_an_allowed_overlap(phantom_cases, converted, tmp_path):
    import subprocess
    import sys

    from nnunetv2_petct.phantoms.layouts import autopet_ids

    raw = tmp_path / "raw"
    raw.mkdir()
    for d in converted.iterdir():
        os.symlink(d, raw / d.name)
    ids0, ids1 = autopet_ids(phantom_cases[0]), autopet_ids(phantom_cases[1])
    # case 0 by its converted case id; case 1 by its AutoPET study (patient folder / date, as in the paper's CSVs)
    mdy = ids1["case_id"].rsplit("_", 1)[1]
    protect = tmp_path / "test_cases.txt"
    protect.write_text(f"{ids0['case_id']}\n{ids1['patient_folder']}/{mdy}-NA-PET-CT\n")
    out = raw / "Dataset301_PETCTPretraining"
    with pytest.raises(BadInputError) as e:
        build_pretraining_dataset(301, [221, 222], raw, protect_test_cases=protect, quiet=True)
    msg = str(e.value)
    assert "2 protected test case(s)" in msg and ids0["case_id"] in msg and "--allow-test-overlap" in msg
    assert "--exclude" in msg and f"study:{ids1['case_id'][4:14]}/{mdy}" in msg  # matched by the study key
    assert not list(out.glob("imagesTr/*.nii.gz"))  # nothing written
    # the same file as --exclude: verified absent
    ok = build_pretraining_dataset(301, [221, 222], raw, exclude=[ids0["case_id"], ids1["case_id"]],
                                   protect_test_cases=protect, quiet=True)
    prot = json.loads((out / "summary.json").read_text())["protected_test_cases"]
    assert ok.ok and prot["verified_excluded"] is True and prot["n_protected"] == 2 and prot["overlap"] == []
    # a label-efficiency design as the protected set; the override writes them and records the overlap
    design = tmp_path / "label_efficiency_design.json"
    design.write_text(json.dumps({"dataset_name": "Dataset221_AutoPET", "test": [ids0["case_id"]]}))
    proc = subprocess.run([sys.executable, "-m", "nnunetv2_petct.cli.pretraining_dataset", "-d", "302", "--from", "221",
                           "-o", str(raw), "--protect-test-cases", str(design), "-q"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and ids0["case_id"] in proc.stderr
    allowed = build_pretraining_dataset(302, [221], raw, protect_test_cases=design, allow_test_overlap=True, quiet=True)
    prot = json.loads((raw / "Dataset302_PETCTPretraining" / "summary.json").read_text())["protected_test_cases"]
    assert allowed.ok and prot["verified_excluded"] is False and prot["overlapping_test_cases"] == [ids0["case_id"]]
    assert prot["allow_test_overlap"] is True and "label-efficiency design" in prot["source"]
    assert (raw / "Dataset302_PETCTPretraining" / "imagesTr" / f"autopet_{ids0['case_id']}_0000.nii.gz").is_file()
