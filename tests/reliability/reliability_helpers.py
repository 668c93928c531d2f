"""Helpers of the reliability corpus (importable by spawn worker processes: this folder is on sys.path).

Nothing here is used by the library. The faults are simulated where a test can reach them:

- :func:`write_shim`: a ``sitecustomize.py`` for ``PYTHONPATH`` that wraps ``SimpleITK.WriteImage`` in every
  interpreter started with it (the CLI process and its ``spawn`` workers): ``truncate`` cuts files whose
  name contains a given text to half their size after a "successful" write (what a full disk did to
  ``SimpleITK.WriteImage`` in the issue), ``slow`` sleeps before each write (to kill a run mid-way);
- :func:`read_only_tree`: a context manager that makes every write-like call (``open`` for writing,
  ``os.open`` with write flags, rename/replace/link/unlink/mkdir/rmdir) on paths under a folder fail
  with a chosen errno, in this process: as root, ``chmod`` does not stop writes, so a read-only or
  full folder cannot be made for real here. SimpleITK's C++ writer is not covered by it; tests using
  it check that no such write is attempted (the up-front probe stops the run before any case).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

SHIM = textwrap.dedent('''
    import os
    import time

    _MODE = os.environ.get("RELIABILITY_SHIM", "")
    if _MODE:
        import SimpleITK as _sitk

        _write = _sitk.WriteImage

        def WriteImage(image, fileName, *args, **kwargs):
            name = str(fileName)
            if _MODE == "slow":
                time.sleep(float(os.environ.get("RELIABILITY_SLEEP_S", "1.5")))
            _write(image, fileName, *args, **kwargs)
            target = os.environ.get("RELIABILITY_TRUNCATE", "")
            if _MODE == "truncate" and target and target in os.path.basename(name):
                with open(name, "rb") as f:
                    data = f.read()
                with open(name, "wb") as f:  # the write "succeeded" but only half of the file is there
                    f.write(data[: len(data) // 2])

        _sitk.WriteImage = WriteImage
''')


def write_shim(folder: Path) -> Path:
    """``folder/sitecustomize.py`` (see the module docstring); returns ``folder`` for ``PYTHONPATH``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(SHIM)
    return folder


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Environment for our CLIs: nnUNet_raw/preprocessed under ``tmp_path``, nothing inherited from nnU-Net."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    env.update(nnUNet_raw=str(tmp_path / "raw"), nnUNet_preprocessed=str(tmp_path / "pre"),
               PYTHONUNBUFFERED="1", **extra)
    return env


