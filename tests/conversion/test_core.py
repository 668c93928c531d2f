"""The conversion framework: harmonization rules, sanity checks, atomic writes, idempotency."""

from __future__ import annotations

import json
import os
from functools import partial

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_petct.conversion import core
from nnunetv2_petct.conversion.core import (
    CaseSource,
    ConversionError,
    ConversionOptions,
    LoadedCase,
    convert_cases,
    harmonize,
)
from nnunetv2_petct.conversion.geometry import array_zyx_to_image, same_geometry
from nnunetv2_petct.io import check_nifti_gz_complete


def _box(shape_zyx=(10, 10, 10), spacing=(1.0, 1.0, 1.0), origin_xyz=(0.0, 0.0, 0.0), value=0.0):
    return array_zyx_to_image(np.full(shape_zyx, value, np.float32), spacing, origin_xyz)


def _loaded(case, **changes) -> LoadedCase:
    d = {"ct": case.ct, "pet": case.pet, "label": case.label, "meta": {"pet_units": "SUVbw"}}
    d.update(changes)
    return LoadedCase(**d)


def _load_phantom(case, **changes):  # module-level: picklable through functools.partial
    return _loaded(case, **changes)


# ------------------------------------------------------------------------------------------ harmonize


def test_harmonize_puts_ct_on_pet_grid_and_keeps_pet(phantom_cases):
    case = phantom_cases[0]
    images, facts = harmonize(_loaded(case), ConversionOptions(labeled=True))
    assert same_geometry(images["ct"], case.pet) and same_geometry(images["label"], case.pet)
    assert images["ct"].GetPixelID() == sitk.sitkInt16 and images["label"].GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(images["pet"]), sitk.GetArrayFromImage(case.pet))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(images["label"]), sitk.GetArrayFromImage(case.label))
    # the phantom's own linear resampling onto its PET grid (fill -1024): same rule, so <= 1 HU rounding
    ref = sitk.GetArrayFromImage(case.ct_on_pet_grid()).astype(int)
    assert np.abs(sitk.GetArrayFromImage(images["ct"]).astype(int) - ref).max() <= 1
    assert facts["ct_resampled"] is True and facts["cropped"] is False
    assert facts["shape_zyx"] == list(reversed(case.pet.GetSize()))
    assert facts["label"]["foreground_voxels"] == int(sitk.GetArrayFromImage(case.label).sum())


def test_harmonize_binarizes_labels_and_reports_it(phantom_cases):
    case = next(c for c in phantom_cases if not c.lesion_free)
    lab = sitk.Cast(case.label, sitk.sitkUInt8) * 255  # a 0/255 mask
    images, facts = harmonize(_loaded(case, label=lab), ConversionOptions(labeled=True))
    assert set(np.unique(sitk.GetArrayFromImage(images["label"]))) == {0, 1}
    assert facts["label"]["binarized"] is True
    assert any("binarized" in w for w in facts["warnings"])


def test_harmonize_crop_keeps_world_positions(phantom_cases):
    case = phantom_cases[1]
    images, facts = harmonize(_loaded(case, label=None), ConversionOptions(labeled=False, crop_to_body=True))
    (z0, z1), (y0, y1), (x0, x1) = facts["crop_box_zyx"]
    pet = sitk.GetArrayFromImage(case.pet)
    assert (z1 - z0, y1 - y0, x1 - x0) == tuple(reversed(images["pet"].GetSize()))
    assert (y1 - y0) * (x1 - x0) < pet.shape[1] * pet.shape[2]  # the tiny phantom has air around the body
    np.testing.assert_array_equal(sitk.GetArrayFromImage(images["pet"]), pet[z0:z1, y0:y1, x0:x1])
    # voxel (0,0,0) of the crop is voxel (x0,y0,z0) of the original, in world coordinates
    np.testing.assert_allclose(images["pet"].TransformIndexToPhysicalPoint((0, 0, 0)),
                               case.pet.TransformIndexToPhysicalPoint((x0, y0, z0)))
    body = sitk.GetArrayFromImage(images["label"])
    ct = sitk.GetArrayFromImage(images["ct"])
    assert facts["label"]["kind"] == "body_mask" and body.any()
    assert (ct[body > 0] > -500).mean() > 0.9  # body voxels are tissue (holes filled: a few lung voxels)
    assert (ct[body == 0] <= -500).all()


