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


_REDOWNLOAD = "copy or download the model folder again"


def read_model_checkpoint(path: str | os.PathLike) -> dict:
    """One fold's checkpoint of a trained model, read without running code stored in it.

    ``torch.load(weights_only=True)`` (numpy scalars allowed, as nnU-Net's own checkpoints hold them) after
    the header checks of :func:`~nnunetv2_petct.transfer.weights.check_checkpoint_file`. With
    ``NNUNETV2_PETCT_TRUST_CHECKPOINT=1`` a trusted legacy file is unpickled as it is (code in it runs).
    The result has ``network_weights`` (a state dict), ``trainer_name`` and ``init_args["configuration"]``.

    Raises:
        ModelSelectionError: naming the file: missing, empty, truncated, text, not weights-only (with how
            to convert a trusted file), or lacking what a trained nnU-Net checkpoint holds.
    """
    import torch

    from nnunetv2_petct.transfer.weights import (
        TRUST_CHECKPOINT_ENV,
        IncompatibleCheckpointError,
        UnsafeCheckpointError,
        import_trusted_checkpoint,
        read_checkpoint_safely,
    )

    path = Path(path)
    trusted = os.environ.get(TRUST_CHECKPOINT_ENV, "") not in ("", "0")
    try:
        if trusted:
            logger.warning("%s=1: %s is unpickled without the weights-only check", TRUST_CHECKPOINT_ENV, path)
            obj = import_trusted_checkpoint(path)
        else:
            obj = read_checkpoint_safely(path, allow_numpy_scalars=True)
    except FileNotFoundError as e:
        raise ModelSelectionError(f"{e}; {_REDOWNLOAD}") from None
    except UnsafeCheckpointError as e:
        raise ModelSelectionError(f"model checkpoint refused: {e}") from None
    except IncompatibleCheckpointError as e:
        raise ModelSelectionError(f"model checkpoint unreadable: {e}; {_REDOWNLOAD}") from None
    if not isinstance(obj, dict):
        raise ModelSelectionError(f"{path} holds a {type(obj).__name__}, not an nnU-Net training checkpoint "
                                  f"(a dict with network_weights, trainer_name, init_args); {_REDOWNLOAD}")
    missing = [k for k in ("network_weights", "trainer_name", "init_args") if k not in obj]
    init_args = obj.get("init_args")
    if not missing and not (isinstance(init_args, dict) and isinstance(init_args.get("configuration"), str)):
        missing = ["init_args['configuration']"]
    weights = obj.get("network_weights")
    if not missing and not (isinstance(weights, dict) and weights
                            and all(isinstance(v, torch.Tensor) for v in weights.values())):
        missing = ["network_weights (a state dict of tensors)"]
    if not missing and not isinstance(obj.get("trainer_name"), str):
        missing = ["trainer_name (a class name)"]
    if missing:
        raise ModelSelectionError(f"{path} is not a checkpoint written by nnU-Net training: it lacks "
                                  f"{', '.join(missing)} (a bare state dict or a pretraining file?); use the "
                                  f"fold's checkpoint_final.pth of a trained model, or {_REDOWNLOAD}")
    return obj


def _trainer_class(name: str):
    from nnunetv2_petct.nnunet.registry import find_trainer_class

    cls = find_trainer_class(name)
    if cls is not None:
        return cls
    if name == "nnUNetTrainer":  # nnU-Net's own scan imports modules that fail next to a CPU torch
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

        return nnUNetTrainer
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        cls = recursive_find_trainer_class_by_name(name)
    except Exception as e:  # noqa: BLE001 - nnU-Net's scan imports arbitrary modules
        raise ModelSelectionError(f"trainer {name!r} of the checkpoint cannot be found ({type(e).__name__}: "
                                  f"{str(e)[:200]})") from None
    if cls is None:
        raise ModelSelectionError(f"the checkpoint was trained with {name!r}, a trainer class not installed here; "
                                  "install the package that defines it")
    return cls


