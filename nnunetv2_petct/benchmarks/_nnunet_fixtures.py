"""Temporary nnU-Net trees for benchmarks: phantom raw datasets, planning, a "fine-tuned-like" model folder.

Everything runs the stock nnU-Net console scripts in subprocesses with an environment that points
``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results`` into a temporary root, so nothing outside that
root is read or written. nnU-Net itself is imported only inside the functions that need it
(:func:`write_model_folder`), never at import time.

Layout under ``root``: ``raw/``, ``preprocessed/``, ``results/`` (nnU-Net's three folders), plus whatever
the caller adds (e.g. ``predict_in/``).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from nnunetv2_petct.nnunet.env import console_script

logger = logging.getLogger(__name__)

#: nnU-Net's default trainer-folder naming: ``<trainer>__<plans>__<configuration>``.
DEFAULT_TRAINER = "nnUNetTrainerPETCT"
DEFAULT_PLANS = "nnUNetPlans"


def run_command(cmd: Sequence[str], env: dict[str, str], timeout_s: float | None = None) -> tuple[float, str]:
    """Run ``cmd``; return (wall seconds measured with ``perf_counter``, combined stdout+stderr).

    Raises RuntimeError with the command and the tail of its output on a non-zero exit.
    """
    t0 = time.perf_counter()
    proc = subprocess.run(list(cmd), env=env, capture_output=True, text=True, timeout=timeout_s)
    seconds = time.perf_counter() - t0
    out = proc.stdout + "\n" + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{out[-6000:]}")
    return seconds, out


def write_phantom_dataset(raw_root: Path, dataset_id: int, name: str, size: str, n_cases: int = 1,
                          seed: int = 0, labels: bool = True) -> Path:
    """Write ``n_cases`` lesion-bearing phantoms of ``size`` as ``raw_root/DatasetXXX_name`` (returns it).

    Every case has lesions (``labels=True``) or a body mask (``labels=False``), so nnU-Net's fingerprinting
    never sees an all-zero label.
    """
    from nnunetv2_petct.phantoms import make_phantom, write_nnunet_raw_dataset

    cases = [make_phantom(seed + i, size=size, lesion_free=False, case_id=f"case_{i:03d}")
             for i in range(n_cases)]
    return write_nnunet_raw_dataset(cases, raw_root, dataset_id, name, overwrite=True, labels=labels)


def plan_dataset(env: dict[str, str], dataset_id: int, preprocess: bool = False,
                 configuration: str = "3d_fullres", n_proc: int = 2, timeout_s: float = 3600) -> dict:
    """Run stock ``nnUNetv2_plan_and_preprocess -d ID -c CONFIG`` (``--no_pp`` unless ``preprocess``).

    Returns ``{"seconds", "plans_file", "preprocessed_folder"}``. ``nnUNet_n_proc_DA`` is set to ``n_proc``
    for this call (it must be > 0 for planning).
    """
    cmd = [console_script("nnUNetv2_plan_and_preprocess"), "-d", str(dataset_id), "-c", configuration,
           "-np", str(n_proc)]
    if not preprocess:
        cmd.append("--no_pp")
    seconds, _ = run_command(cmd, {**env, "nnUNet_n_proc_DA": str(max(1, n_proc))}, timeout_s)
    folders = sorted(Path(env["nnUNet_preprocessed"]).glob(f"Dataset{int(dataset_id):03d}_*"))
    if not folders:
        raise RuntimeError(f"planning wrote no Dataset{int(dataset_id):03d}_* folder under "
                           f"{env['nnUNet_preprocessed']}")
    return {"seconds": seconds, "plans_file": folders[0] / f"{DEFAULT_PLANS}.json",
            "preprocessed_folder": folders[0]}


def write_model_folder(preprocessed_folder: Path, results_root: Path, trainer_name: str = DEFAULT_TRAINER,
                       configuration: str = "3d_fullres", plans_identifier: str = DEFAULT_PLANS,
                       fold: int | str = 0, seed: int = 0) -> Path:
    """A results folder that stock ``nnUNetv2_predict`` accepts, with randomly initialized weights.

    Writes ``results_root/DatasetXXX_name/<trainer>__<plans>__<configuration>/`` with ``plans.json``,
    ``dataset.json``, ``dataset_fingerprint.json`` (copied from ``preprocessed_folder``) and
    ``fold_<fold>/checkpoint_final.pth`` holding the keys nnU-Net's trainer saves (``network_weights``,
    ``optimizer_state`` = None, ``grad_scaler_state`` = None, ``logging`` = {}, ``_best_ema`` = None,
    ``current_epoch`` = 0, ``init_args``, ``trainer_name``, ``inference_allowed_mirroring_axes``); the
    predictor reads ``network_weights``, ``init_args["configuration"]``, ``trainer_name`` and
    ``inference_allowed_mirroring_axes``. The weights come from ``trainer.build_network_architecture`` (the
    real architecture of the plans, deep supervision on as in training; the state-dict keys do not depend
    on it) after ``torch.manual_seed(seed)``: same compute as a trained model, meaningless output.
    Mirroring axes: (0, 1, 2) as nnU-Net's default for 3D patches.
    """
    import torch
    from nnunetv2.utilities.file_path_utilities import convert_trainer_plans_config_to_identifier
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunetv2_petct.nnunet.registry import find_trainer_class

    preprocessed_folder = Path(preprocessed_folder)
    plans = json.loads((preprocessed_folder / f"{plans_identifier}.json").read_text())
    dataset_json = json.loads((preprocessed_folder / "dataset.json").read_text())
    trainer_class = find_trainer_class(trainer_name)
    if trainer_class is None:
        raise ValueError(f"{trainer_name} is not one of this package's trainers")
    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    n_in = determine_num_input_channels(pm, cm, dataset_json)
    n_out = pm.get_label_manager(dataset_json).num_segmentation_heads
    torch.manual_seed(seed)
    network = trainer_class.build_network_architecture(pm, cm, n_in, n_out, True)
    dim = len(cm.patch_size)
    checkpoint = {
        "network_weights": network.state_dict(),
        "optimizer_state": None,
        "grad_scaler_state": None,
        "logging": {},
        "_best_ema": None,
        "current_epoch": 0,
        "init_args": {"plans": plans, "configuration": configuration, "fold": fold,
                      "dataset_json": dataset_json, "device": torch.device("cpu")},
        "trainer_name": trainer_name,
        "inference_allowed_mirroring_axes": tuple(range(dim)),
    }
    model_folder = Path(results_root) / preprocessed_folder.name / convert_trainer_plans_config_to_identifier(
        trainer_name, plans_identifier, configuration)
    fold_dir = model_folder / f"fold_{fold}"
    fold_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(preprocessed_folder / f"{plans_identifier}.json", model_folder / "plans.json")
    shutil.copy(preprocessed_folder / "dataset.json", model_folder / "dataset.json")
    fingerprint = preprocessed_folder / "dataset_fingerprint.json"
    if fingerprint.exists():
        shutil.copy(fingerprint, model_folder / "dataset_fingerprint.json")
    torch.save(checkpoint, fold_dir / "checkpoint_final.pth")
    n_params = sum(int(p.numel()) for p in network.parameters())
    logger.info("wrote random-weight model (%d parameters) to %s", n_params, model_folder)
    return model_folder


def crop_raw_images(images_dir: Path, case_id: str, out_dir: Path, size_zyx: Sequence[int],
                    n_channels: int = 2) -> tuple[int, int, int]:
    """Copy a centred (z, y, x) crop of every channel ``case_id_XXXX.nii.gz`` into ``out_dir``.

    The crop keeps the voxel spacing and physical position (SimpleITK slicing), is clipped to the image,
    and is centred on the image centre. Returns the crop's (z, y, x) shape.
    """
    import SimpleITK as sitk

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shape_zyx = None
    for c in range(n_channels):
        img = sitk.ReadImage(str(Path(images_dir) / f"{case_id}_{c:04d}.nii.gz"))
        size_xyz = img.GetSize()  # SimpleITK: (x, y, z)
        full_zyx = size_xyz[::-1]
        want = [min(int(s), int(f)) for s, f in zip(size_zyx, full_zyx)]
        lo = [(f - w) // 2 for f, w in zip(full_zyx, want)]
        cropped = img[lo[2]:lo[2] + want[2], lo[1]:lo[1] + want[1], lo[0]:lo[0] + want[0]]
        sitk.WriteImage(cropped, str(out_dir / f"{case_id}_{c:04d}.nii.gz"), useCompression=True)
        shape_zyx = tuple(want)
    return shape_zyx
