"""nnUNetv2_petct_predict end to end with a `_tiny` model trained by the stock nnUNetv2_train: DICOM studies in,
masks, DICOM-SEGs and reports out; NIfTI pairs in, exactly the stock nnUNetv2_predict segmentation out."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from nnunetv2_petct.conversion.dicom import find_dicom_studies, load_dicom_study
from nnunetv2_petct.conversion.dicom_seg import read_lesion_seg
from nnunetv2_petct.evaluation.html_report import RESEARCH_USE_LINE
from nnunetv2_petct.phantoms import make_phantom
from nnunetv2_petct.phantoms.dicom_writer import write_dicom_study
from tests.conftest import cli, run

pytestmark = pytest.mark.slow

TRAINER = "nnUNetTrainerPETCT_tiny"


@pytest.fixture(scope="module")
def tiny_model(tiny_dataset, tmp_path_factory):
    """nnUNetTrainerPETCT_tiny, fold 0, trained into this module's own nnUNet_results (other tests train the
    same trainer into the shared one)."""
    d = tiny_dataset
    results = tmp_path_factory.mktemp("clinical_results")
    env = {**d.env, "nnUNet_results": str(results)}
    run([cli("nnUNetv2_train"), str(d.dataset_id), "3d_fullres", "0", "-tr", TRAINER, "-device", "cpu"], env,
        timeout=900)
    folder = results / d.dataset_name / f"{TRAINER}__nnUNetPlans__3d_fullres"
    assert (folder / "fold_0" / "checkpoint_final.pth").is_file()
    return env, folder


def _predict_args(d, inp: Path, out: Path) -> list[str]:
    return [cli("nnUNetv2_petct_predict"), "-i", str(inp), "-o", str(out), "-d", str(d.dataset_id), "-c", "3d_fullres",
            "-f", "0", "-tr", TRAINER, "-device", "cpu", "--disable_tta", "-npp", "0", "-nps", "0"]


def test_dicom_studies_to_mask_seg_and_report(tiny_dataset, tiny_model, tmp_path):
    env, model_folder = tiny_model
    src = tmp_path / "dicom"
    written = {}
    for seed, vendor, pid in ((21, "SIEMENS", "E2E1"), (22, "PHILIPS_CNTS", "E2E2")):
        case = make_phantom(seed, "tiny", lesion_free=False, patient_id=pid)
        written[f"{pid}_20200101"] = write_dicom_study(case, src / pid, vendor=vendor, seed=seed)
    out = tmp_path / "out"
    proc = run(_predict_args(tiny_dataset, src, out) + ["--min-volume-ml", "0"], env, timeout=900)
    assert "2 studies: 2 done" in proc.stdout
    with open(out / "summary.csv", newline="") as f:
        rows = {r["study"]: r for r in csv.DictReader(f)}
    assert set(rows) == set(written) and all(r["status"] == "done" for r in rows.values())
    for name, w in written.items():
        folder = out / name
        mask_img = sitk.ReadImage(str(folder / "lesions.nii.gz"))
        mask = sitk.GetArrayFromImage(mask_img)
        assert set(np.unique(mask)) <= {0, 1}
        # the mask is on the PET grid as the DICOM reader builds it
        _, pet, _ = load_dicom_study(find_dicom_studies(src / name.split("_")[0])[0])
        assert mask_img.GetSize() == pet.GetSize()
        np.testing.assert_allclose(mask_img.GetOrigin(), pet.GetOrigin(), atol=1e-3)
        np.testing.assert_allclose(mask_img.GetSpacing(), pet.GetSpacing(), atol=1e-5)
        # the SEG: same frame of reference and PET series, frames on the PET slices; read back == mask
        ds = pydicom.dcmread(folder / "lesions_seg.dcm")
        assert ds.FrameOfReferenceUID == w.frame_of_reference_uid
        assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == w.pt_series_uid
        assert len(ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == len(w.pt_files)
        assert (ds.Rows, ds.Columns) == (mask.shape[1], mask.shape[2])
        np.testing.assert_array_equal(read_lesion_seg(folder / "lesions_seg.dcm", w.pt_files), mask)
        positions = {}
        for f in w.pt_files:
            h = pydicom.dcmread(f, stop_before_pixels=True)
            positions[str(h.SOPInstanceUID)] = [float(v) for v in h.ImagePositionPatient]
        frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
        total = 0
        for item, frame in zip(ds.PerFrameFunctionalGroupsSequence, frames):
            src_uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
            ipp = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
            np.testing.assert_allclose(ipp, positions[src_uid], atol=1e-3)
            k = pet.TransformPhysicalPointToIndex(ipp)[2]
            np.testing.assert_array_equal(frame, mask[k])
            total += int(frame.sum())
        assert total == int(mask.sum())
        algo = ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
        assert algo.AlgorithmName == TRAINER
        assert f"{tiny_dataset.dataset_name}/{model_folder.name}" in algo.AlgorithmParameters
        # the report: model identification, SUV record, lesion numbers consistent with the mask
        report = json.loads((folder / "report.json").read_text())
        assert report["model"]["trainer"] == TRAINER and report["model"]["folds"] == ["0"]
        assert report["model"]["checkpoint"] == "checkpoint_final.pth"
        assert report["model"]["model_folder"] == str(model_folder)
        assert report["suv"]["factor"] == pytest.approx(w.suv_factor, rel=1e-6)
        assert report["software"]["nnunetv2"].startswith("2.8")
        assert report["totals"]["lesion_count"] == len(report["lesions"])
        vox_ml = float(np.prod(pet.GetSpacing())) / 1000.0
        assert report["totals"]["tmtv_ml"] == pytest.approx(mask.sum() * vox_ml)
        assert RESEARCH_USE_LINE in (folder / "report.html").read_text()


def test_nifti_pairs_give_exactly_the_stock_nnunet_prediction(tiny_dataset, tiny_model, tmp_path):
    env, _ = tiny_model
    d = tiny_dataset
    ours = tmp_path / "ours"
    run(_predict_args(d, d.test_images, ours) + ["--min-volume-ml", "0", "-q"], env, timeout=900)
    stock = tmp_path / "stock"
    run([cli("nnUNetv2_predict"), "-i", str(d.test_images), "-o", str(stock), "-d", str(d.dataset_id), "-c",
         "3d_fullres", "-f", "0", "-tr", TRAINER, "-device", "cpu", "--disable_tta", "-npp", "0", "-nps", "0"], env,
        timeout=900)
    cases = sorted(p.name[: -len("_0000.nii.gz")] for p in d.test_images.glob("*_0000.nii.gz"))
    assert cases
    for case in cases:
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(ours / case / "lesions.nii.gz")))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(stock / f"{case}.nii.gz")))
        np.testing.assert_array_equal(a, (b > 0).astype(np.uint8))
        assert not (ours / case / "lesions_seg.dcm").exists()