def run_cli(name: str, args, env, timeout: float = 300) -> subprocess.CompletedProcess:
    """A console script next to this interpreter, as users run it."""
    exe = Path(sys.executable).parent / name
    assert exe.exists(), f"console script {name} not installed; run make setup"
    return subprocess.run([str(exe), *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout)


def crash_worker(*_args):
    """A CaseSource loader that kills the process running it (like an out-of-memory kill)."""
    os._exit(9)


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


@contextlib.contextmanager
def read_only_tree(root: Path, code: int = errno.EROFS):
    """Every write-like call on a path under ``root`` raises ``OSError(code)`` (in this process)."""
    root = os.path.realpath(root)

    def inside(path) -> bool:
        try:
            p = os.path.realpath(os.fspath(path))
        except TypeError:
            return False
        return p == root or p.startswith(root + os.sep)

    def fail(path):
        raise OSError(code, os.strerror(code), os.fspath(path))

    real = {"open": builtins.open, "os_open": os.open, "replace": os.replace, "rename": os.rename,
            "link": os.link, "unlink": os.unlink, "mkdir": os.mkdir, "rmdir": os.rmdir, "rmtree": shutil.rmtree}
    attempts: list[str] = []

    def guard(name, check):
        def wrapper(*args, **kwargs):
            paths = check(*args, **kwargs)
            for p in paths:
                if p is not None and inside(p):
                    attempts.append(f"{name} {p}")
                    fail(p)
            return real[name](*args, **kwargs)
        return wrapper

    def open_paths(file, mode="r", *a, **k):
        return [file] if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+") else []

    def os_open_paths(path, flags, *a, **k):
        return [path] if flags & _WRITE_FLAGS else []

    def mkdir_paths(path, *a, **k):
        return [] if os.path.isdir(path) else [path]  # an existing folder: mkdir changes nothing

    patches = {
        (builtins, "open"): guard("open", open_paths),
        (os, "open"): guard("os_open", os_open_paths),
        (os, "replace"): guard("replace", lambda src, dst, *a, **k: [src, dst]),
        (os, "rename"): guard("rename", lambda src, dst, *a, **k: [src, dst]),
        (os, "link"): guard("link", lambda src, dst, *a, **k: [dst]),
        (os, "unlink"): guard("unlink", lambda p, *a, **k: [p]),
        (os, "mkdir"): guard("mkdir", mkdir_paths),
        (os, "rmdir"): guard("rmdir", lambda p, *a, **k: [p]),
        (shutil, "rmtree"): guard("rmtree", lambda p, *a, **k: [p]),
    }
    saved = {key: getattr(*key) for key in patches}
    try:
        for (mod, attr), fn in patches.items():
            setattr(mod, attr, fn)
        yield attempts
    finally:
        for (mod, attr), fn in saved.items():
            setattr(mod, attr, fn)


def descendants(pid: int) -> list[int]:
    """Process ids whose parent chain leads to ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        out += kids
        frontier += kids
    return out


def alive(pids) -> list[int]:
    """The ones of ``pids`` that still run (zombies count as gone)."""
    out = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.append(pid)
    return out


MODEL_TRAINER = "nnUNetTrainerPETCT"


def write_model_folder(root: Path, plans: dict | None = None, dataset: dict | None = None,
                       trainer: str = MODEL_TRAINER) -> Path:
    """A trained-model folder layout ``root/Dataset501_X/<trainer>__nnUNetPlans__3d_fullres`` with
    ``plans.json``, ``dataset.json`` and an empty ``fold_0`` (the checkpoint is the test's business)."""
    import json

    folder = root / "Dataset501_X" / f"{trainer}__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans or {}))
    (folder / "dataset.json").write_text(json.dumps(dataset or {"channel_names": {"0": "CT", "1": "PET"},
                                                                "labels": {"background": 0, "lesion": 1}}))
    return folder


def network_state(plans: dict, dataset: dict, in_channels: int | None = None, trainer: str = MODEL_TRAINER) -> dict:
    """The state dict of a freshly built (untrained) network of ``trainer`` for ``plans``/``dataset``."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunetv2_petct.nnunet.registry import find_trainer_class

    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    n_in = in_channels or determine_num_input_channels(pm, cm, dataset)
    net = find_trainer_class(trainer).build_network_architecture(
        pm, cm, n_in, pm.get_label_manager(dataset).num_segmentation_heads, enable_deep_supervision=False)
    return net.state_dict()


def model_checkpoint(weights: dict, trainer: str = MODEL_TRAINER, **extra) -> dict:
    """A weights-only checkpoint dict as nnU-Net's predictor reads it."""
    return {"network_weights": weights, "trainer_name": trainer, "init_args": {"configuration": "3d_fullres"},
            "inference_allowed_mirroring_axes": (0, 1, 2), **extra}


def untrained_model_folder(tiny_planned, root: Path) -> Path:
    """A model folder for the tiny plans of ``tiny_planned`` whose ``fold_0/checkpoint_final.pth`` holds the
    weights of an untrained network: enough to run ``nnUNetv2_petct_predict`` end to end (what it segments
    does not matter to the input-handling tests)."""
    import json

    import torch

    pre = Path(tiny_planned.env["nnUNet_preprocessed"]) / tiny_planned.dataset_name
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    dataset = json.loads((pre / "dataset.json").read_text())
    folder = write_model_folder(root, plans, dataset)
    torch.save(model_checkpoint(network_state(plans, dataset)), folder / "fold_0" / "checkpoint_final.pth")
    return folder
