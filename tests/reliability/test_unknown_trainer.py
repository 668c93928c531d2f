"""nnUNetv2_train -tr with our prefix but no such trainer: our discovery hook names it and lists ours (closest
first), exit 2, instead of nnU-Net's scan crashing on torchvision next to a CPU torch (issue 21, item 3)."""

from __future__ import annotations

import os

from reliability_helpers import run_cli

from nnunetv2_petct.nnunet.registry import all_trainer_classes


def test_unknown_petct_trainer_is_answered_by_the_hook(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("NNUNETV2_PETCT_NO_HOOK", "nnUNet_extTrainer")}
    env.update(nnUNet_raw=str(tmp_path / "raw"), nnUNet_preprocessed=str(tmp_path / "pre"),
               nnUNet_results=str(tmp_path / "res"))
    proc = run_cli("nnUNetv2_train", ["1", "3d_fullres", "0", "-tr", "nnUNetTrainerPETCTFinetun", "-device", "cpu"],
                   env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = next(x for x in proc.stderr.splitlines() if "no trainer" in x)
    assert "no trainer nnUNetTrainerPETCTFinetun; ours are: " in line
    listed = line.split("ours are: ")[1].split(", ")
    assert set(listed) == set(all_trainer_classes())  # derived from the registry, every one of ours
    assert listed[0] == "nnUNetTrainerPETCTFinetune"  # closest name first
    assert "Traceback" not in proc.stderr and "torchvision" not in proc.stderr