@pytest.mark.parametrize("change, message", [
    ("nan_pet", "non-finite"),
    ("zero_pet", "PET is empty"),
    ("far_ct", "do not overlap"),
    ("short_ct", "axial"),
    ("ct_offset", "not in HU"),
    ("no_label", "no label"),
    ("2d_pet", "2D"),
])
def test_harmonize_refuses_bad_cases(phantom_cases, change, message):
    case = phantom_cases[0]
    pet, ct, label = case.pet, case.ct, case.label
    if change == "nan_pet":
        a = sitk.GetArrayFromImage(pet)
        a[3, 4, 5] = np.nan
        pet = sitk.GetImageFromArray(a)
        pet.CopyInformation(case.pet)
    elif change == "zero_pet":
        pet = case.pet * 0
    elif change == "far_ct":
        ct = sitk.Image(case.ct)
        ct.SetOrigin([o + 5000.0 for o in ct.GetOrigin()])
    elif change == "short_ct":
        ct = case.ct[:, :, :5]  # 5 of 34 CT slices (8 mm) = 40 of 256 mm of PET z extent
    elif change == "ct_offset":
        ct = sitk.Cast(case.ct, sitk.sitkFloat32) + 1024.0  # like a uint16 store without offset
    elif change == "no_label":
        label = None
    elif change == "2d_pet":
        pet = case.pet[:, :, 0]
    with pytest.raises(ConversionError, match=message):
        harmonize(_loaded(case, pet=pet, ct=ct, label=label), ConversionOptions(labeled=True))


# ------------------------------------------------------------------------------------------ convert_cases


def _sources(cases):
    return [CaseSource(c.case_id, c.patient_id, "test", f"mem://{c.case_id}", partial(_load_phantom, c))
            for c in cases]