def initialize_predictor_safely(predictor, model_folder: str | os.PathLike, folds: Sequence[str | int],
                                checkpoint_name: str = "checkpoint_final.pth") -> None:
    """What ``nnUNetPredictor.initialize_from_trained_model_folder`` does, with every fold's checkpoint read by
    :func:`read_model_checkpoint` (no unpickling of code) and the network built here from plans.json,
    dataset.json and the checkpoint's trainer class; then ``predictor.manual_initialization``.

    Raises:
        ModelSelectionError: a checkpoint unreadable or refused, folds of different trainers or
            configurations, a configuration missing in plans.json, or weights of another architecture
            (the first differing tensors named).
    """
    import inspect

    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = Path(model_folder)
    dataset_json = read_json(folder / "dataset.json", "dataset.json")
    plans_manager = PlansManager(read_json(folder / "plans.json", "plans.json"))
    parameters, first = [], None
    for f in folds:
        path = folder / f"fold_{f}" / checkpoint_name
        ckpt = read_model_checkpoint(path)
        ident = (ckpt["trainer_name"], ckpt["init_args"]["configuration"])
        if first is None:
            first = (path, ident, ckpt.get("inference_allowed_mirroring_axes"))
        elif ident != first[1]:
            raise ModelSelectionError(f"{path} was trained with {ident[0]} / {ident[1]}, {first[0]} with "
                                      f"{first[1][0]} / {first[1][1]}: the folds are not of one model")
        parameters.append(ckpt["network_weights"])
    if first is None:
        raise ModelSelectionError(f"{folder}: no folds chosen")
    first_path, (trainer_name, configuration), mirror_axes = first
    try:
        configuration_manager = plans_manager.get_configuration(configuration)
    except (KeyError, RuntimeError, ValueError) as e:
        raise ModelSelectionError(f"{first_path} was trained with configuration {configuration!r}, which "
                                  f"{folder / 'plans.json'} does not have ({e})") from None
    trainer_class = _trainer_class(trainer_name)
    n_in = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    n_out = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    if "plans_manager" in inspect.signature(trainer_class.build_network_architecture).parameters:
        network = trainer_class.build_network_architecture(plans_manager, configuration_manager, n_in, n_out,
                                                           enable_deep_supervision=False)
    else:  # nnU-Net's older signature
        network = trainer_class.build_network_architecture(
            configuration_manager.network_arch_class_name, configuration_manager.network_arch_init_kwargs,
            configuration_manager.network_arch_init_kwargs_req_import, n_in, n_out, enable_deep_supervision=False)
    expected = network.state_dict()
    for f, params in zip(folds, parameters):
        path = folder / f"fold_{f}" / checkpoint_name
        differ = [k for k in expected if k in params and tuple(params[k].shape) != tuple(expected[k].shape)]
        absent = [k for k in expected if k not in params]
        extra = [k for k in params if k not in expected]
        if differ or absent or extra:
            what = "; ".join(x for x in (
                (f"{len(differ)} tensor(s) of another shape, e.g. {differ[0]}: {tuple(params[differ[0]].shape)} "
                 f"in the file, {tuple(expected[differ[0]].shape)} expected") if differ else "",
                f"{len(absent)} missing, e.g. {absent[0]}" if absent else "",
                f"{len(extra)} unexpected, e.g. {extra[0]}" if extra else "") if x)
            raise ModelSelectionError(
                f"{path} does not fit the network that {trainer_name} builds from {folder / 'plans.json'} "
                f"(configuration {configuration}): {what}. The checkpoint is of another architecture: use the "
                f"plans.json and dataset.json it was trained with, or {_REDOWNLOAD}")
    network.load_state_dict(parameters[0])
    predictor.manual_initialization(network, plans_manager, configuration_manager, parameters, dataset_json,
                                    trainer_name, tuple(mirror_axes) if mirror_axes is not None else None)


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
        folds = [f if f == "all" else int(f) for f in self.folds]
        with contextlib.redirect_stdout(io.StringIO()) if self.quiet else contextlib.nullcontext():
            predictor = nnUNetPredictor(tile_step_size=self.step_size, use_gaussian=True,
                                        use_mirroring=not self.disable_tta,
                                        perform_everything_on_device=self.device_name == "cuda",
                                        device=device, verbose=False, verbose_preprocessing=False,
                                        allow_tqdm=not self.quiet)
            initialize_predictor_safely(predictor, self.model_folder, folds, self.checkpoint)
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
