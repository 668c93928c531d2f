"""The lesion DICOM-SEG: geometry and references of the PET series, coding, read back by three readers."""

from __future__ import annotations

import copy
import random

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from nnunetv2_petct.conversion.dicom import find_dicom_studies, load_dicom_seg, load_dicom_study
from nnunetv2_petct.conversion.dicom_seg import SegAlgorithm, SegWriteError, read_lesion_seg, write_lesion_seg
from nnunetv2_petct.phantoms.dicom_writer import write_dicom_study

ALGO = SegAlgorithm("nnUNetTrainerPETCT_tiny", "nnunetv2_petct 0.1.0, nnunetv2 2.8.1",
                    {"model": "Dataset501_X/nnUNetTrainerPETCT_tiny__nnUNetPlans__3d_fullres", "folds": "0"})


def _load(folder):
    study = find_dicom_studies(folder)[0]
    _, pet, _ = load_dicom_study(study)
    return study, pet


def _mask_like(pet, arr):
    m = sitk.GetImageFromArray(np.asarray(arr, dtype=np.uint8))
    m.CopyInformation(pet)
    return m


def _raw_frames_by_source(ds) -> dict[str, np.ndarray]:
    """pydicom only (no highdicom): every frame's pixels keyed by the SOPInstanceUID of its source PET slice."""
    frames = ds.pixel_array
    if frames.ndim == 2:
        frames = frames[None]
    out = {}
    for item, frame in zip(ds.PerFrameFunctionalGroupsSequence, frames):
        src = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        out[str(src)] = frame
    return out


def _oblique(case):
    """The phantom with a 30 degree in-plane rotation and non-square slices (40 x 34 voxels): a swap of rows and
    columns or a wrong slice order in the SEG cannot go unnoticed."""
    a = np.deg2rad(30.0)
    d = (np.cos(a), -np.sin(a), 0.0, np.sin(a), np.cos(a), 0.0, 0.0, 0.0, 1.0)
    c = copy.copy(case)
    for name in ("ct", "pet", "label"):
        img = getattr(case, name)
        img = sitk.Image(img[:, 3:img.GetSize()[1] - 3, :])
        img.SetDirection(d)
        setattr(c, name, img)
    return c


@pytest.mark.parametrize("oblique", [False, True])
def test_seg_matches_the_pet_series_and_reads_back_exactly(lesion_case, tmp_path, oblique):
    case = _oblique(lesion_case) if oblique else lesion_case
    w = write_dicom_study(case, tmp_path / "dicom", vendor="SIEMENS", seed=3)
    study, pet = _load(tmp_path / "dicom")
    label = sitk.GetArrayFromImage(case.label)
    assert label.sum() > 10
    assert (label.shape[1] != label.shape[2]) == oblique
    files = list(study.pt.files)
    random.Random(0).shuffle(files)  # the writer sorts the headers itself
    info = write_lesion_seg(_mask_like(pet, label), files, tmp_path / "seg.dcm", ALGO)
    assert not info["empty"] and info["n_frames"] == int((label.reshape(label.shape[0], -1).any(axis=1)).sum())

    # highdicom reader, in PET slice order
    np.testing.assert_array_equal(read_lesion_seg(tmp_path / "seg.dcm", files), label)
    # the package's own SEG reader (placement by ImagePositionPatient), independent of highdicom
    np.testing.assert_array_equal(sitk.GetArrayFromImage(load_dicom_seg(tmp_path / "seg.dcm", pet)), label)

    # raw attributes with pydicom
    ds = pydicom.dcmread(tmp_path / "seg.dcm")
    pt0 = pydicom.dcmread(w.pt_files[0], stop_before_pixels=True)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and ds.Modality == "SEG"
    assert ds.SegmentationType == "BINARY"
    assert ds.FrameOfReferenceUID == w.frame_of_reference_uid
    for kw in ("PatientID", "PatientName", "StudyInstanceUID", "StudyDate", "StudyID", "PatientWeight", "PatientSize"):
        assert ds.get(kw) == pt0.get(kw), kw
    assert ds.SeriesInstanceUID not in (w.pt_series_uid, w.ct_series_uid)
    ref = ds.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == w.pt_series_uid
    pet_uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in w.pt_files}
    assert {str(i.ReferencedSOPInstanceUID) for i in ref.ReferencedInstanceSequence} == pet_uids
    seg = ds.SegmentSequence[0]
    assert seg.SegmentLabel == "lesion" and seg.SegmentAlgorithmType == "AUTOMATIC"
    assert (seg.SegmentedPropertyTypeCodeSequence[0].CodeValue,
            seg.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator) == ("108369006", "SCT")
    assert seg.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    algo = seg.SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmName == "nnUNetTrainerPETCT_tiny" and "nnunetv2 2.8.1" in algo.AlgorithmVersion
    assert "Dataset501_X/nnUNetTrainerPETCT_tiny__nnUNetPlans__3d_fullres" in algo.AlgorithmParameters

    # every frame lies on its source PET slice (position, orientation, spacing) and holds that slice's mask
    pet_by_uid = {}
    for f in w.pt_files:
        h = pydicom.dcmread(f, stop_before_pixels=True)
        pet_by_uid[str(h.SOPInstanceUID)] = h
    shared = ds.SharedFunctionalGroupsSequence[0]
    np.testing.assert_allclose([float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient],
                               [float(v) for v in pt0.ImageOrientationPatient], atol=1e-6)
    np.testing.assert_allclose([float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing],
                               [float(v) for v in pt0.PixelSpacing], atol=1e-6)
    assert (ds.Rows, ds.Columns) == (pt0.Rows, pt0.Columns)
    order = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in study.pt.files]
    raw = _raw_frames_by_source(ds)
    for item in ds.PerFrameFunctionalGroupsSequence:
        src = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        np.testing.assert_allclose([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient],
                                   [float(v) for v in pet_by_uid[src].ImagePositionPatient], atol=1e-3)
    back = np.stack([raw.get(uid, np.zeros(label.shape[1:], np.uint8)) for uid in order])
    np.testing.assert_array_equal(back, label)


def test_empty_mask_gives_a_valid_seg_saying_no_lesion(lesion_case, tmp_path):
    write_dicom_study(lesion_case, tmp_path / "dicom", vendor="GE", seed=4)
    study, pet = _load(tmp_path / "dicom")
    empty = np.zeros(sitk.GetArrayFromImage(pet).shape, np.uint8)
    info = write_lesion_seg(_mask_like(pet, empty), study.pt.files, tmp_path / "seg.dcm", ALGO)
    assert info["empty"] and info["n_frames"] == empty.shape[0]
    ds = pydicom.dcmread(tmp_path / "seg.dcm")
    assert "no lesion found" in ds.ContentDescription
    assert not ds.pixel_array.any()
    assert not read_lesion_seg(tmp_path / "seg.dcm", study.pt.files).any()


def test_a_mask_off_the_pet_grid_is_refused(lesion_case, tmp_path):
    write_dicom_study(lesion_case, tmp_path / "dicom", vendor="SIEMENS", seed=5)
    study, pet = _load(tmp_path / "dicom")
    shifted = _mask_like(pet, sitk.GetArrayFromImage(lesion_case.label))
    shifted.SetOrigin(tuple(o + 3.0 for o in pet.GetOrigin()))
    with pytest.raises(SegWriteError, match="not on the PET series' grid"):
        write_lesion_seg(shifted, study.pt.files, tmp_path / "seg.dcm", ALGO)
    assert not (tmp_path / "seg.dcm").exists()
