"""DICOM PET/CT discovery, loading (HU, SUVbw, geometry) and DICOM-SEG, on phantoms written as DICOM."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from nnunetv2_petct.conversion.dicom import (
    DicomStudyError,
    NonFDGTracerError,
    find_dicom_studies,
    load_dicom_seg,
    load_dicom_study,
)
from nnunetv2_petct.phantoms import make_phantom
from nnunetv2_petct.phantoms.dicom_writer import write_dicom_study

HALF_LIFE_S = 6586.2


@pytest.fixture(scope="module")
def case():
    # seed 1, tiny: 2 lesions (label has 2 connected components -> 2 SEG segments)
    return make_phantom(1, "tiny")


def _arr(img) -> np.ndarray:
    return sitk.GetArrayFromImage(img)


def _edit(paths, fn) -> None:
    for p in paths:
        ds = pydicom.dcmread(p)
        fn(ds)
        ds.save_as(p)


def _assert_same_grid(a, b, atol=1e-4):
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=atol)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=atol)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


def _max_quantization_error(suv: np.ndarray, levels: float) -> np.ndarray:
    """Per-slice bound: the writer scales each slice so its maximum uses ``levels`` steps, so the
    rounding error is at most half a step = slice max / (2 * levels) (plus float32 rounding)."""
    return suv.reshape(suv.shape[0], -1).max(axis=1) / (2 * levels) + 1e-6 * suv.max() + 1e-7


@pytest.mark.parametrize("vendor", ["SIEMENS", "GE", "PHILIPS_CNTS"])
def test_round_trip_per_vendor(case, vendor, tmp_path):
    w = write_dicom_study(case, tmp_path, vendor=vendor, seed=3)
    studies = find_dicom_studies(tmp_path)
    assert len(studies) == 1
    st = studies[0]
    assert st.ok and st.problems == []
    assert st.ct.series_uid == w.ct_series_uid and st.pt.series_uid == w.pt_series_uid
    ct, pet, meta = load_dicom_study(st)

    # CT: HU exactly (integers stored with slope 1 and an integer intercept), on the CT's own grid
    _assert_same_grid(ct, case.ct)
    np.testing.assert_array_equal(_arr(ct), _arr(case.ct))

    # PET: SUV within the per-slice quantization of the stored pixels, on the PET grid
    _assert_same_grid(pet, case.pet)
    ref = _arr(case.pet).astype(np.float64)
    assert _arr(pet).dtype == np.float32
    got = _arr(pet).astype(np.float64)
    levels = 65535.0 if vendor == "PHILIPS_CNTS" else 32767.0  # uint16 (Philips) / int16
    err = np.abs(got - ref).reshape(ref.shape[0], -1).max(axis=1)
    assert np.all(err <= _max_quantization_error(ref, levels))

    # The SUV factor, by hand from the acquisition facts the writer chose:
    # BQML: weight_g / (dose * 2^(-uptake / T1/2)); Philips: ACSF x the same (= SUVScaleFactor).
    bqml = w.weight_kg * 1000.0 / (w.injected_dose_bq * 2.0 ** (-w.uptake_time_s / HALF_LIFE_S))
    if vendor == "PHILIPS_CNTS":
        assert meta["units"] == "CNTS"
        assert meta["suv"]["factor"] == pytest.approx(w.activity_concentration_scale_factor * bqml, rel=1e-8)
    else:
        assert meta["units"] == "BQML"
        assert meta["suv"]["factor"] == pytest.approx(bqml, rel=1e-9)
        assert meta["suv"]["uptake_time_s"] == pytest.approx(w.uptake_time_s)
        assert 55 * 60 <= meta["suv"]["uptake_time_s"] <= 70 * 60
    assert meta["tracer"] == "FDG"
    assert meta["vendor"].upper().startswith(vendor.split("_")[0][:2])
    assert meta["frame_of_reference_match"] is True
    assert meta["pet_spacing_mm"] == pytest.approx([8.0, 6.0, 6.0])


def test_philips_activity_concentration_fallback(case, tmp_path):
    # Without (7053,1000) the reader must use ACSF (7053,1009) x weight / decayed dose (scan time =
    # SeriesTime, which is before the first AcquisitionTime on Philips) and get the same SUV.
    w = write_dicom_study(case, tmp_path, vendor="PHILIPS_CNTS", seed=4)

    def drop_suv_factor(ds):
        del ds[0x70531000]

    _edit(w.pt_files, drop_suv_factor)
    st = find_dicom_studies(tmp_path)[0]
    _, pet, meta = load_dicom_study(st)
    assert "7053,1009" in meta["suv"]["method"]
    assert meta["suv"]["scan_time_source"] == "SeriesDateTime"
    ref = _arr(case.pet).astype(np.float64)
    err = np.abs(_arr(pet) - ref).reshape(ref.shape[0], -1).max(axis=1)
    assert np.all(err <= _max_quantization_error(ref, 65535.0) + 1e-6 * ref.max())


def _reoriented(case, direction, spacing_scale=(1.0, 1.0, 1.0), crop_y=0):
    """Copy of the phantom whose CT, PET and label carry another direction matrix (same origin),
    optionally with (x, y, z) spacings scaled and ``crop_y`` rows cut off at each y end."""
    c = copy.copy(case)
    for name in ("ct", "pet", "label"):
        img = getattr(case, name)
        if crop_y:
            img = img[:, crop_y:img.GetSize()[1] - crop_y, :]
        img = sitk.Image(img)
        img.SetDirection(direction)
        img.SetSpacing(tuple(s * f for s, f in zip(img.GetSpacing(), spacing_scale)))
        setattr(c, name, img)
    return c


def test_geometry_feet_first_slices_are_reversed(case, tmp_path):
    # Slice axis pointing to -z (det -1): the reader sorts along the normal row x col = +z, so the
    # volume comes back with the slices reversed and origin at the last written slice, i.e. the same
    # voxels at the same physical positions.
    c = _reoriented(case, (1, 0, 0, 0, 1, 0, 0, 0, -1))
    write_dicom_study(c, tmp_path, vendor="GE", seed=5)
    ct, pet, _ = load_dicom_study(find_dicom_studies(tmp_path)[0])
    nz, dz = c.pet.GetSize()[2], c.pet.GetSpacing()[2]
    np.testing.assert_allclose(pet.GetDirection(), (1, 0, 0, 0, 1, 0, 0, 0, 1), atol=1e-9)
    ox, oy, oz = c.pet.GetOrigin()
    np.testing.assert_allclose(pet.GetOrigin(), (ox, oy, oz - (nz - 1) * dz), atol=1e-4)
    np.testing.assert_array_equal(_arr(ct), _arr(c.ct)[::-1])
    # physical check: voxel (x=3, y=4, z=0) of the original is voxel (3, 4, nz-1) of the loaded PET
    p = c.pet.TransformIndexToPhysicalPoint((3, 4, 0))
    assert pet.TransformPhysicalPointToIndex(p) == (3, 4, nz - 1)
    assert pet[3, 4, nz - 1] == pytest.approx(c.pet[3, 4, 0], abs=2e-3)


def test_geometry_oblique_orientation(case, tmp_path):
    # Rotated 30 degrees about z: row direction (cos, sin, 0), column (-sin, cos, 0).
    a = np.deg2rad(30.0)
    d = (np.cos(a), -np.sin(a), 0.0, np.sin(a), np.cos(a), 0.0, 0.0, 0.0, 1.0)
    # Non-square slices (x 40, y 34 on the PET) with different x and y spacings (6 x 5 mm PET), so a
    # swap of Rows/Columns or of the two PixelSpacing values cannot go unnoticed.
    c = _reoriented(case, d, spacing_scale=(1.0, 5.0 / 6.0, 1.0), crop_y=3)
    assert c.pet.GetSize()[:2] == (40, 34) and c.pet.GetSpacing()[:2] == pytest.approx((6.0, 5.0))
    w = write_dicom_study(c, tmp_path, vendor="SIEMENS", seed=6, with_seg=True)
    ct, pet, _ = load_dicom_study(find_dicom_studies(tmp_path)[0])
    _assert_same_grid(pet, c.pet)
    _assert_same_grid(ct, c.ct)
    np.testing.assert_array_equal(_arr(ct), _arr(c.ct))
    np.testing.assert_allclose(_arr(pet), _arr(c.pet), atol=float(_arr(c.pet).max()) / 32767)
    np.testing.assert_array_equal(_arr(load_dicom_seg(w.seg_path, pet)), _arr(c.label))


def test_discovery_mixed_folder(case, tmp_path):
    # Study A (SIEMENS, flat in the root), study B (GE, nested two levels down), study C whose PT
    # files were removed, plus a non-DICOM file and a CT localizer series in study A.
    other = make_phantom(2, "tiny", case_id="phantom_2b")
    third = make_phantom(5, "tiny", case_id="phantom_5c")
    wa = write_dicom_study(case, tmp_path, vendor="SIEMENS", seed=1)
    wb = write_dicom_study(other, tmp_path / "x" / "y", vendor="GE", seed=2)
    wc = write_dicom_study(third, tmp_path, vendor="PHILIPS_CNTS", seed=3)
    for p in wc.pt_files:
        p.unlink()
    (tmp_path / "README.txt").write_text("not DICOM")
    loc = pydicom.dcmread(wa.ct_files[0])
    loc.SeriesInstanceUID = pydicom.uid.generate_uid()
    loc.SOPInstanceUID = pydicom.uid.generate_uid()
    loc.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    loc.save_as(tmp_path / "x" / "scout")

    studies = {s.study_uid: s for s in find_dicom_studies(tmp_path)}
    assert set(studies) == {wa.study_uid, wb.study_uid, wc.study_uid}
    a, b, c = studies[wa.study_uid], studies[wb.study_uid], studies[wc.study_uid]
    assert a.ok and b.ok and not c.ok
    assert (a.ct.series_uid, a.pt.series_uid) == (wa.ct_series_uid, wa.pt_series_uid)
    assert (b.ct.series_uid, b.pt.series_uid) == (wb.ct_series_uid, wb.pt_series_uid)
    assert sorted(a.pt.files) == sorted(wa.pt_files) and len(a.ct.files) == len(wa.ct_files)
    assert any("LOCALIZER" in n for n in a.notes)  # the scout was set aside, not counted as a 2nd CT
    assert b.root == tmp_path / "x" / "y"
    assert c.ct is not None and c.pt is None
    assert len(c.problems) == 1 and "PET" in c.problems[0]
    with pytest.raises(DicomStudyError, match="PET"):
        load_dicom_study(c)
    # PT files sorted along the normal (z up), although InstanceNumber runs head to feet
    z = [float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in a.pt.files]
    assert z == sorted(z)


def test_two_equal_pet_series_are_chosen_by_uid_and_selectable(case, tmp_path):
    # Two attenuation-corrected PET series that rank equal on every criterion (same extent, same
    # acquisition, same voxels): the lowest SeriesInstanceUID is chosen, the other is recorded with the
    # reason, a warning names --pet-series, and DicomStudy.select still overrides the choice.
    w = write_dicom_study(case, tmp_path, vendor="SIEMENS", seed=7)
    new_series = pydicom.uid.generate_uid()
    for p in w.pt_files:
        ds = pydicom.dcmread(p)
        ds.SeriesInstanceUID = new_series
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.SeriesDescription = "PET WB AC (copy)"
        ds.save_as(tmp_path / f"copy_{p.name}")
    st = find_dicom_studies(tmp_path)[0]
    first, second = sorted([w.pt_series_uid, new_series])
    assert st.ok and st.pt.series_uid == first
    rec = {s["series_uid"]: s for s in st.selection["PT"]["series"]}
    assert rec[second]["status"] == "not chosen" and "SeriesInstanceUID sorts first" in rec[second]["reason"]
    _, _, meta = load_dicom_study(st)
    assert any("--pet-series" in w_ for w_ in meta["warnings"])
    st.select(pt_series_uid=second)
    assert st.ok and st.pt.series_uid == second
    _, pet, meta = load_dicom_study(st)
    assert meta["pt_series_uid"] == second and meta["series_selection"]["PT"]["chosen"] == second
    _assert_same_grid(pet, case.pet)


def test_irregular_slices_are_reported(case, tmp_path):
    # a missing CT slice -> non-uniform spacing; a duplicated PT slice -> repeated positions
    w = write_dicom_study(case, tmp_path, vendor="GE", seed=8)
    w.ct_files[10].unlink()
    ds = pydicom.dcmread(w.pt_files[5])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "duplicate")
    st = find_dicom_studies(tmp_path)[0]
    text = " | ".join(st.problems)
    assert "non-uniform slice spacing" in text
    assert "distinct positions" in text
    with pytest.raises(DicomStudyError):
        load_dicom_study(st)


def test_missing_weight_is_named(case, tmp_path):
    w = write_dicom_study(case, tmp_path, vendor="SIEMENS", seed=9)

    def drop_weight(ds):
        del ds.PatientWeight

    _edit(w.pt_files, drop_weight)
    with pytest.raises(DicomStudyError, match="PatientWeight"):
        load_dicom_study(find_dicom_studies(tmp_path)[0])


def test_non_fdg_is_refused_unless_allowed(case, tmp_path):
    write_dicom_study(case, tmp_path, vendor="GE", seed=10, radiopharmaceutical="PSMA-1007")
    st = find_dicom_studies(tmp_path)[0]
    with pytest.raises(NonFDGTracerError, match="PSMA-1007"):
        load_dicom_study(st)
    _, pet, meta = load_dicom_study(st, allow_non_fdg=True)
    assert meta["tracer"] == "PSMA-1007"
    assert any("non-FDG" in w for w in meta["warnings"])


def test_unnamed_f18_tracer_is_assumed_fdg(case, tmp_path):
    w = write_dicom_study(case, tmp_path, vendor="SIEMENS", seed=11)

    def unname(ds):
        item = ds.RadiopharmaceuticalInformationSequence[0]
        del item.Radiopharmaceutical
        del item.RadiopharmaceuticalCodeSequence

    _edit(w.pt_files, unname)
    st = find_dicom_studies(tmp_path)[0]
    _, _, meta = load_dicom_study(st)
    assert meta["tracer"] == "FDG"
    assert any("assumed FDG" in a for a in meta["assumptions"])
    with pytest.raises(NonFDGTracerError):
        load_dicom_study(st, assume_fdg_if_unnamed=False)


def test_seg_round_trip(case, tmp_path):
    w = write_dicom_study(case, tmp_path, vendor="SIEMENS", seed=12, with_seg=True)
    st = find_dicom_studies(tmp_path)[0]
    assert st.seg_paths == [w.seg_path]
    seg = pydicom.dcmread(w.seg_path)
    assert len(seg.SegmentSequence) == 2  # two lesions -> two segments, merged by the reader
    labelled_slices = int(np.count_nonzero(_arr(case.label).reshape(_arr(case.label).shape[0], -1).any(1)))
    assert int(seg.NumberOfFrames) >= labelled_slices
    _, pet, _ = load_dicom_study(st)
    lab = load_dicom_seg(w.seg_path, pet)
    _assert_same_grid(lab, case.label)
    assert lab.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(_arr(lab), (_arr(case.label) > 0).astype(np.uint8))
    # one segment only -> a strict, non-empty subset of the mask
    one = _arr(load_dicom_seg(w.seg_path, pet, segment_numbers=[1]))
    assert 0 < one.sum() < _arr(case.label).sum() and np.all(one <= _arr(case.label))


def test_seg_onto_cropped_reference_uses_physical_positions(case, tmp_path):
    w = write_dicom_study(case, tmp_path, vendor="GE", seed=13, with_seg=True)
    ref = case.pet[4:36, 2:38, 3:30]  # sitk slicing is (x, y, z); origin moves with the crop
    lab = load_dicom_seg(w.seg_path, ref)
    expected = (_arr(case.label)[3:30, 2:38, 4:36] > 0).astype(np.uint8)
    np.testing.assert_array_equal(_arr(lab), expected)


def test_seg_skipped_for_empty_label(tmp_path):
    empty = make_phantom(3, "tiny", lesion_free=True)
    w = write_dicom_study(empty, tmp_path, vendor="SIEMENS", with_seg=True)
    assert w.seg_path is None
    assert find_dicom_studies(tmp_path)[0].seg_paths == []


def test_find_in_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        find_dicom_studies(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("no DICOM here")
    assert find_dicom_studies(tmp_path) == []


def test_real_pet_slices(tmp_path):
    # The two real single-slice PT files: discovery finds two studies (different StudyInstanceUIDs),
    # sets each PT series aside (1 slice, not a volume) and reports the missing CT.
    src = Path(__file__).resolve().parents[1] / "data" / "pet_dicom"
    if not src.is_dir():
        pytest.fail(f"test data {src} not found")
    studies = find_dicom_studies(src)
    assert len(studies) == 2
    for st in studies:
        assert st.ct is None and st.pt is None
        assert any("no usable CT" in p for p in st.problems)
        assert any("only 1 slice" in n for n in st.notes)
    # The PET loader itself on the whole-body slice: geometry straight from the header and SUV =
    # stored * RescaleSlope 9.12329 * 69734.4 g / (178340011.59668 Bq * 2^(-3976.921 s / 6586.2 s)).
    from nnunetv2_petct.conversion.dicom import load_pet_series

    (wb,) = [s for st in studies for s in st.series if s.files[0].name.startswith("acrin_flt_breast_whole")]
    pet, facts = load_pet_series(wb)
    assert pet.GetSize() == (168, 168, 1)
    np.testing.assert_allclose(pet.GetOrigin(), (-342.11083849009, -528.74934994385, -278.5), atol=1e-6)
    np.testing.assert_allclose(pet.GetSpacing(), (4.07283, 4.07283, 5.0), atol=1e-9)  # z: SliceThickness
    factor = 69734.4 / (178340011.59668 * 2.0 ** (-3976.921 / 6586.2))
    assert facts["suv"]["factor"] == pytest.approx(factor, rel=1e-9)
    assert float(_arr(pet).max()) == pytest.approx(1327 * 9.12329 * factor, rel=1e-5)
