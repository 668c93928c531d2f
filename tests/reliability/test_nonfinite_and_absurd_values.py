"""Issue 16, item 5: NaN/inf in a NIfTI PET are found in the file itself (ITK would read them as 0), with a
named error or the explicit ``--nonfinite zero`` policy recorded in the manifest; an all-NaN PET gets a
correct message; absurd values and boolean/complex arrays are refused."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest
import SimpleITK as sitk
from reliability_helpers import cli_env, run_cli

from nnunetv2_petct.conversion.core import ConversionError, read_image
from nnunetv2_petct.conversion.nifti import read_nifti_header, scan_nonfinite
from nnunetv2_petct.phantoms.layouts import autopet_ids, write_autopet_layout, write_spade_layout

# voxel (z, y, x) -> value injected into the phantom's SUV: 3 NaN, 2 +inf, 1 -inf
BAD_VOXELS = {(5, 10, 10): np.nan, (6, 10, 10): np.nan, (7, 11, 12): np.nan, (8, 12, 13): np.inf,
              (9, 13, 14): np.inf, (10, 14, 15): -np.inf}


def _suv_path(src, case):
    ids = autopet_ids(case)
    return src / ids["patient_folder"] / ids["study_folder"] / "SUV.nii.gz"


def _rewrite(path, change):
    img = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(img).astype(np.float32)
    arr = change(arr)
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    sitk.WriteImage(out, str(path), True)


def _inject(arr):
    for idx, v in BAD_VOXELS.items():
        arr[idx] = v
    return arr


def test_itk_alone_hides_the_nans(rel_cases, tmp_path):
    """The premise: SimpleITK reads NaN/inf of a NIfTI file as 0 (so only a raw read can find them)."""
    src = write_autopet_layout(rel_cases[:1], tmp_path / "a")
    path = _suv_path(src, rel_cases[0])
    _rewrite(path, _inject)
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    assert np.isfinite(arr).all() and all(arr[i] == 0 for i in BAD_VOXELS)
    restored = sitk.GetArrayFromImage(read_image(path))
    assert int(np.isnan(restored).sum()) == 3 and int(np.isposinf(restored).sum()) == 2
    assert int(np.isneginf(restored).sum()) == 1
    assert all(np.isnan(restored[i]) if np.isnan(v) else restored[i] == v for i, v in BAD_VOXELS.items())


def test_cli_refuses_nan_pet_then_zero_policy_is_recorded(rel_cases, tmp_path):
    cases = rel_cases[:2]
    src = write_autopet_layout(cases, tmp_path / "autopet")
    _rewrite(_suv_path(src, cases[0]), _inject)
    victim = autopet_ids(cases[0])["case_id"]
    proc = run_cli("nnUNetv2_petct_convert", ["autopet", src, "-d", 233, "-q"], cli_env(tmp_path))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert (f"FAILED {victim}: PET has 6 non-finite voxel(s) (3 NaN, 2 +inf, 1 -inf) of "
            f"{cases[0].pet.GetNumberOfPixels()}; to set them to 0 instead, convert with --nonfinite zero") in proc.stderr

    proc = run_cli("nnUNetv2_petct_convert", ["autopet", src, "-d", 233, "--nonfinite", "zero"], cli_env(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"WARNING {victim}: PET: 6 non-finite voxel(s) (3 NaN, 2 +inf, 1 -inf) set to 0 (--nonfinite zero)" \
        in proc.stderr
    ds = tmp_path / "raw" / "Dataset233_AutoPET"
    record = json.loads((ds / "manifest" / f"{victim}.json").read_text())
    assert record["nonfinite"] == {"policy": "zero", "pet": {"nan": 3, "posinf": 2, "neginf": 1, "total": 6}}
    assert record["conversion_options"]["nonfinite"] == "zero"
    pet = sitk.GetArrayFromImage(sitk.ReadImage(str(ds / "imagesTr" / f"{victim}_0001.nii.gz")))
    assert all(pet[i] == 0 for i in BAD_VOXELS) and np.isfinite(pet).all()
    marker = json.loads((ds / ".nnunetv2_petct.json").read_text())
    assert marker["options"]["nonfinite"] == "zero"


@pytest.mark.parametrize("policy, says", [
    ("error", "PET holds no finite value: all {n} voxels are non-finite ({n} NaN)"),
    ("zero", "PET is empty: all {n} voxels were non-finite (NaN/inf) in the source and were set to 0"),
])
def test_all_nan_pet_gets_a_true_message(rel_cases, tmp_path, policy, says):
    src = write_autopet_layout(rel_cases[:1], tmp_path / "autopet")
    _rewrite(_suv_path(src, rel_cases[0]), lambda a: np.full_like(a, np.nan))
    proc = run_cli("nnUNetv2_petct_convert", ["autopet", src, "-d", 234, "-q", "--nonfinite", policy],
                   cli_env(tmp_path))
    assert proc.returncode == 1
    assert says.format(n=rel_cases[0].pet.GetNumberOfPixels()) in proc.stderr
    assert "maximum 0" not in proc.stderr


def test_absurd_suv_is_refused(rel_cases, tmp_path):
    src = write_autopet_layout(rel_cases[:1], tmp_path / "autopet")

    def spike(a):
        a[5, 10, 10] = 1e30
        return a

    _rewrite(_suv_path(src, rel_cases[0]), spike)
    proc = run_cli("nnUNetv2_petct_convert", ["autopet", src, "-d", 235, "-q"], cli_env(tmp_path))
    assert proc.returncode == 1
    assert "PET has implausible values (range 0..1e+30 SUVbw; plausible: within +-10000 for SUV)" in proc.stderr


@pytest.mark.parametrize("kind, dtype, says", [
    ("pet", bool, "holds a boolean array (dtype bool)"),
    ("pet", np.complex64, "holds a complex array (dtype complex64)"),
    ("ct", bool, "holds a boolean array (dtype bool)"),
])
def test_spade_boolean_or_complex_arrays_are_refused(rel_cases, tmp_path, kind, dtype, says):
    src = write_spade_layout(rel_cases[:1], tmp_path / "spade", include_known_bad=False)
    f = next(src.rglob(f"{kind}.npy"))
    np.save(f, np.load(f).astype(dtype))
    proc = run_cli("nnUNetv2_petct_convert", ["spade", src, "-d", 236, "-q"], cli_env(tmp_path))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"{f} {says}, not image intensities" in proc.stderr


def _nifti1_big_endian(path, arr_zyx: np.ndarray, slope: float = 1.0, inter: float = 0.0, gz: bool = True):
    """A NIfTI-1 file written by hand (big-endian float32), no SimpleITK involved."""
    nz, ny, nx = arr_zyx.shape
    hdr = bytearray(348)
    struct.pack_into(">i", hdr, 0, 348)
    struct.pack_into(">8h", hdr, 40, 3, nx, ny, nz, 1, 1, 1, 1)
    struct.pack_into(">hh", hdr, 70, 16, 32)  # float32, 32 bits
    struct.pack_into(">8f", hdr, 76, 1, 2.0, 2.0, 3.0, 1, 1, 1, 1)
    struct.pack_into(">fff", hdr, 108, 352.0, slope, inter)
    struct.pack_into(">h", hdr, 252, 1)  # qform_code: scanner
    hdr[344:348] = b"n+1\x00"
    data = bytes(hdr) + b"\x00" * 4 + arr_zyx.astype(">f4").tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


@pytest.mark.parametrize("gz", [True, False])
def test_raw_reader_on_a_hand_made_big_endian_file(tmp_path, gz):
    arr = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    arr[1, 2, 3] = np.nan
    arr[3, 4, 5] = -np.inf
    path = tmp_path / ("be.nii.gz" if gz else "be.nii")
    _nifti1_big_endian(path, arr, slope=2.0, inter=1.0, gz=gz)
    h = read_nifti_header(path)
    assert (h.byteorder, h.datatype_name, h.dims, h.vox_offset, h.scaling) == (">", "float32", (6, 5, 4), 352, (2.0, 1.0))
    count = scan_nonfinite(path)
    assert (count.nan, count.posinf, count.neginf, count.n_voxels) == (1, 0, 1, 120)
    img = sitk.GetArrayFromImage(read_image(path))
    assert np.isnan(img[1, 2, 3]) and np.isneginf(img[3, 4, 5])
    expected = arr * 2.0 + 1.0  # the header's scaling applied to the finite voxels
    finite = np.isfinite(arr)
    np.testing.assert_allclose(img[finite], expected[finite])


def test_restored_nans_keep_their_place_under_a_flipped_direction(tmp_path):
    arr = np.ones((6, 7, 8), np.float32)
    arr[2, 3, 4] = np.nan
    img = sitk.GetImageFromArray(arr)
    img.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))  # LPS vs RAS: ITK keeps the voxel order, flips the matrix
    sitk.WriteImage(img, str(tmp_path / "flip.nii.gz"), True)
    back = read_image(tmp_path / "flip.nii.gz")
    a = sitk.GetArrayFromImage(back)
    assert np.argwhere(np.isnan(a)).tolist() == [[2, 3, 4]]
    assert back.GetDirection() == pytest.approx(img.GetDirection())


def test_integer_nifti_is_not_scanned_and_float64_is(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 3, 3), np.int16)), str(tmp_path / "i.nii.gz"), True)
    a = np.zeros((3, 3, 3), np.float64)
    a[0, 0, 0] = np.inf
    sitk.WriteImage(sitk.GetImageFromArray(a), str(tmp_path / "d.nii.gz"), True)
    assert not read_nifti_header(tmp_path / "i.nii.gz").can_hold_nonfinite
    assert scan_nonfinite(tmp_path / "d.nii.gz").posinf == 1


def test_complex_nifti_is_refused(tmp_path):
    img = sitk.GetImageFromArray(np.ones((3, 3, 3), np.complex64))
    sitk.WriteImage(img, str(tmp_path / "c.nii.gz"), True)
    with pytest.raises(ConversionError, match=r"stores complex64 voxels, not image intensities"):
        read_image(tmp_path / "c.nii.gz")
