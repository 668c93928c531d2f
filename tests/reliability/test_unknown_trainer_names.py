"""An unknown trainer name with our prefix is answered by our discovery hook, through the real
``nnUNetv2_train`` (issue 21, item 3): the closest of our names, exit 2, no traceback, no nnU-Net scan."""

from __future__ import annotations

import os

from nnunetv2_petct.nnunet.env import nnunet_env
from tests.conftest import cli, run


def test_misspelled_trainer_gets_the_closest_of_ours(tmp_path):
    env = nnunet_env(tmp_path)
    env.pop("nnUNet_extTrainer", None)
    proc = run([cli("nnUNetv2_train"), "999", "3d_fullres", "0", "-tr", "nnUNetTrainerPETCTFinetun_tiny"], env,
               check=False, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert line and line[0].startswith("error: no trainer nnUNetTrainerPETCTFinetun_tiny; ours are: "
                                       "nnUNetTrainerPETCTFinetune_tiny")
    assert "Traceback" not in proc.stderr and "torchvision" not in proc.stderr


def test_with_an_ext_trainer_folder_the_name_goes_on_to_nnunets_own_search(tmp_path):
    """A user's own ``nnUNetTrainerPETCT...`` subclass in their ``nnUNet_extTrainer`` folder stays findable."""
    folder = tmp_path / "ext"
    folder.mkdir()
    (folder / "mine.py").write_text(
        "from nnunetv2_petct.nnunet.trainers.base import nnUNetTrainerPETCT_tiny\n\n\n"
        "class nnUNetTrainerPETCTMine(nnUNetTrainerPETCT_tiny):\n    pass\n")
    code = ("import os, sys; sys.argv = ['nnUNetv2_train']\n"
            "from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f\n"
            "from nnunetv2_petct._discovery import _answer_unknown_ourselves\n"
            "print(_answer_unknown_ourselves('nnUNetTrainerPETCTMine'))\n")
    env = {**nnunet_env(tmp_path), "nnUNet_extTrainer": str(folder)}
    import sys

    proc = run([sys.executable, "-c", code], env)
    assert proc.stdout.strip() == "False"
    env.pop("nnUNet_extTrainer")
    proc = run([sys.executable, "-c", code], {**env, "PATH": os.environ.get("PATH", "")})
    assert proc.stdout.strip() == "True"
