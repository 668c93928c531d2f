"""nnU-Net's own predictor (``nnUNetPredictor``) behind the :class:`~nnunetv2_petct.clinical.pipeline.LesionPredictor`
interface of the clinical pipeline. Nothing of the prediction is re-implemented: preprocessing, sliding
window, mirroring (TTA), fold ensembling and the export back onto the input grid are nnU-Net's.

The model is chosen exactly as ``nnUNetv2_predict`` chooses it (``-d -c -tr -p -f -chk``, the folder
``$nnUNet_results/DatasetXXX_Name/<trainer>__<plans>__<configuration>``) or by its folder, as
``nnUNetv2_predict_from_modelfolder -m`` does.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from nnunetv2_petct.conversion.channels import ChannelOrderError, check_channels, pet_normalized_globally
from nnunetv2_petct.io import read_json

logger = logging.getLogger(__name__)

DEFAULT_FOLDS = ("0", "1", "2", "3", "4")


class ModelSelectionError(ValueError):
    """The model cannot be found or does not fit (missing folder, fold or checkpoint; wrong channels;
    unavailable device); the message says what to do."""


def resolve_model_folder(dataset: str | None = None, configuration: str | None = None,
                         trainer: str = "nnUNetTrainer", plans: str = "nnUNetPlans",
                         model_folder: str | os.PathLike | None = None) -> Path:
    """The trained model's folder: ``model_folder`` as given, or nnU-Net's results folder of
    (dataset, trainer, plans, configuration).

    Raises:
        ModelSelectionError: neither given, ``nnUNet_results`` unset, unknown dataset, or no such folder.
    """
    if model_folder is not None:
        folder = Path(model_folder)
    else:
        if dataset is None or configuration is None:
            raise ModelSelectionError("choose the model with -d DATASET -c CONFIGURATION [-tr -p -f] or -m MODEL_FOLDER")
        from nnunetv2.paths import nnUNet_results
        from nnunetv2.utilities.file_path_utilities import get_output_folder

        if not nnUNet_results:
            raise ModelSelectionError("nnUNet_results is not set: export it, or give the model folder with -m")
        try:
            folder = Path(get_output_folder(dataset, trainer, plans, configuration))
        except (RuntimeError, ValueError) as e:
            raise ModelSelectionError(f"dataset {dataset!r}: {e}") from None
    if not folder.is_dir():
        raise ModelSelectionError(f"model folder {folder} does not exist")
    for name in ("plans.json", "dataset.json"):
        if not (folder / name).is_file():
            raise ModelSelectionError(f"{folder} is not a trained nnU-Net model folder (no {name})")
    return folder


def _available_folds(folder: Path, checkpoint: str) -> list[str]:
    return sorted(p.parent.name[len("fold_"):] for p in folder.glob(f"fold_*/{checkpoint}"))


def _read_fold_checkpoint(path: Path) -> dict:
    """A fold's training checkpoint, read weights-only (nothing of the file runs) unless
    ``NNUNETV2_PETCT_TRUST_CHECKPOINT=1``; its keys checked. Raises :class:`ModelSelectionError` naming it."""
    import torch

    from nnunetv2_petct.transfer.weights import (
        TRUST_CHECKPOINT_ENV,
        IncompatibleCheckpointError,
        read_checkpoint_safely,
    )

    redo = "re-copy or re-download the model folder"
    if os.environ.get(TRUST_CHECKPOINT_ENV) == "1":
        logger.warning("%s=1: %s is unpickled without the weights-only check", TRUST_CHECKPOINT_ENV, path)
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - any failure of the trusted load is named with the file
            raise ModelSelectionError(f"{path}: cannot be read ({type(e).__name__}: {e}); {redo}") from None
    else:
        try:
            ckpt = read_checkpoint_safely(path, allow_numpy_scalars=True)
        except FileNotFoundError as e:
            raise ModelSelectionError(f"{e}; {redo}") from None
        except IncompatibleCheckpointError as e:
            raise ModelSelectionError(f"model checkpoint refused: {e}") from None
    if not isinstance(ckpt, dict):
        raise ModelSelectionError(f"{path}: not an nnU-Net training checkpoint (a {type(ckpt).__name__}, not a "
                                  f"dict); {redo}")
    missing = [k for k in ("network_weights", "trainer_name", "init_args") if k not in ckpt]
    if missing or not isinstance(ckpt.get("init_args"), dict) or "configuration" not in ckpt["init_args"]:
        what = ", ".join(repr(k) for k in missing) if missing else "'init_args.configuration'"
        raise ModelSelectionError(
            f"{path}: not an nnU-Net training checkpoint (no {what}; nnUNetv2_train writes network_weights, "
            f"trainer_name and init_args): a foundation or exported weights file belongs in -pretrained_weights, "
            f"not in a model folder; otherwise {redo}")
    return ckpt


def load_model_safely(model_folder: str | os.PathLike, folds: Sequence[str | int],
                      checkpoint: str = "checkpoint_final.pth") -> dict:
    """What nnU-Net's ``initialize_from_trained_model_folder`` builds, without unpickling anything.

    nnU-Net (2.8) reads every fold's checkpoint with ``torch.load(weights_only=False)``, which runs whatever
    code a crafted file holds. Here each checkpoint is read weights-only first
    (:func:`~nnunetv2_petct.transfer.weights.read_checkpoint_safely`; ``NNUNETV2_PETCT_TRUST_CHECKPOINT=1``
    is the documented override for a trusted legacy file), its keys are checked, the network is built by
    the trainer class named in the first checkpoint (as nnU-Net does) from the folder's plans.json and
    dataset.json, and every fold's weights are loaded into it once to prove they fit.

    Returns:
        ``{"network", "plans_manager", "configuration_manager", "parameters", "trainer_name",
        "inference_allowed_mirroring_axes"}`` for ``nnUNetPredictor.manual_initialization``.

    Raises:
        ModelSelectionError: a missing, empty, truncated, text, unsafe or foreign checkpoint, checkpoints of
            different trainers or configurations, an unknown trainer, or weights that do not fit the
            network (each naming the file and what to do).
    """
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name  # our hook wraps it
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = Path(model_folder)
    plans_manager = PlansManager(read_json(folder / "plans.json", "plans.json"))
    dataset_json = read_json(folder / "dataset.json", "dataset.json")
    parameters, first, first_path = [], None, None
    for f in [str(x) for x in folds]:
        path = folder / f"fold_{f}" / checkpoint
        ckpt = _read_fold_checkpoint(path)
        if first is None:
            first, first_path = ckpt, path
        elif (ckpt["trainer_name"], ckpt["init_args"]["configuration"]) != (
                first["trainer_name"], first["init_args"]["configuration"]):
            raise ModelSelectionError(
                f"{path} ({ckpt['trainer_name']}, {ckpt['init_args']['configuration']}) and {first_path} "
                f"({first['trainer_name']}, {first['init_args']['configuration']}) are not folds of one model")
        parameters.append(ckpt["network_weights"])
    trainer_name = str(first["trainer_name"])
    configuration = str(first["init_args"]["configuration"])
    try:
        configuration_manager = plans_manager.get_configuration(configuration)
    except Exception:  # noqa: BLE001 - nnU-Net raises a bare error for an unknown configuration
        raise ModelSelectionError(f"{first_path} was trained with configuration {configuration!r}, which "
                                  f"{folder / 'plans.json'} does not define; re-copy the model folder") from None
    try:
        trainer_class = recursive_find_trainer_class_by_name(trainer_name)
    except (Exception, SystemExit):  # noqa: BLE001 - nnU-Net's scan or our refusal of an unknown name
        trainer_class = None
    if trainer_class is None:
        raise ModelSelectionError(f"{first_path} was trained with {trainer_name}, a trainer class not found here "
                                  "(install the package that defines it, or put it in nnUNet_extTrainer)")
    network = trainer_class.build_network_architecture(
        plans_manager, configuration_manager, determine_num_input_channels(plans_manager, configuration_manager,
                                                                           dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=False)
    for f, params in zip(folds, parameters):
        try:
            network.load_state_dict(params)
        except (RuntimeError, KeyError, TypeError) as e:
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            detail = "; ".join(lines[1:3]) if len(lines) > 1 else (lines[0] if lines else type(e).__name__)
            raise ModelSelectionError(
                f"{folder / f'fold_{f}' / checkpoint}: its weights do not fit the network {trainer_name} builds "
                f"from {folder / 'plans.json'} ({detail[:300]}); the checkpoint belongs to another architecture "
                f"or plans: re-copy the model folder as one piece") from None
    network.load_state_dict(parameters[0])
    return {"network": network, "plans_manager": plans_manager, "configuration_manager": configuration_manager,
            "parameters": parameters, "trainer_name": trainer_name,
            "inference_allowed_mirroring_axes": first.get("inference_allowed_mirroring_axes")}


class NnUNetLesionPredictor:
    """A trained nnU-Net PET/CT lesion model, loaded once, predicting batches of studies.

    Args:
        model_folder: from :func:`resolve_model_folder`.
        folds: folds to ensemble (nnU-Net's default: 0-4); ``"all"`` allowed.
        checkpoint: checkpoint file name in each fold folder.
        device: ``"cuda"``, ``"cpu"`` or ``"mps"`` (as ``nnUNetv2_predict -device``).
        disable_tta: no mirroring at test time (faster, slightly less accurate).
        num_processes_preprocessing, num_processes_export: nnU-Net's ``-npp`` / ``-nps``; both 0 runs
            nnU-Net's sequential predictor (no worker processes).
        step_size: sliding-window step as a fraction of the patch (nnU-Net's default 0.5).
        quiet: no nnU-Net progress bars.

    Raises:
        ModelSelectionError: missing fold checkpoint, a dataset whose channels are not CT (_0000) and PET
            (_0001), a body-mask pretraining model, or an unavailable device.
    """

    def __init__(self, model_folder: str | os.PathLike, folds: Sequence[str | int] = DEFAULT_FOLDS,
                 checkpoint: str = "checkpoint_final.pth", device: str = "cuda", disable_tta: bool = False,
                 num_processes_preprocessing: int = 3, num_processes_export: int = 3, step_size: float = 0.5,
                 quiet: bool = False):
        self.model_folder = Path(model_folder)
        self.folds = [str(f) for f in folds]
        self.checkpoint = checkpoint
        self.device_name = device
        self.disable_tta = bool(disable_tta)
        self.npp, self.nps = int(num_processes_preprocessing), int(num_processes_export)
        self.step_size = float(step_size)
        self.quiet = quiet
        missing = [f for f in self.folds if not (self.model_folder / f"fold_{f}" / checkpoint).is_file()]
        if missing:
            available = _available_folds(self.model_folder, checkpoint)
            raise ModelSelectionError(
                f"{self.model_folder}: no {checkpoint} for fold(s) {', '.join(missing)} (folds with this checkpoint: "
                f"{', '.join(available) or 'none'}); choose folds with -f or the checkpoint with -chk")
        self.dataset_json = read_json(self.model_folder / "dataset.json", "dataset.json")
        try:
            check_channels(self.dataset_json.get("channel_names", {}),
                           pet_global=pet_normalized_globally(self.dataset_json))
        except ChannelOrderError as e:
            raise ModelSelectionError(f"{self.model_folder}: {e}") from None
        labels = {str(k): v for k, v in self.dataset_json.get("labels", {}).items()}
        if set(labels) - {"background"} == {"body"}:
            raise ModelSelectionError(f"{self.model_folder} segments the body (a pretraining pseudo-label model), "
                                      "not lesions: use a fine-tuned lesion model")
        self._predictor = None

    # ------------------------------------------------------------------ identification
    def _parts(self) -> tuple[str, str, str]:
        parts = self.model_folder.name.split("__")
        return (parts[0], parts[1], parts[2]) if len(parts) == 3 else (self.model_folder.name, "", "")

    def identification(self) -> dict:
        """Model folder, dataset, trainer, plans, configuration, folds, checkpoint, TTA and versions; ``name``,
        ``version`` and ``parameters`` are what the DICOM-SEG's algorithm identification says."""
        from importlib.metadata import version

        trainer, plans, configuration = self._parts()
        dataset = self.model_folder.parent.name
        versions = f"nnunetv2_petct {version('nnunetv2_petct')}, nnunetv2 {version('nnunetv2')}"
        return {
            "name": trainer, "version": versions,
            "parameters": {"model": f"{dataset}/{self.model_folder.name}", "folds": ",".join(self.folds),
                           "checkpoint": self.checkpoint, "tta": "off" if self.disable_tta else "mirroring"},
            "model_folder": str(self.model_folder), "dataset": dataset, "trainer": trainer, "plans": plans,
            "configuration": configuration, "folds": self.folds, "checkpoint": self.checkpoint,
            "test_time_augmentation": not self.disable_tta, "device": self.device_name,
            "step_size": self.step_size, "labels": self.dataset_json.get("labels", {}),
            "channel_names": self.dataset_json.get("channel_names", {}),
        }

    # ------------------------------------------------------------------ prediction
    def _get_predictor(self):
        if self._predictor is not None:
            return self._predictor
        import multiprocessing

        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        if self.device_name == "cpu":
            torch.set_num_threads(multiprocessing.cpu_count())  # as nnUNetv2_predict does
            device = torch.device("cpu")
        elif self.device_name == "cuda":
            if not torch.cuda.is_available():
                raise ModelSelectionError("-device cuda: torch sees no CUDA GPU here; use -device cpu")
            torch.set_num_threads(1)
            device = torch.device("cuda")
        elif self.device_name == "mps":
            device = torch.device("mps")
        else:
            raise ModelSelectionError(f"-device must be cpu, cuda or mps, got {self.device_name!r}")
        model = load_model_safely(self.model_folder, self.folds, self.checkpoint)
        with contextlib.redirect_stdout(io.StringIO()) if self.quiet else contextlib.nullcontext():
            predictor = nnUNetPredictor(tile_step_size=self.step_size, use_gaussian=True,
                                        use_mirroring=not self.disable_tta,
                                        perform_everything_on_device=self.device_name == "cuda",
                                        device=device, verbose=False, verbose_preprocessing=False,
                                        allow_tqdm=not self.quiet)
            predictor.manual_initialization(model["network"], model["plans_manager"], model["configuration_manager"],
                                            model["parameters"], self.dataset_json, model["trainer_name"],
                                            model["inference_allowed_mirroring_axes"])
        self._predictor = predictor
        return predictor

    def load(self) -> None:
        """Build the network and load the weights now (else at the first :meth:`predict`)."""
        self._get_predictor()

    def predict(self, cases: Mapping[str, Sequence[Path]], output_dir: Path) -> None:
        """``output_dir/<name>.nii.gz`` for each ``{name: [ct_file, pet_file]}`` (nnU-Net's predictor)."""
        predictor = self._get_predictor()
        names = list(cases)
        lists = [[str(p) for p in cases[n]] for n in names]
        outputs = [str(Path(output_dir) / n) for n in names]
        # nnU-Net talks on stdout; with quiet its in-process messages are dropped (errors still raise)
        with contextlib.redirect_stdout(io.StringIO()) if self.quiet else contextlib.nullcontext():
            if self.npp == 0 and self.nps == 0:
                predictor.predict_from_files_sequential(lists, outputs, save_probabilities=False, overwrite=True)
            else:
                predictor.predict_from_files(lists, outputs, save_probabilities=False, overwrite=True,
                                             num_processes_preprocessing=max(self.npp, 1),
                                             num_processes_segmentation_export=max(self.nps, 1))
