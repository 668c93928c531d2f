"""Click-guided trainers and predictions through the real CLIs on phantoms (issue 23).

One session fixture trains, through stock ``nnUNetv2_train``:

- ``nnUNetTrainerPETCTInteractive_tiny`` from a foundation checkpoint on the tiny dataset (the 4-channel stem
  check, stock ``nnUNetv2_predict`` compatibility);
- ``nnUNetTrainerPETCTInteractiveScratch_demo`` from scratch on a copy of the tiny dataset whose lesions are
  hidden in the PET (uptake replaced by the surrounding background): only a click can show where a lesion is,
  so whatever the model learns about lesions it learns from the clicks. The prediction tests use it: they
  prove the click pathway end to end (clicks rendered in training, mapped into nnU-Net's preprocessed grid at
  prediction, the CLIs), not the model's quality (that is the ``interactive`` benchmark's job). 1,500 tiny-net
  iterations do not make it *find* a hidden lesion from one click (measured: the lesion logit moves by ~0.2
  against a -4.6 prior), so the test asserts the direction: a tumor click raises the lesion probability inside
  the clicked lesion, a background click there lowers it again.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from tests.conftest import cli, run
from tests.nnunet.test_finetune_trainers import (
    copy_dataset,
    fold_dir,
    make_foundation_checkpoint,
    pretraining_data,
)

pytestmark = pytest.mark.slow

COPY_ID, COPY_NAME = 571, "PETCTInteractiveTiny"
HIDDEN_ID, HIDDEN_NAME = 572, "PETCTHiddenLesionsTiny"
FROM_FOUNDATION = "nnUNetTrainerPETCTInteractive_tiny"
CLICK_MODEL = "nnUNetTrainerPETCTInteractiveScratch_demo"


@dataclass
class Interactive:
    env: dict
    dataset_name: str
    hidden_name: str
    foundation: Path
    test_images: Path  # the tiny dataset's held-out cases
    test_labels: Path
    hidden_images: Path  # the same cases with their lesions hidden in the PET
    work: Path

    def model(self, trainer: str = CLICK_MODEL) -> Path:
        name = self.hidden_name if trainer == CLICK_MODEL else self.dataset_name
        return fold_dir(self.env, name, trainer, 0).parent


def hide_lesions(pet_file: Path, label_file: Path, out_file: Path) -> None:
    """The PET with every lesion (grown by 2 voxels) set to the median of a 2-voxel shell around it."""
    pet = sitk.ReadImage(str(pet_file))
    lesion = sitk.GetArrayFromImage(sitk.ReadImage(str(label_file))) > 0
    a = sitk.GetArrayFromImage(pet).astype(np.float32)
    if lesion.any():
        grown = ndimage.binary_dilation(lesion, iterations=2)
        shell = ndimage.binary_dilation(grown, iterations=2) & ~grown
        a[grown] = float(np.median(a[shell]))
    img = sitk.GetImageFromArray(a)
    img.CopyInformation(pet)
    sitk.WriteImage(img, str(out_file))


def _hidden_dataset(d, work: Path) -> tuple[str, Path]:
    """Raw + preprocessed copy of the tiny dataset with hidden lesions (same plans), and hidden test images."""
    src, new = d.dataset_name, f"Dataset{HIDDEN_ID:03d}_{HIDDEN_NAME}"
    raw, pre = Path(d.env["nnUNet_raw"]), Path(d.env["nnUNet_preprocessed"])
    (raw / new / "imagesTr").mkdir(parents=True, exist_ok=True)
    (raw / new / "labelsTr").mkdir(exist_ok=True)
    shutil.copy2(raw / src / "dataset.json", raw / new / "dataset.json")
    for lab in sorted((raw / src / "labelsTr").glob("*.nii.gz")):
        case = lab.name[: -len(".nii.gz")]
        shutil.copy2(lab, raw / new / "labelsTr" / lab.name)
        shutil.copy2(raw / src / "imagesTr" / f"{case}_0000.nii.gz", raw / new / "imagesTr" / f"{case}_0000.nii.gz")
        hide_lesions(raw / src / "imagesTr" / f"{case}_0001.nii.gz", lab, raw / new / "imagesTr" / f"{case}_0001.nii.gz")
    (pre / new).mkdir(exist_ok=True)
    for f in ("dataset.json", "dataset_fingerprint.json"):
        shutil.copy2(pre / src / f, pre / new / f)
    plans = json.loads((pre / src / "nnUNetPlans.json").read_text())
    plans["dataset_name"] = new
    (pre / new / "nnUNetPlans.json").write_text(json.dumps(plans, indent=2))
    run([cli("nnUNetv2_preprocess"), "-d", str(HIDDEN_ID), "-c", "3d_fullres", "-np", "2"],
        {**d.env, "nnUNet_n_proc_DA": "2"}, timeout=900)
    images = work / "hidden_images"
    images.mkdir()
    for lab in sorted(d.test_labels.glob("*.nii.gz")):
        case = lab.name[: -len(".nii.gz")]
        shutil.copy2(d.test_images / f"{case}_0000.nii.gz", images / f"{case}_0000.nii.gz")
        hide_lesions(d.test_images / f"{case}_0001.nii.gz", lab, images / f"{case}_0001.nii.gz")
    return new, images


@pytest.fixture(scope="session")
def interactive(tiny_dataset, tmp_path_factory) -> Interactive:
    d = tiny_dataset
    name = copy_dataset(d, COPY_ID, COPY_NAME)
    work = tmp_path_factory.mktemp("interactive")
    env = {**d.env, "nnUNet_def_n_proc": "1", "NNUNETV2_PETCT_SEED": "7"}
    foundation = work / "foundation_final.pth"
    pre = Path(d.env["nnUNet_preprocessed"]) / name
    make_foundation_checkpoint(pre, foundation, metadata={"pretraining_data": pretraining_data(["unlabeled_001"])})
    run([cli("nnUNetv2_train"), str(COPY_ID), "3d_fullres", "0", "-tr", FROM_FOUNDATION, "-device", "cpu",
         "-pretrained_weights", str(foundation)], env, timeout=900)
    hidden, hidden_images = _hidden_dataset(d, work)
    run([cli("nnUNetv2_train"), str(HIDDEN_ID), "3d_fullres", "0", "-tr", CLICK_MODEL, "-device", "cpu"],
        {**env, "OMP_NUM_THREADS": "2"}, timeout=1500)
    return Interactive(env, name, hidden, foundation, d.test_images, d.test_labels, hidden_images, work)


def _read(path: Path) -> tuple[np.ndarray, sitk.Image]:
    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img), img


def _one_study(src_images: Path, case: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for i in (0, 1):
        shutil.copy2(src_images / f"{case}_{i:04d}.nii.gz", dest / f"{case}_{i:04d}.nii.gz")
    return dest


def _cases(images: Path) -> list[str]:
    return sorted(p.name[: -len("_0000.nii.gz")] for p in images.glob("*_0000.nii.gz"))


def _lesions(labels: Path, case: str) -> tuple[np.ndarray, int]:
    gt, _ = _read(labels / f"{case}.nii.gz")
    return ndimage.label(gt > 0, structure=np.ones((3, 3, 3)))


def _interior_xyz(component: np.ndarray) -> list[int]:
    z, y, x = np.unravel_index(np.argmax(ndimage.distance_transform_edt(component)), component.shape)
    return [int(x), int(y), int(z)]


# --------------------------------------------------------------------------------------- training
def test_foundation_stem_becomes_four_channels_and_step_zero_is_the_pretrained_network(interactive):
    fold = fold_dir(interactive.env, interactive.dataset_name, FROM_FOUNDATION, 0)
    record = json.loads((fold / "interactive_stem.json").read_text())
    assert record["input_channels_pretrained"] == 2 and record["input_channels_now"] == 4
    assert record["max_abs_output_difference"] <= record["tolerance"] <= 1e-5
    info = json.loads((fold / "pretrained_weights.json").read_text())
    assert info["pretrained_weights_loaded"] is True
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    assert ckpt["trainer_name"] == FROM_FOUNDATION
    stem = [v for k, v in ckpt["network_weights"].items() if k.endswith(".weight") and v.ndim == 5][0]
    assert stem.shape[1] == 4
    # the image slices started from the foundation model: after 4 tiny steps they are still close to it
    found = torch.load(interactive.foundation, map_location="cpu", weights_only=True)["network_weights"]
    first = [v for k, v in found.items() if k.endswith(".weight") and v.ndim == 5][0]
    assert first.shape[1] == 2
    assert float((stem[:, :2] - first).norm() / first.norm()) < 0.5


def test_scratch_interactive_model_trained_and_refuses_pretrained_weights(interactive):
    fold = fold_dir(interactive.env, interactive.hidden_name, CLICK_MODEL, 0)
    assert (fold / "checkpoint_final.pth").is_file()
    assert not (fold / "interactive_stem.json").exists()  # nothing to widen from scratch
    proc = run([cli("nnUNetv2_train"), str(COPY_ID), "3d_fullres", "1", "-tr",
                "nnUNetTrainerPETCTInteractiveScratch_tiny", "-device", "cpu", "-pretrained_weights",
                str(interactive.foundation)], interactive.env, check=False, timeout=600)
    assert proc.returncode != 0
    assert "refuses pretrained weights" in proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------- prediction
def test_stock_nnunetv2_predict_runs_the_interactive_model_without_clicks(interactive, tmp_path):
    out = tmp_path / "stock"
    run([cli("nnUNetv2_predict"), "-i", str(interactive.test_images), "-o", str(out), "-d", str(COPY_ID), "-c",
         "3d_fullres", "-f", "0", "-tr", FROM_FOUNDATION, "-device", "cpu", "--disable_tta", "-npp", "0", "-nps",
         "0"], interactive.env, timeout=600)
    for case in _cases(interactive.test_images):
        pred, pimg = _read(out / f"{case}.nii.gz")
        ref_arr, ref = _read(interactive.test_images / f"{case}_0001.nii.gz")
        assert pred.shape == ref_arr.shape and pimg.GetSpacing() == ref.GetSpacing()


def _predict(interactive, study: Path, out: Path, *extra: str, check: bool = True):
    return run([cli("nnUNetv2_petct_predict"), "-i", str(study), "-o", str(out), "-m", str(interactive.model()),
                "-f", "0", "-device", "cpu", "--disable_tta", "-np", "0", "--min-volume-ml", "0", "-q", *extra],
               interactive.env, check=check, timeout=600)


def test_clicks_move_the_lesion_probability_where_they_are_put(interactive, tmp_path):
    """Session API (what a viewer drives) on a hidden lesion: a tumor click at its interior raises the mean
    lesion probability inside it, above the no-click value and above the same click's effect far away; a
    background click at the same place gives less than the tumor click. Then the same click through
    ``nnUNetv2_petct_predict --clicks`` is recorded in the report."""
    from nnunetv2_petct.interactive.clicks import Clicks
    from nnunetv2_petct.nnunet.interactive_predictor import InteractiveLesionPredictor

    case = _cases(interactive.hidden_images)[0]
    lab, n = _lesions(interactive.test_labels, case)
    lesion = lab == 1 + int(np.argmax(np.bincount(lab.ravel())[1:]))
    xyz = _interior_xyz(lesion)
    model = InteractiveLesionPredictor(interactive.model(), [0], device="cpu", disable_tta=True,
                                       num_processes_preprocessing=0, num_processes_export=0, quiet=True)
    session = model.session([interactive.hidden_images / f"{case}_0000.nii.gz",
                             interactive.hidden_images / f"{case}_0001.nii.gz"])
    _, p0 = session.predict_with_probability()
    _, p_tumor = session.predict_with_probability(Clicks((tuple(xyz),)))
    _, p_background = session.predict_with_probability(Clicks((), (tuple(xyz),)))
    inside0, inside_t, inside_b = (float(p[lesion].mean()) for p in (p0, p_tumor, p_background))
    assert inside_t > inside0 and inside_t > inside_b, (inside0, inside_t, inside_b)
    far = np.zeros_like(lesion)
    far[tuple(slice(0, 4) for _ in range(3))] = True  # a corner block, far from the clicked lesion
    assert inside_t - inside0 > float(p_tumor[far].mean() - p0[far].mean())
    study = _one_study(interactive.hidden_images, case, tmp_path / "in")
    clicks = tmp_path / "clicks.json"
    clicks.write_text(json.dumps({"tumor": [xyz], "background": []}))
    _predict(interactive, study, tmp_path / "out1", "--clicks", str(clicks))
    report = json.loads((tmp_path / "out1" / case / "report.json").read_text())
    assert report["model"]["interactive"]["clicks"][case] == {"tumor": [xyz], "background": []}


def test_zero_clicks_give_the_non_interactive_result_of_the_same_model(interactive, tmp_path):
    case = _cases(interactive.test_images)[0]
    study = _one_study(interactive.test_images, case, tmp_path / "in")
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"tumor": [], "background": []}))
    _predict(interactive, study, tmp_path / "plain")
    _predict(interactive, study, tmp_path / "zero", "--clicks", str(empty))
    a, _ = _read(tmp_path / "plain" / case / "lesions.nii.gz")
    b, _ = _read(tmp_path / "zero" / case / "lesions.nii.gz")
    assert np.array_equal(a, b)


@pytest.mark.parametrize("content,code,expected", [
    ('{"tumor": [[1, 2', 2, "not valid JSON"),
    ('{"tumor": [[-1, 2, 3]], "background": []}', 2, "tumor click 1 [-1, 2, 3]"),
    ('{"tumor": [], "background": [[1.5, 2, 3]]}', 2, "background click 1 [1.5, 2, 3]"),
    ('{"tumor": [[1, 2, 3]], "lesions": []}', 2, "'lesions'"),
    ('{"tumor": [[9999, 2, 3]], "background": []}', 1, "tumor click 1 [9999, 2, 3] is outside the PET image"),
])
def test_bad_click_files_are_named_errors(interactive, tmp_path, content, code, expected):
    case = _cases(interactive.test_images)[0]
    study = _one_study(interactive.test_images, case, tmp_path / "in")
    clicks = tmp_path / "c.json"
    clicks.write_text(content)
    proc = _predict(interactive, study, tmp_path / "out", "--clicks", str(clicks), check=False)
    assert proc.returncode == code, proc.stderr[-2000:]
    assert expected in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / case / "lesions.nii.gz").exists()


def test_clicks_need_an_interactive_model(interactive, tmp_path):
    case = _cases(interactive.test_images)[0]
    study = _one_study(interactive.test_images, case, tmp_path / "in")
    clicks = tmp_path / "c.json"
    clicks.write_text('{"tumor": [[1, 2, 3]]}')
    model = tmp_path / "Dataset571_X" / "nnUNetTrainerPETCT_tiny__nnUNetPlans__3d_fullres"
    shutil.copytree(interactive.model(FROM_FOUNDATION), model)  # the same files under a non-interactive name
    proc = run([cli("nnUNetv2_petct_predict"), "-i", str(study), "-o", str(tmp_path / "o"), "-m", str(model), "-f",
                "0", "-device", "cpu", "--clicks", str(clicks)], interactive.env, check=False)
    assert proc.returncode == 2 and "click-guided model" in proc.stderr


def test_autopet_iv_container_layout(interactive, tmp_path):
    case = _cases(interactive.hidden_images)[0]
    inp, out = tmp_path / "input", tmp_path / "output"
    for kind, i in (("ct", 0), ("pet", 1)):
        (inp / "images" / kind).mkdir(parents=True)
        img = sitk.ReadImage(str(interactive.hidden_images / f"{case}_{i:04d}.nii.gz"))
        sitk.WriteImage(img, str(inp / "images" / kind / "0a1b2c3d-uuid.mha"))
    lab, _ = _lesions(interactive.test_labels, case)
    lesion = lab == 1 + int(np.argmax(np.bincount(lab.ravel())[1:]))
    (inp / "lesion-clicks.json").write_text(json.dumps({
        "version": {"major": 1, "minor": 0}, "type": "Multiple points",
        "points": [{"point": _interior_xyz(lesion), "name": "tumor"}, {"point": [0, 0, 0], "name": "background"}]}))
    proc = run([cli("nnUNetv2_petct_predict"), "--autopet-iv", "-i", str(inp), "-o", str(out), "-m",
                str(interactive.model()), "-f", "0", "-device", "cpu", "--disable_tta", "-q"], interactive.env)
    mask_file = out / "images" / "tumor-lesion-segmentation" / "0a1b2c3d-uuid.mha"
    assert mask_file.is_file(), proc.stdout
    mask, mimg = _read(mask_file)
    pet = sitk.ReadImage(str(interactive.hidden_images / f"{case}_0001.nii.gz"))
    assert mask.shape == lesion.shape and mimg.GetSpacing() == pet.GetSpacing() and mimg.GetOrigin() == pet.GetOrigin()
    assert set(np.unique(mask)) <= {0, 1}
    (inp / "lesion-clicks.json").write_text(json.dumps({"points": [{"point": [1, 2, 3], "name": "lesion"}]}))
    bad = run([cli("nnUNetv2_petct_predict"), "--autopet-iv", "-i", str(inp), "-o", str(tmp_path / "o2"), "-m",
               str(interactive.model()), "-f", "0", "-device", "cpu"], interactive.env, check=False)
    assert bad.returncode == 2 and "'lesion'" in bad.stderr


def test_evaluate_interactive_protocol_with_the_model(interactive, tmp_path):
    out = tmp_path / "eval"
    proc = run([cli("nnUNetv2_petct_evaluate_interactive"), "-i", str(interactive.hidden_images), "-l",
                str(interactive.test_labels), "-o", str(out), "-m", str(interactive.model()), "-f", "0",
                "-device", "cpu", "--disable_tta", "--n-clicks", "3", "-q"], interactive.env)
    cases = _cases(interactive.hidden_images)
    for case in cases:
        for k in range(4):
            assert (out / "predictions" / f"{case}_pred{k}.nii.gz").is_file()
        clicks = json.loads((out / "clicks" / f"{case}.json").read_text())
        assert 1 <= len(clicks["tumor"]) <= 3 and len(clicks["background"]) <= 3
    summary = json.loads((out / "interactive_summary.json").read_text())
    assert summary["n_cases"] == len(cases) and summary["n_clicks"] == 3
    assert summary["seconds_per_click_mean"] > 0
    # hidden lesions: the model finds nothing without a click; the error-driven rule then clicks each lesion
    assert summary["summary"]["dice_0"]["mean"] < 0.05
    # the CSV's numbers are the protocol's numbers of the written predictions (rescored independently)
    preds = tmp_path / "preds"
    shutil.copytree(out / "predictions", preds)
    run([cli("nnUNetv2_petct_evaluate_interactive"), "--predictions", str(preds), "-l", str(interactive.test_labels),
         "-o", str(tmp_path / "rescored"), "--n-clicks", "3", "-q"], interactive.env)
    a = (out / "interactive.csv").read_text().splitlines()
    b = (tmp_path / "rescored" / "interactive.csv").read_text().splitlines()
    assert [line.split(",")[:7] for line in a] == [line.split(",")[:7] for line in b]
    assert "dice_auc" in proc.stdout
