"""The environment for nnU-Net subprocesses (our tests, benchmarks and the demo share it). No nnunetv2 import."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def nnunet_env(root: str | os.PathLike | None = None, *, raw: str | os.PathLike | None = None,
               preprocessed: str | os.PathLike | None = None, results: str | os.PathLike | None = None,
               threads: int | None = 2, n_proc_da: int = 0, create: bool = True, **extra: str) -> dict[str, str]:
    """A copy of ``os.environ`` for running nnU-Net commands on this package's terms.

    - the three nnU-Net folders: ``raw``/``preprocessed``/``results`` or, by default, those names under
      ``root`` (created when ``create``);
    - ``nnUNet_extTrainer`` and ``NNUNETV2_PETCT_NO_HOOK`` removed, so the plugin's discovery hook is what
      finds our trainers (as right after ``pip install``);
    - CPU-friendly settings: no ``torch.compile``, ``threads`` for nnU-Net's pools and OpenMP (None keeps
      what the caller's environment says, else 2), ``nnUNet_n_proc_DA=n_proc_da`` augmentation workers
      (0 = in the main process, cheapest for tiny patches; the planner needs it > 0 because it calls
      ``torch.set_num_threads(nnUNet_n_proc_DA)``), a headless matplotlib and unbuffered output;
    - ``extra`` last (overrides).
    """
    env = {k: v for k, v in os.environ.items() if k not in ("nnUNet_extTrainer", "NNUNETV2_PETCT_NO_HOOK")}
    folders = {"nnUNet_raw": raw, "nnUNet_preprocessed": preprocessed, "nnUNet_results": results}
    for key, sub in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results")):
        if folders[key] is None and root is not None:
            folders[key] = Path(root) / sub
        if folders[key] is not None:
            env[key] = str(folders[key])
            if create:
                Path(folders[key]).mkdir(parents=True, exist_ok=True)
    if threads is None:
        env.setdefault("nnUNet_def_n_proc", "2")
    else:
        env.update(nnUNet_def_n_proc=str(threads), OMP_NUM_THREADS=str(threads))
    env.update(nnUNet_n_proc_DA=str(n_proc_da), nnUNet_compile="false", MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def console_script(name: str) -> str:
    """Path of an installed console script: next to this interpreter first, then on ``PATH``.

    Raises:
        FileNotFoundError: naming the script when it is not installed.
    """
    path = Path(sys.executable).parent / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"console script {name} not found next to {sys.executable} nor on PATH; "
                                f"install nnunetv2 and this package into the environment")
    return found
