"""Trainer discovery: the import hook (stock CLIs, no env var) and the nnUNet_extTrainer folder."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest

from tests.conftest import REPO, cli

PY = sys.executable


def _py(code: str, **env_extra: str) -> subprocess.CompletedProcess:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("NNUNETV2_PETCT_NO_HOOK", "nnUNet_extTrainer")}
    env.update(env_extra)
    return subprocess.run([PY, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_hook_is_installed_at_startup_without_importing_heavy_modules():
    # The .pth line must put our (lazy) finder on sys.meta_path and import nothing: not nnunetv2, not
    # torch, not even this package (start-up cost: one meta-path entry).
    proc = _py(
        "import sys, json;"
        "print(json.dumps([any(getattr(f, '_nnunetv2_petct', False) for f in sys.meta_path),"
        " 'nnunetv2_petct' in sys.modules, 'nnunetv2' in sys.modules, 'torch' in sys.modules]))"
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [True, False, False, False]
    disabled = _py("import sys; print(any(getattr(f, '_nnunetv2_petct', False) for f in sys.meta_path))",
                   NNUNETV2_PETCT_NO_HOOK="1")
    assert disabled.stdout.strip() == "False"


def test_hook_wraps_nnunet_lookup_used_by_run_training_and_predict():
    proc = _py(
        "import json; import nnunetv2.run.run_training as rt; import nnunetv2.inference.predict_from_raw_data as p;"
        "c1 = rt.recursive_find_trainer_class_by_name('nnUNetTrainerPETCT_tiny');"
        "c2 = p.recursive_find_trainer_class_by_name('nnUNetTrainerPETCT');"
        "print(json.dumps([c1.__module__, c1.__name__, c2.__name__]))"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [
        "nnunetv2_petct.nnunet.trainers.base", "nnUNetTrainerPETCT_tiny", "nnUNetTrainerPETCT"]


def test_without_the_hook_nnunet_cannot_find_our_trainer_here():
    # Proves the hook is what makes the lookup work on this CPU torch (SPEC §5): disabled, the stock
    # lookup either crashes on torchvision or does not know the name.
    proc = _py(
        "from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f;"
        "f('nnUNetTrainerPETCT_tiny')",
        NNUNETV2_PETCT_NO_HOOK="1",
    )
    assert proc.returncode != 0


def test_wrapper_falls_back_and_warns_when_nnunet_changes(capsys):
    from nnunetv2_petct import _discovery

    changed = types.ModuleType("fake_find_objects")  # nnU-Net without the function
    assert _discovery.wrap_trainer_lookup(changed) is False
    assert "not found" in capsys.readouterr().err

    calls = []
    module = types.ModuleType("fake_find_objects2")
    module.recursive_find_trainer_class_by_name = lambda name: calls.append(name) or "stock"
    assert _discovery.wrap_trainer_lookup(module) is True
    assert _discovery.wrap_trainer_lookup(module) is True  # idempotent: no double wrapping
    assert module.recursive_find_trainer_class_by_name("nnUNetTrainer") == "stock"
    assert calls == ["nnUNetTrainer"]
    ours = module.recursive_find_trainer_class_by_name("nnUNetTrainerPETCT")
    assert ours.__name__ == "nnUNetTrainerPETCT" and calls == ["nnUNetTrainer"]
    # an unknown PETCT-prefixed name is answered by us (exit 2), never passed to nnU-Net's scan
    with pytest.raises(SystemExit) as info:
        module.recursive_find_trainer_class_by_name("nnUNetTrainerPETCTDoesNotExist")
    assert info.value.code == 2 and calls == ["nnUNetTrainer"]
    assert "no trainer nnUNetTrainerPETCTDoesNotExist; ours are: " in capsys.readouterr().err


def test_ext_trainer_folder_is_searchable_by_nnunets_own_function():
    # nnU-Net applies recursive_find_python_class(path, name, None, base_folder=path, ...) to every
    # nnUNet_extTrainer folder; run exactly that (hook disabled) for each of our trainer classes.
    trainers_dir = REPO / "trainers"
    proc = _py(
        "import json, sys\n"
        "from nnunetv2.utilities.find_class_by_name import recursive_find_python_class\n"
        "from nnunetv2_petct.nnunet.registry import all_trainer_classes\n"
        "res = {}\n"
        "for name, cls in all_trainer_classes().items():\n"
        f"    found = recursive_find_python_class({str(trainers_dir)!r}, name, None, base_folder={str(trainers_dir)!r},"
        " cleanup_imports_from_base_folder=True)\n"
        "    res[name] = found is cls\n"
        "print(json.dumps(res))\n",
        NNUNETV2_PETCT_NO_HOOK="1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "nnUNetTrainerPETCT" in res and "nnUNetTrainerPETCT_tiny" in res
    missing = [k for k, ok in res.items() if not ok]
    assert not missing, f"not found (or a different class) through trainers/: {missing}"


def test_doctor_reports_wired_trainers():
    proc = subprocess.run([cli("nnUNetv2_petct_doctor"), "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["hook_installed"] and report["trainer_lookup_wrapped"]
    assert "nnUNetTrainerPETCT_tiny" in report["trainers"]
