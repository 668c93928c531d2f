"""Which CT and PET series a DICOM study is converted from (issue 17): by what the data is, with a
documented ranking, user choice by UID/description, and every decision recorded; non-image objects
counted, not silently dropped. Library calls on phantom studies (the CLI path is in
test_dicom_real_world.py)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from nnunetv2_petct.conversion.dicom import (
    choose_series,
    find_dicom_studies,
    load_dicom_study,
    scan_dicom_folder,
)
from nnunetv2_petct.phantoms import make_phantom
from nnunetv2_petct.phantoms.dicom_writer import ExtraCTSeries, write_dicom_study


@pytest.fixture(scope="module")
def case():
    return make_phantom(1, "tiny")


def _arr(img) -> np.ndarray:
    return sitk.GetArrayFromImage(img)


def _edit(paths, fn) -> None:
    for p in paths:
        ds = pydicom.dcmread(p)
        fn(ds)
        ds.save_as(p)


def _set_series_uid(paths, uid: str) -> None:
    """Give a series a chosen SeriesInstanceUID (e.g. one that sorts first, so that only the criterion
    under test can make it lose)."""
    def fn(ds):
        ds.SeriesInstanceUID = uid
    _edit(paths, fn)


def _z_range_from_files(paths) -> tuple[float, float]:
    """Axial extent by hand: slice centres (ImagePositionPatient z) +- half the slice spacing."""
    z = sorted(float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in paths)
    dz = z[1] - z[0]
    return z[0] - dz / 2, z[-1] + dz / 2


def _by_uid(study, modality: str) -> dict:
    return {s["series_uid"]: s for s in study.selection[modality]["series"]}


# ---------------------------------------------------------------------------------------- CT


def test_derived_secondary_ct_is_used(case, tmp_path):
    # The real study's CT: ImageType DERIVED\SECONDARY\AXIAL, a genuine CT Image Storage volume.
    w = write_dicom_study(case, tmp_path, vendor="PHILIPS_CNTS", seed=1,
                          ct_image_type=("DERIVED", "SECONDARY", "AXIAL"))
    st = find_dicom_studies(tmp_path)[0]
    assert st.ok, st.problems
    assert st.ct.series_uid == w.ct_series_uid
    assert st.selection["CT"]["how"] == "the only qualifying series"
    assert _by_uid(st, "CT")[w.ct_series_uid]["image_type"] == "DERIVED\\SECONDARY\\AXIAL"
    ct, _, _ = load_dicom_study(st)
    np.testing.assert_array_equal(_arr(ct), _arr(case.ct))


def test_localizer_is_set_aside_by_its_data_too(case, tmp_path):
    w = write_dicom_study(case, tmp_path, vendor="SIEMENS", seed=2, ct_localizer=True)
    st = find_dicom_studies(tmp_path)[0]
    assert st.ok and st.ct.series_uid == w.ct_series_uid
    loc = _by_uid(st, "CT")[w.localizer_series_uid]
    assert loc["status"] == "set aside" and "localizer" in loc["reason"] and "LOCALIZER" in loc["reason"]
    assert any("LOCALIZER" in n for n in st.notes)

    # A scanner that does not label its scouts: the AP + lateral pair still is no volume (2 images)
    def unlabel(ds):
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]

    _edit(w.localizer_files, unlabel)
    st = find_dicom_studies(tmp_path)[0]
    assert st.ct.series_uid == w.ct_series_uid
    assert "only 2 slice(s)" in _by_uid(st, "CT")[w.localizer_series_uid]["reason"]
    # ... and a lone scout image neither
    w.localizer_files[1].unlink()
    st = find_dicom_studies(tmp_path)[0]
    assert "only 1 slice(s)" in _by_uid(st, "CT")[w.localizer_series_uid]["reason"]


@pytest.mark.parametrize("plane", ["coronal", "sagittal"])
def test_non_axial_reformat_is_set_aside(case, tmp_path, plane):
    w = write_dicom_study(case, tmp_path / "s", vendor="GE", seed=3, ct_reformat=plane)

    def relabel(ds):  # labelled like an acquired axial series: the slice normal still tells
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]

    _edit(w.reformat_files, relabel)
    st = find_dicom_studies(tmp_path)[0]
    ref = _by_uid(st, "CT")[w.reformat_series_uid]
    assert ref["status"] == "set aside" and ref["reason"] == f"{plane} slices: a non-axial reformat"
    assert ref["n_slices"] == 80 and ref["plane"] == plane  # one slice per CT row (coronal) / column
    assert st.ok and st.ct.series_uid == w.ct_series_uid
    # the only CT being a reformat: no usable CT, and the message says why
    for p in w.ct_files:
        p.unlink()
    st = find_dicom_studies(tmp_path)[0]
    assert st.ct is None and "no usable CT series" in st.problems[0] and "non-axial" in st.problems[0]


def test_irregular_ct_stack_is_set_aside_for_a_regular_one(case, tmp_path):
    # a second CT series with a missing slice (gap) and one with mixed pixel spacing, both given UIDs
    # that would win the final tie-break: they must lose for their geometry, not by chance
    w = write_dicom_study(case, tmp_path, vendor="SIEMENS", seed=4,
                          extra_ct_series=[ExtraCTSeries("CT gap"), ExtraCTSeries("CT mixed")])
    gap, mixed = w.extra_ct_files
    _set_series_uid(gap, "1.2.3.1")
    _set_series_uid(mixed, "1.2.3.2")
    gap[10].unlink()

    def other_spacing(ds):
        ds.PixelSpacing = ["2.5", "2.5"]

    _edit(mixed[:5], other_spacing)
    st = find_dicom_studies(tmp_path)[0]
    assert st.ok and st.ct.series_uid == w.ct_series_uid
    rec = _by_uid(st, "CT")
    assert "non-uniform slice spacing" in rec["1.2.3.1"]["reason"] and rec["1.2.3.1"]["status"] == "set aside"
    assert "PixelSpacing differs" in rec["1.2.3.2"]["reason"]


def test_ct_ranking_rule(case, tmp_path):
    # Candidates, each losing on exactly one criterion of CT_SELECTION_RULE, each with a UID that
    # would win the last tie-break:
    #   other FoR (full coverage)  -> loses on (1) frame of reference
    #   head-and-neck only (DERIVED/SECONDARY) -> loses on (2) overlap
    #   every 2nd slice (16 mm)     -> loses on (3) slice spacing
    #   a copy of the chosen series -> equal on (1)-(4), loses on (5) UID
    w = write_dicom_study(case, tmp_path, vendor="PHILIPS_CNTS", seed=5, extra_ct_series=[
        ExtraCTSeries("CT other FoR", same_frame_of_reference=False),
        ExtraCTSeries("CT head-neck", image_type=("DERIVED", "SECONDARY", "AXIAL"), z_fraction=0.387),
        ExtraCTSeries("CT thick", slice_step=2)])
    other_for, head_neck, thick = w.extra_ct_files
    for files, uid in ((other_for, "1.2.3.1"), (head_neck, "1.2.3.2"), (thick, "1.2.3.3")):
        _set_series_uid(files, uid)
    # the main series' twin gets a UID that sorts after the main one's
    twin_uid = "9.9.9"
    for p in w.ct_files:
        ds = pydicom.dcmread(p)
        ds.SeriesInstanceUID = twin_uid
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(p.parent / f"twin_{p.name}")
    st = find_dicom_studies(tmp_path)[0]
    assert st.ok and st.ct.series_uid == w.ct_series_uid  # "1.2.826..." < "9.9.9"
    rec = _by_uid(st, "CT")
    assert rec[w.ct_series_uid]["status"] == "chosen"
    assert rec[w.ct_series_uid]["reason"].startswith("first of 5 qualifying series by the ranking rule")
    assert "FrameOfReferenceUID differs" in rec["1.2.3.1"]["reason"]
    # overlap by hand from the headers: head-neck CT extent within the PET extent / PET extent
    p_lo, p_hi = _z_range_from_files(w.pt_files)
    c_lo, c_hi = _z_range_from_files(head_neck)
    frac = (min(p_hi, c_hi) - max(p_lo, c_lo)) / (p_hi - p_lo)
    assert 0.3 < frac < 0.45
    assert rec["1.2.3.2"]["reason"].endswith(
        f"covers {100 * frac:.1f} % of the PET's axial extent (the chosen series 100.0 %)")
    assert "thicker slice spacing (16 mm; the chosen series 8 mm)" in rec["1.2.3.3"]["reason"]
    assert "SeriesInstanceUID sorts first" in rec[twin_uid]["reason"]
    assert all(rec[u]["status"] == "not chosen" for u in ("1.2.3.1", "1.2.3.2", "1.2.3.3", twin_uid))


def test_ct_series_choice_by_uid_description_or_pattern(case, tmp_path):
    w = write_dicom_study(case, tmp_path, vendor="SIEMENS", seed=6, ct_localizer=True,
                          extra_ct_series=[ExtraCTSeries("CT Thick 16mm", slice_step=2)])
    thick_uid = w.extra_ct_series_uids[0]
    for spec in (thick_uid, "ct thick 16MM", "  CT Thick 16mm ", "*thick*"):
        st = find_dicom_studies(tmp_path, ct_series=spec)[0]
        assert st.ok and st.ct.series_uid == thick_uid, spec
        rec = _by_uid(st, "CT")
        assert rec[thick_uid]["reason"] == f"matches --ct-series '{spec}'"
        assert rec[w.ct_series_uid]["reason"] == f"does not match --ct-series '{spec}'"
    # a pattern matching two qualifying series: the ranking decides between them (8 mm beats 16 mm)
    st = find_dicom_studies(tmp_path, ct_series="CT*")[0]
    assert st.ct.series_uid == w.ct_series_uid and "first of 2 matching" in st.selection["CT"]["how"]
    # nothing matches / only a set-aside series matches: a named problem, no silent fallback
    st = choose_series(find_dicom_studies(tmp_path)[0], ct_series="no such series")
    assert st.ct is None and "no CT series matches --ct-series 'no such series'" in st.problems[0]
    st = choose_series(st, ct_series="Topogram*")
    assert st.ct is None and "matches only CT series that were set aside" in st.problems[0]
    assert "localizer" in st.problems[0]
    st = choose_series(st)  # back to the rule
    assert st.ok and st.ct.series_uid == w.ct_series_uid


# ---------------------------------------------------------------------------------------- PET


def test_nac_pet_is_set_aside_and_the_ac_series_used(case, tmp_path):
    w = write_dicom_study(case, tmp_path, vendor="GE", seed=7, nac_pet=True)
    nac = pydicom.dcmread(w.nac_pt_files[0], stop_before_pixels=True)
    _set_series_uid(w.nac_pt_files, "1.2.3")  # would win every tie: must lose on ATTN
    st = find_dicom_studies(tmp_path)[0]
    assert st.ok and st.pt.series_uid == w.pt_series_uid
    rec = _by_uid(st, "PT")["1.2.3"]
    assert rec["status"] == "set aside" and "lacks ATTN" in rec["reason"]
    assert rec["corrected_image"] == "\\".join(nac.CorrectedImage)
    _, pet, _ = load_dicom_study(st)
    ref = _arr(case.pet)
    assert np.abs(_arr(pet) - ref).max() <= 1e-3 * ref.max()  # the AC activity, not 0.55 x it
    st = find_dicom_studies(tmp_path, pet_series="PET WB NAC")[0]
    assert st.pt is None and "set aside" in st.problems[0] and "ATTN" in st.problems[0]


def test_pet_ranking_rule(case, tmp_path):
    # (1) extent: a copy of the top 16 slices; (2) acquisition: a copy acquired an hour later (second
    # time point); (3) voxels: a copy whose pixels are declared coarser; each with a UID that sorts first.
    w = write_dicom_study(case, tmp_path, vendor="SIEMENS", seed=8)
    pts = sorted(w.pt_files, key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))

    def copy(paths, uid, fn=None):
        for p in paths:
            ds = pydicom.dcmread(p)
            ds.SeriesInstanceUID = uid
            ds.SOPInstanceUID = pydicom.uid.generate_uid()
            if fn:
                fn(ds)
            ds.save_as(p.parent / f"{uid}_{p.name}")

    def later(ds):
        ds.AcquisitionTime = f"{(int(ds.AcquisitionTime[:2]) + 1):02d}{ds.AcquisitionTime[2:]}"
        ds.SeriesTime = f"{(int(ds.SeriesTime[:2]) + 1):02d}{ds.SeriesTime[2:]}"

    def coarser(ds):
        ds.PixelSpacing = ["6.5", "6.5"]

    copy(pts[16:], "1.2.3.1")
    copy(pts, "1.2.3.2", later)
    copy(pts, "1.2.3.3", coarser)
    st = find_dicom_studies(tmp_path)[0]
    assert st.ok and st.pt.series_uid == w.pt_series_uid
    rec = _by_uid(st, "PT")
    assert "smaller axial extent (128.0 mm; the chosen series 256.0 mm)" in rec["1.2.3.1"]["reason"]
    assert "acquired later" in rec["1.2.3.2"]["reason"]
    assert "coarser voxels" in rec["1.2.3.3"]["reason"]
    # --pet-series picks the later time point, and the CT is then ranked against that PET
    st = find_dicom_studies(tmp_path, pet_series="1.2.3.2")[0]
    assert st.ok and st.pt.series_uid == "1.2.3.2" and st.ct.series_uid == w.ct_series_uid


# ---------------------------------------------------------------------------------------- coverage, other objects


def test_coverage_record_matches_the_headers(case, tmp_path):
    w = write_dicom_study(case, tmp_path, vendor="PHILIPS_CNTS", seed=9, ct_z_fraction=0.387)
    st = find_dicom_studies(tmp_path)[0]
    cov = st.coverage()
    p_lo, p_hi = _z_range_from_files(w.pt_files)
    c_lo, c_hi = _z_range_from_files(w.ct_files)
    assert cov["pet_z_range_mm"] == pytest.approx([p_lo, p_hi], abs=0.01)
    assert cov["ct_z_range_mm"] == pytest.approx([c_lo, c_hi], abs=0.01)
    overlap = min(p_hi, c_hi) - max(p_lo, c_lo)
    assert cov["overlap_mm"] == pytest.approx(overlap, abs=0.01)
    assert cov["ct_fraction_of_pet_z"] == pytest.approx(overlap / (p_hi - p_lo), abs=1e-4)
    assert cov["ct_fraction_of_pet_z"] == pytest.approx(w.ct_z_fraction, abs=1e-4)
    # head-and-neck CT: the missing part is below it (feet side), from the PET's lower edge
    assert cov["pet_without_ct"] == [{"from_mm": pytest.approx(p_lo, abs=0.01), "to_mm": pytest.approx(c_lo, abs=0.01),
                                      "length_mm": pytest.approx(c_lo - p_lo, abs=0.01), "side": "inferior"}]
    _, _, meta = load_dicom_study(st)
    assert meta["coverage"] == cov


def test_non_image_objects_are_counted_not_converted(case, tmp_path):
    kinds = ("RTDOSE", "RTPLAN", "RTSTRUCT", "SR", "KO", "PR")
    w = write_dicom_study(case, tmp_path / "petct", vendor="SIEMENS", seed=10, with_seg=True,
                          other_objects=kinds, rt_study_dir=tmp_path / "rt_planning")
    assert set(w.other_object_files) == set(kinds) and set(w.rt_files) == {"RTDOSE", "RTPLAN"}
    (tmp_path / "notes.txt").write_text("not DICOM")
    scan = scan_dicom_folder(tmp_path)
    assert len(scan.studies) == 1  # the RT-only study of the same patient is no PET/CT study
    st = scan.studies[0]
    assert st.ok and st.study_uid == w.study_uid
    assert st.other_objects == {"KO": 1, "PR": 1, "RTDOSE": 1, "RTPLAN": 1, "RTSTRUCT": 1, "SEG": 1, "SR": 1}
    assert st.seg_paths == [w.seg_path]  # SEG is still available to labeled layouts
    assert scan.other_studies == [{"study_uid": w.rt_study_uid, "patient_id": str(case.patient_id),
                                   "root": str(tmp_path / "rt_planning"), "objects": {"RTDOSE": 1, "RTPLAN": 1}}]
    assert scan.other_objects == {"KO": 1, "PR": 1, "RTDOSE": 2, "RTPLAN": 2, "RTSTRUCT": 1, "SEG": 1, "SR": 1}
    assert scan.n_not_dicom == 1
    lines = scan.summary()
    assert lines[0] == ("ignored 9 DICOM object(s) that are not CT/PET images: 1 KO, 1 PR, 2 RTDOSE, 2 RTPLAN, "
                        "1 RTSTRUCT, 1 SEG, 1 SR")
    assert "1 study(ies) without CT/PET images" in lines[1] and "1 file(s) that are not DICOM" in lines[2]
    assert "SEG" not in scan.summary(used_kinds=("SEG",))[0]
    _, _, meta = load_dicom_study(st)
    assert meta["other_objects"] == st.other_objects
    # the RTDOSE (a multi-frame dose grid with ImagePositionPatient) is never a CT/PT candidate
    assert [s["series_uid"] for s in st.selection["CT"]["series"]] == [w.ct_series_uid]
    assert [s["series_uid"] for s in st.selection["PT"]["series"]] == [w.pt_series_uid]
