"""``nnUNetv2_petct_paper_plans`` and ``nnUNetv2_petct_import_weights``: outputs and exit codes (the installed scripts,
plus their ``main(argv)`` in this interpreter for the error paths)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from tests.conftest import cli
from tests.transfer.liu2026_replica import MultiModalMIMWrapper, write_replica


def _script(name: str, *args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([cli(name), *map(str, args)], capture_output=True, text=True, timeout=600, env=env)


def _main(module: str, capsys, *args: str) -> tuple[int, str, str]:
    import importlib

    capsys.readouterr()
    code = importlib.import_module(f"nnunetv2_petct.cli.{module}").main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def planned(tiny_planned):
    return tiny_planned


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    return write_replica(tmp_path_factory.mktemp("liu") / "nnunet_v2_mim_best.pth", MultiModalMIMWrapper(seed=5))


def test_paper_plans_cli_writes_the_preset(planned):
    d = planned
    proc = _script("nnUNetv2_petct_paper_plans", "--help", env=d.env)
    assert proc.returncode == 0 and "zscore-both" in proc.stdout and "96 x 128 x 128" in proc.stdout
    proc = _script("nnUNetv2_petct_paper_plans", "-d", d.dataset_id, "-o", "nnUNetPlans_paperCLI", env=d.env)
    assert proc.returncode == 0, proc.stderr
    path = Path(d.env["nnUNet_preprocessed"]) / d.dataset_name / "nnUNetPlans_paperCLI.json"
    c = json.loads(path.read_text())["configurations"]["3d_fullres"]
    assert c["patch_size"] == [96, 128, 128] and c["spacing"] == [3.0, 2.0, 2.0] and c["batch_size"] == 16
    assert c["architecture"]["arch_kwargs"]["features_per_stage"] == [32, 64, 128, 256, 320, 320]
    assert "nnUNetv2_preprocess -d" in proc.stdout and "-plans_name nnUNetPlans_paperCLI" in proc.stdout


def test_paper_plans_cli_options_and_errors(planned, capsys, monkeypatch):
    d = planned
    monkeypatch.setenv("nnUNet_preprocessed", d.env["nnUNet_preprocessed"])
    code, out, _ = _main("paper_plans", capsys, "-d", d.dataset_id, "-o", "nnUNetPlans_paperB", "--patch", 32, 32, 64,
                         "--purpose", "finetuning", "--normalization", "zscore-both")
    assert code == 0
    path = Path(d.env["nnUNet_preprocessed"]) / d.dataset_name / "nnUNetPlans_paperB.json"
    c = json.loads(path.read_text())["configurations"]["3d_fullres"]
    assert c["patch_size"] == [32, 32, 64] and c["batch_size"] == 2
    assert c["normalization_schemes"] == ["ZScoreNormalization", "ZScoreNormalization"]
    # the same again: fine; a change needs --force (its preprocessed data would be stale)
    assert _main("paper_plans", capsys, "-d", d.dataset_id, "-o", "nnUNetPlans_paperB", "--patch", 32, 32, 64,
                 "--purpose", "finetuning", "--normalization", "zscore-both")[0] == 0
    code, _, err = _main("paper_plans", capsys, "-d", d.dataset_id, "-o", "nnUNetPlans_paperB", "--batch-size", 4)
    assert code == 2 and err.startswith("error: ") and "--force" in err and err.count("\n") == 1
    code, _, err = _main("paper_plans", capsys, "-d", d.dataset_id, "-o", "X", "--patch", 32, 32, 32)
    assert code == 2 and "single voxel" in err
    code, _, err = _main("paper_plans", capsys, "-d", d.dataset_id, "-o", "X", "--patch", 30, 64, 64)
    assert code == 2 and "multiple of" in err
    assert not (path.parent / "X.json").exists()
    code, _, err = _main("paper_plans", capsys, "-d", 999)
    assert code == 2 and "Dataset999" in err
    code, _, err = _main("paper_plans", capsys, "-d", d.dataset_id, "-s", "NoPlans")
    assert code == 2 and "plan the dataset first" in err
    monkeypatch.delenv("nnUNet_preprocessed")
    assert "nnUNet_preprocessed" in _main("paper_plans", capsys, "-d", d.dataset_id)[2]


def test_import_cli_writes_checkpoint_and_plans(planned, replica, tmp_path):
    d = planned
    out = tmp_path / "foundation.pth"
    proc = _script("nnUNetv2_petct_import_weights", replica, "-o", out, "-d", d.dataset_id, "-p",
                   "nnUNetPlans_importCLI", "--patch", 32, 32, 64, env=d.env)
    assert proc.returncode == 0, proc.stderr
    assert "format liu2026" in proc.stdout and "reordered from ['PET', 'CT'] to ['CT', 'PET']" in proc.stdout
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["petct_metadata"]["import"]["format"] == "liu2026"
    plans = json.loads((Path(d.env["nnUNet_preprocessed"]) / d.dataset_name / "nnUNetPlans_importCLI.json").read_text())
    c = plans["configurations"]["3d_fullres"]
    assert c["architecture"] == ckpt["nnssl_adaptation_plan"]["architecture"]
    assert c["normalization_schemes"] == ["ZScoreNormalization", "ZScoreNormalization"]
    assert c["spacing"] == [3.0, 2.0, 2.0] and c["patch_size"] == [32, 32, 64] and c["batch_size"] == 2
    assert "-plans_name nnUNetPlans_importCLI" in proc.stdout and "-pretrained_weights" in proc.stdout
    # plans only, from an already imported checkpoint (our own format, auto-detected)
    proc = _script("nnUNetv2_petct_import_weights", out, "-d", d.dataset_id, "-p", "nnUNetPlans_importCLI2", env=d.env)
    assert proc.returncode == 0, proc.stderr
    c2 = json.loads((Path(d.env["nnUNet_preprocessed"]) / d.dataset_name / "nnUNetPlans_importCLI2.json").read_text())
    assert c2["configurations"]["3d_fullres"]["patch_size"] == [96, 128, 128]  # the checkpoint's recommendation


def _copy_dataset(d, dataset_id: int, channel_names: dict) -> str:
    pre = Path(d.env["nnUNet_preprocessed"])
    name = f"Dataset{dataset_id}_Channels"
    target = pre / name
    if not target.exists():
        target.mkdir()
        shutil.copy(pre / d.dataset_name / "nnUNetPlans.json", target / "nnUNetPlans.json")
    ds = json.loads((pre / d.dataset_name / "dataset.json").read_text())
    ds["channel_names"] = channel_names
    (target / "dataset.json").write_text(json.dumps(ds))
    return str(dataset_id)


def test_import_cli_errors(planned, replica, tmp_path, capsys, monkeypatch):
    d = planned
    monkeypatch.setenv("nnUNet_preprocessed", d.env["nnUNet_preprocessed"])
    out = tmp_path / "f.pth"
    code, _, err = _main("import_weights", capsys, replica)
    assert code == 2 and "nothing to do" in err
    code, _, err = _main("import_weights", capsys, tmp_path / "missing.pth", "-o", out)
    assert code == 2 and "not found" in err
    one = _copy_dataset(d, 611, {"0": "PET"})
    code, _, err = _main("import_weights", capsys, replica, "-o", out, "-d", one)
    assert code == 2 and "nnUNetv2_petct_adapt_checkpoint" in err and "--keep PET" in err
    swapped = _copy_dataset(d, 612, {"0": "PET", "1": "CT"})
    code, _, err = _main("import_weights", capsys, replica, "-o", out, "-d", swapped)
    assert code == 2 and "_0000 = CT, _0001 = PET" in err
    assert not out.exists()  # every check ran before anything was written
    code, _, err = _main("import_weights", capsys, replica, "-o", out, "-d", 998)
    assert code == 2 and "Dataset998" in err
    code, _, err = _main("import_weights", capsys, replica, "-o", out, "--format", "petct-foundation")
    assert code == 2 and "is not a petct-foundation file" in err and err.count("\n") == 1
    out.write_bytes(b"keep")
    code, _, err = _main("import_weights", capsys, replica, "-o", out)
    assert code == 2 and "--force" in err and out.read_bytes() == b"keep"