def _mtimes(folder):
    return {p.name: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_convert_cases_is_idempotent_and_overwrite_redoes(phantom_cases, tmp_path):
    ds = tmp_path / "Dataset900_T"
    opts = ConversionOptions(labeled=True)
    r1 = convert_cases(_sources(phantom_cases[:2]), ds, opts, name="T", quiet=True)
    assert sorted(r1.converted) == sorted(c.case_id for c in phantom_cases[:2]) and r1.ok
    before = _mtimes(ds / "imagesTr")
    r2 = convert_cases(_sources(phantom_cases[:2]), ds, opts, name="T", quiet=True)
    assert r2.converted == [] and len(r2.existing) == 2
    assert _mtimes(ds / "imagesTr") == before  # nothing rewritten
    r3 = convert_cases(_sources(phantom_cases[:2]), ds, opts, name="T", quiet=True, overwrite=True)
    assert len(r3.converted) == 2
    after = _mtimes(ds / "imagesTr")
    assert all(after[k] != before[k] for k in before)
    dj = json.loads((ds / "dataset.json").read_text())
    assert dj["numTraining"] == 2 == len(list((ds / "imagesTr").glob("*_0000.nii.gz")))


def test_interrupted_write_leaves_no_finished_case_and_is_redone(phantom_cases, tmp_path, monkeypatch):
    ds = tmp_path / "Dataset901_T"
    real_replace = os.replace
    calls = {"n": 0}

    def flaky_replace(src, dst):
        calls["n"] += str(dst).endswith(".nii.gz")
        if calls["n"] == 2:  # CT moved into place, then the "machine dies" before the PET
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(core.os, "replace", flaky_replace)
    with pytest.raises(KeyboardInterrupt):
        convert_cases(_sources(phantom_cases[:1]), ds, ConversionOptions(labeled=True), name="T", quiet=True)
    monkeypatch.setattr(core.os, "replace", real_replace)
    case_id = phantom_cases[0].case_id
    assert not core.is_case_done(ds, case_id)
    assert not list((ds / "labelsTr").iterdir())
    r = convert_cases(_sources(phantom_cases[:1]), ds, ConversionOptions(labeled=True), name="T", quiet=True)
    assert r.converted == [case_id] and r.num_training == 1
    assert not (ds / core.PARTIAL_DIR).exists()


def test_failures_are_collected_and_others_continue(phantom_cases, tmp_path):
    good = _sources(phantom_cases[:2])
    bad = CaseSource("bad_case", "Pbad", "test", "mem://bad",
                     partial(_load_phantom, phantom_cases[2], pet=phantom_cases[2].pet * 0))
    ds = tmp_path / "Dataset902_T"
    r = convert_cases(good + [bad], ds, ConversionOptions(labeled=True), name="T", quiet=True)
    assert not r.ok and [f["case_id"] for f in r.failed] == ["bad_case"]
    assert "PET is empty" in r.failed[0]["reason"]
    assert r.num_training == 2
    assert json.loads((ds / core.FAILURES_FILE).read_text())[0]["case_id"] == "bad_case"
    assert not list((ds / "imagesTr").glob("bad_case*"))


def test_parallel_workers_and_unpicklable_source(phantom_cases, tmp_path):
    """-np 2 (spawn): results equal to the serial run; a source that cannot reach a worker fails alone."""
    sources = _sources(phantom_cases[:2])
    lam = CaseSource("lambda_case", "P", "test", "mem://x", lambda: None)  # not picklable
    ds = tmp_path / "Dataset903_T"
    r = convert_cases(sources + [lam], ds, ConversionOptions(labeled=True), name="T", quiet=True,
                      num_processes=2)
    assert sorted(r.converted) == sorted(s.case_id for s in sources)
    assert [f["case_id"] for f in r.failed] == ["lambda_case"] and "worker crashed" in r.failed[0]["reason"]
    serial = tmp_path / "Dataset904_T"
    convert_cases(sources, serial, ConversionOptions(labeled=True), name="T", quiet=True)
    for s in sources:
        for suffix in ("_0000", "_0001"):
            a = sitk.GetArrayFromImage(sitk.ReadImage(str(ds / "imagesTr" / f"{s.case_id}{suffix}.nii.gz")))
            b = sitk.GetArrayFromImage(sitk.ReadImage(str(serial / "imagesTr" / f"{s.case_id}{suffix}.nii.gz")))
            np.testing.assert_array_equal(a, b)


def test_duplicate_case_ids_are_bad_input(phantom_cases, tmp_path):
    s = _sources(phantom_cases[:1])
    with pytest.raises(core.BadInputError, match="used twice"):
        convert_cases(s + s, tmp_path / "Dataset905_T", ConversionOptions(labeled=True), name="T", quiet=True)


def test_global_pet_normalization_channel_name(phantom_cases, tmp_path):
    """'global' names the PET channel so that nnU-Net 2.8.1 maps it to CTNormalization (by name, casefold)."""
    ds = tmp_path / "Dataset906_T"
    convert_cases(_sources(phantom_cases[:1]), ds, ConversionOptions(labeled=True, pet_normalization="global"),
                  name="T", quiet=True)
    dj = json.loads((ds / "dataset.json").read_text())
    assert dj["channel_names"]["0"] == "CT" and dj["channel_names"]["1"].casefold() == "ct"
    assert dj["channel_names"]["1"] != dj["channel_names"]["0"]  # still tells the channels apart
    assert dj["petct_normalization"]["pet"] == "global"
    from nnunetv2.preprocessing.normalization import map_channel_name_to_normalization as nn

    assert nn.get_normalization_scheme(dj["channel_names"]["1"]).__name__ == "CTNormalization"
    assert dj["petct_normalization"]["schemes"]["1"] == "CTNormalization"


def test_zscore_both_normalization_channel_names(phantom_cases, tmp_path):
    """'zscore-both' names the CT channel so that nnU-Net 2.8.1 z-scores it per image, and our checks still see CT."""
    from nnunetv2.preprocessing.normalization import map_channel_name_to_normalization as nn

    from nnunetv2_petct.conversion.channels import channel_kind, check_channels

    ds = tmp_path / "Dataset907_T"
    convert_cases(_sources(phantom_cases[:1]), ds, ConversionOptions(labeled=True, pet_normalization="zscore-both"),
                  name="T", quiet=True)
    dj = json.loads((ds / "dataset.json").read_text())
    names = dj["channel_names"]
    assert [nn.get_normalization_scheme(names[k]).__name__ for k in ("0", "1")] == ["ZScoreNormalization"] * 2
    assert channel_kind(names["0"]) == "CT" and channel_kind(names["1"]) == "PET"
    check_channels(names)  # the trainers accept it
    assert dj["petct_normalization"]["choice"] == "zscore-both"
    assert dj["petct_normalization"]["schemes"] == {"0": "ZScoreNormalization", "1": "ZScoreNormalization"}


def test_truncated_nifti_gz_is_detected_but_multi_member_gzip_is_fine(phantom_cases, tmp_path):
    import gzip

    path = tmp_path / "pet.nii.gz"
    sitk.WriteImage(phantom_cases[0].pet, str(path), True)
    raw = gzip.decompress(path.read_bytes())
    # a valid two-member gzip (as written by bgzip-like tools): trailer != total size, but complete
    two = tmp_path / "two.nii.gz"
    two.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    check_nifti_gz_complete(two)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(core.read_image(two)),
                                  sitk.GetArrayFromImage(phantom_cases[0].pet))
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ConversionError, match="truncated"):
        core.read_image(cut)
    # a complete gzip whose payload is shorter than the header says (e.g. cut before compressing)
    short = tmp_path / "short.nii.gz"
    short.write_bytes(gzip.compress(raw[:-400]))
    with pytest.raises(ConversionError, match="truncated"):
        core.read_image(short)


def test_overwrite_with_a_now_failing_case_removes_its_old_files(phantom_cases, tmp_path):
    ds = tmp_path / "Dataset907_T"
    case = phantom_cases[0]
    convert_cases(_sources([case]), ds, ConversionOptions(labeled=True), name="T", quiet=True)
    broken = CaseSource(case.case_id, case.patient_id, "test", "mem://x", partial(_load_phantom, case, pet=case.pet * 0))
    r = convert_cases([broken], ds, ConversionOptions(labeled=True), name="T", quiet=True, overwrite=True)
    assert [f["case_id"] for f in r.failed] == [case.case_id] and r.num_training == 0
    assert not list((ds / "imagesTr").iterdir()) and not list((ds / "labelsTr").iterdir())
    assert json.loads((ds / "dataset.json").read_text())["numTraining"] == 0
