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
            predictor.initialize_from_trained_model_folder(str(self.model_folder), folds,
                                                           checkpoint_name=self.checkpoint)
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
