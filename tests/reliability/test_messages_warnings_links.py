"""Issue 16, item 11: reasons in words for corrupt gzip/NIfTI (no ITK source paths), case warnings shown on
stderr (quiet-aware) and not only in the manifest, folder links in a source tree followed and reported."""

from __future__ import annotations

import gzip
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from reliability_helpers import cli_env, run_cli

from nnunetv2_petct.conversion.core import ConversionError, read_image
from nnunetv2_petct.phantoms.layouts import autopet_ids, write_autopet_layout


@pytest.mark.parametrize("name, content, says", [
    ("not_gzip.nii.gz", b"plain bytes, no gzip" * 30, "not a complete gzip file"),
    ("not_nifti.nii.gz", gzip.compress(b"hello world" * 100), "not a NIfTI file (the header-size field is neither"),
    ("short.nii.gz", gzip.compress(b"\x5c\x01\x00\x00" + b"\x00" * 100), "too short to hold a NIfTI header"),
    ("garbage.nii", b"x" * 400, "not a NIfTI file"),
    ("garbage.mha", b"x" * 400, "not an image file ITK can read (unknown format, or the file is corrupt)"),
    ("empty.nii.gz", b"", "the file is empty (0 bytes)"),
])
def test_unreadable_files_get_a_reason_in_words(tmp_path, name, content, says):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ConversionError) as info:
        read_image(path)
    msg = str(info.value)
    assert str(path) in msg and says in msg
    assert ".cxx" not in msg and "sitk::ERROR" not in msg and "Exception thrown" not in msg


def test_case_warnings_are_shown_unless_quiet(rel_cases, tmp_path):
    cases = rel_cases[:2]
    src = write_autopet_layout(cases, tmp_path / "autopet")
    ids = autopet_ids(cases[0])
    suv = src / ids["patient_folder"] / ids["study_folder"] / "SUV.nii.gz"
    img = sitk.ReadImage(str(suv))
    arr = sitk.GetArrayFromImage(img)
    arr[0, 0, 0] = -2.5  # a negative SUV: converted, with a warning
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    sitk.WriteImage(out, str(suv), True)
    proc = run_cli("nnUNetv2_petct_convert", ["autopet", src, "-d", 260], cli_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert f"[nnunetv2_petct] WARNING {ids['case_id']}: PET has negative values (min -2.5); kept as is" in proc.stderr
    assert "1 warning(s) in 1 case(s) (listed in manifest.jsonl)" in proc.stdout
    proc = run_cli("nnUNetv2_petct_convert", ["autopet", src, "-d", 261, "-q"], cli_env(tmp_path))
    assert proc.returncode == 0 and "WARNING" not in proc.stderr
    assert "1 warning(s) in 1 case(s)" in proc.stdout  # quiet: only the count in the summary


def test_folder_links_are_followed_and_reported(rel_cases, tmp_path):
    cases = rel_cases[:3]
    elsewhere = write_autopet_layout(cases[2:], tmp_path / "elsewhere")
    src = write_autopet_layout(cases[:2], tmp_path / "autopet")
    linked = autopet_ids(cases[2])["patient_folder"]
    os.symlink(elsewhere / linked, src / linked, target_is_directory=True)  # a study reached through a link
    os.symlink(src, src / "loop", target_is_directory=True)  # a link back to the root
    os.symlink(tmp_path / "gone", src / "dangling")  # a broken link
    proc = run_cli("nnUNetv2_petct_convert", ["autopet", src, "-d", 262, "-q"], cli_env(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 converted" in proc.stdout
    assert f"1 folder link(s) followed under {src}: {src / linked} -> {elsewhere / linked}" in proc.stdout
    assert "1 folder link(s) skipped: they lead to a folder visited already" in proc.stdout
    assert f"1 broken link(s) ignored under {src}: {src / 'dangling'}" in proc.stdout
    converted = sorted(p.name for p in (tmp_path / "raw" / "Dataset262_AutoPET" / "imagesTr").glob("*_0000.nii.gz"))
    assert converted == sorted(f"{autopet_ids(c)['case_id']}_0000.nii.gz" for c in cases)
    shutil.rmtree(elsewhere)  # the link now dangles: reported, and the study is gone from the source
    proc = run_cli("nnUNetv2_petct_convert", ["autopet", src, "-d", 262, "-q"], cli_env(tmp_path))
    assert "2 broken link(s) ignored" in proc.stdout


def test_corrupt_study_file_message_through_the_cli(rel_cases, tmp_path):
    src = write_autopet_layout(rel_cases[:1], tmp_path / "autopet")
    ids = autopet_ids(rel_cases[0])
    seg = src / ids["patient_folder"] / ids["study_folder"] / "SEG.nii.gz"
    seg.write_bytes(gzip.compress(np.zeros(1000, np.uint8).tobytes()))  # gzip of zeros: no NIfTI header
    proc = run_cli("nnUNetv2_petct_convert", ["autopet", src, "-d", 263, "-q"], cli_env(tmp_path))
    assert proc.returncode == 1
    assert f"FAILED {ids['case_id']}: cannot read {seg}: not a NIfTI file" in proc.stderr
    assert ".cxx" not in proc.stderr
