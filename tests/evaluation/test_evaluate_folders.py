"""evaluate_folders on small NIfTI folders with hand-computed results."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from nnunetv2_petct.evaluation import EvaluationInputError, evaluate_folders

SHAPE = (8, 10, 12)  # (z, y, x)
SPACING_XYZ = (2.0, 2.0, 3.0)  # SimpleITK order -> spacing_mm (z, y, x) = (3, 2, 2): 12 mm^3 = 0.012 ml


def write(path: Path, arr: np.ndarray, spacing_xyz=SPACING_XYZ, origin=(0.0, 0.0, 0.0)) -> None:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing_xyz)
    img.SetOrigin(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def make_folders(root: Path) -> tuple[Path, Path, Path]:
    """caseA: one lesion found exactly + a 1-voxel FP; caseB: empty GT, 2-voxel FP; caseC: 2-voxel lesion missed."""
    ref, pred, pet = root / "labelsTs", root / "pred", root / "imagesTs"
    z = np.zeros(SHAPE, np.uint8)
    a_gt = z.copy()
    a_gt[1:3, 1:3, 1:3] = 1
    a_pred = a_gt.copy()
    a_pred[6, 8, 10] = 1
    a_pet = np.ones(SHAPE, np.float32)
    a_pet[1:3, 1:3, 1:3] = 4.0
    a_pet[1, 1, 1] = 6.0
    write(ref / "caseA.nii.gz", a_gt)
    write(pred / "caseA.nii.gz", a_pred)
    write(pet / "caseA_0001.nii.gz", a_pet)
    write(pet / "caseA_0000.nii.gz", np.full(SHAPE, -1000.0, np.float32))  # CT: must not be read as PET
    b_pred = z.copy()
    b_pred[4, 4, 4:6] = 1
    write(ref / "caseB.nii.gz", z)
    write(pred / "caseB.nii.gz", b_pred)
    write(pet / "caseB_0001.nii.gz", np.ones(SHAPE, np.float32))
    c_gt = z.copy()
    c_gt[3, 3, 3:5] = 1
    write(ref / "caseC.nii.gz", c_gt)
    write(pred / "caseC.nii.gz", z)
    write(pet / "caseC.nii.gz", np.full(SHAPE, 2.0, np.float32))  # plain <case>.nii.gz is accepted
    (pred / "dataset.json").write_text("{}")  # nnU-Net side files are ignored
    return ref, pred, pet


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_folder_evaluation_with_pet(tmp_path):
    ref, pred, pet = make_folders(tmp_path)
    out = tmp_path / "out"
    summary = evaluate_folders(ref, pred, out, pet_dir=pet, quiet=True)
    assert sorted(p.name for p in out.iterdir()) == ["per_case.csv", "per_lesion.csv", "summary.json", "summary.md"]
    rows = {r["case"]: r for r in read_csv(out / "per_case.csv")}
    assert list(rows) == ["caseA", "caseB", "caseC"]
    # caseA: |G| = 8, |P| = 9, overlap 8 -> Dice 16/17; FP voxel 0.012 ml; nothing missed
    assert float(rows["caseA"]["dice"]) == pytest.approx(16 / 17)
    assert float(rows["caseA"]["fpv_ml"]) == pytest.approx(0.012)
    assert float(rows["caseA"]["fnv_ml"]) == pytest.approx(0.0)
    # caseA GT lesion: 8 x 0.012 = 0.096 ml, SUVmean (7*4 + 6)/8 = 4.25, TLG 0.408, SUVmax 6 (not CT's -1000)
    assert float(rows["caseA"]["gt_tmtv_ml"]) == pytest.approx(0.096)
    assert float(rows["caseA"]["gt_total_tlg"]) == pytest.approx(0.408)
    assert float(rows["caseA"]["gt_suv_max"]) == pytest.approx(6.0)
    # caseB: empty GT -> Dice and FNV NaN, FPV = 2 voxels = 0.024 ml
    assert math.isnan(float(rows["caseB"]["dice"])) and math.isnan(float(rows["caseB"]["fnv_ml"]))
    assert float(rows["caseB"]["fpv_ml"]) == pytest.approx(0.024)
    # caseC: missed 2-voxel lesion: Dice 0, FNV 0.024; PET read from caseC.nii.gz (SUV 2 everywhere)
    assert float(rows["caseC"]["dice"]) == 0.0 and float(rows["caseC"]["fnv_ml"]) == pytest.approx(0.024)
    assert float(rows["caseC"]["gt_suv_max"]) == pytest.approx(2.0)
    assert float(rows["caseC"]["gt_total_tlg"]) == pytest.approx(2.0 * 0.024)

    js = json.loads((out / "summary.json").read_text())  # strict JSON: NaN is written as null
    assert js == summary
    # means leave NaN out: Dice over A and C = (16/17 + 0)/2; FNV over A and C; FPV over all 3
    assert js["mean"]["dice"] == pytest.approx(8 / 17) and js["n_used"]["dice"] == 2
    assert js["mean"]["fnv_ml"] == pytest.approx(0.012) and js["n_used"]["fnv_ml"] == 2
    assert js["mean"]["fpv_ml"] == pytest.approx(0.012) and js["n_used"]["fpv_ml"] == 3
    assert js["n_cases"] == 3 and js["n_cases_empty_gt"] == 1 and js["pet"] is True
    d = js["detection"]
    # GT lesions: A (found), C (missed); FP lesions: A's voxel and B's pair -> 2 FPs over 3 cases
    assert (d["n_gt_lesions"], d["n_gt_detected"], d["n_fp_lesions"]) == (2, 1, 2)
    assert d["lesion_sensitivity_pooled"] == pytest.approx(0.5)
    assert d["fp_per_case"] == pytest.approx(2 / 3)

    lesions = read_csv(out / "per_lesion.csv")
    assert [(r["case"], r["source"]) for r in lesions] == [
        ("caseA", "gt"), ("caseA", "pred"), ("caseA", "pred"), ("caseB", "pred"), ("caseC", "gt")
    ]
    a_gt = lesions[0]
    assert a_gt["matched"] == "1" and float(a_gt["suv_mean"]) == pytest.approx(4.25)
    assert lesions[4]["matched"] == "0"
    md = (out / "summary.md").read_text()
    assert "| Dice | 0.4706 | 2 |" in md


def test_without_pet_suv_columns_are_nan_but_tmtv_is_given(tmp_path):
    ref, pred, _ = make_folders(tmp_path)
    evaluate_folders(ref, pred, tmp_path / "out", quiet=True, overlap="iou0.5")
    rows = {r["case"]: r for r in read_csv(tmp_path / "out" / "per_case.csv")}
    assert float(rows["caseA"]["pred_tmtv_ml"]) == pytest.approx(0.108)  # 9 voxels x 0.012 ml
    assert math.isnan(float(rows["caseA"]["gt_total_tlg"]))
    js = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert js["overlap"] == "iou0.5" and js["pet"] is False and js["mean"]["gt_total_tlg"] is None


def test_two_processes_give_the_same_files(tmp_path):
    ref, pred, pet = make_folders(tmp_path)
    evaluate_folders(ref, pred, tmp_path / "o1", pet_dir=pet, quiet=True)
    evaluate_folders(ref, pred, tmp_path / "o2", pet_dir=pet, quiet=True, num_processes=2)
    for name in ("per_case.csv", "per_lesion.csv", "summary.json"):
        assert (tmp_path / "o1" / name).read_text() == (tmp_path / "o2" / name).read_text()


def test_mismatched_case_sets_name_the_cases(tmp_path):
    ref, pred, _ = make_folders(tmp_path)
    (pred / "caseB.nii.gz").unlink()
    write(pred / "caseZ.nii.gz", np.zeros(SHAPE, np.uint8))
    with pytest.raises(EvaluationInputError) as e:
        evaluate_folders(ref, pred, tmp_path / "out", quiet=True)
    assert "caseB" in str(e.value) and "caseZ" in str(e.value)
    assert not (tmp_path / "out").exists()  # nothing written on bad input


@pytest.mark.parametrize(
    "kwargs, word",
    [({"spacing_xyz": (2.0, 2.0, 2.5)}, "spacing"), ({"origin": (0.0, 5.0, 0.0)}, "origin")],
)
def test_mismatched_geometry_names_the_case(tmp_path, kwargs, word):
    ref, pred, _ = make_folders(tmp_path)
    write(pred / "caseC.nii.gz", np.zeros(SHAPE, np.uint8), **kwargs)
    with pytest.raises(EvaluationInputError) as e:
        evaluate_folders(ref, pred, tmp_path / "out", quiet=True)
    assert "caseC" in str(e.value) and word in str(e.value)
    assert "caseA" not in str(e.value)


def test_wrong_size_and_missing_pet_name_the_case(tmp_path):
    ref, pred, pet = make_folders(tmp_path)
    write(pred / "caseA.nii.gz", np.zeros((8, 10, 11), np.uint8))
    with pytest.raises(EvaluationInputError, match="caseA.*size"):
        evaluate_folders(ref, pred, tmp_path / "out", quiet=True)
    ref, pred, pet = make_folders(tmp_path / "second")
    (pet / "caseB_0001.nii.gz").unlink()
    with pytest.raises(EvaluationInputError, match="caseB"):
        evaluate_folders(ref, pred, tmp_path / "out", pet_dir=pet, quiet=True)


def test_bad_arguments(tmp_path):
    ref, pred, _ = make_folders(tmp_path)
    with pytest.raises(ValueError):
        evaluate_folders(ref, pred, tmp_path / "out", overlap="iou2")
    with pytest.raises(EvaluationInputError, match="not found"):
        evaluate_folders(tmp_path / "nope", pred, tmp_path / "out")
