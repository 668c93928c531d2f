"""The PET/CT trainer family's base: supervised CT+PET lesion segmentation with nnU-Net defaults.

Conventions added on top of ``nnUNetTrainer``:
- the dataset must have exactly the channels ``_0000`` = CT and ``_0001`` = PET (checked before
  anything is built, with a message that says how to fix it);
- an optional training seed from the environment variable ``NNUNETV2_PETCT_SEED`` (nnU-Net itself
  does not seed training; see :class:`TrainingSeedMixin`), recorded in the fold folder;
- ``_tiny`` variants (2 epochs x 2 iterations, 1 validation iteration, no final validation) for tests
  and CI.

Trainer variants override hooks only; mixins define no ``__init__`` because nnU-Net records the
constructor's arguments by introspection (SPEC §5).
"""

from __future__ import annotations

import json
import os
import random

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_petct.conversion.channels import check_channels, pet_normalized_globally

SEED_ENV = "NNUNETV2_PETCT_SEED"
SEED_FILE = "training_seed.json"


def training_seed_from_env(environ=None) -> int | None:
    """The integer in ``$NNUNETV2_PETCT_SEED``, or None when it is unset or empty.

    Raises:
        ValueError: the variable is set to something that is not an integer.
    """
    value = (os.environ if environ is None else environ).get(SEED_ENV, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{SEED_ENV}={value!r} is not an integer") from None


def read_training_seed(fold_dir) -> dict | None:
    """The ``training_seed.json`` record of a fold folder, or None when there is none."""
    path = os.path.join(fold_dir, SEED_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


class PETCTChannelCheckMixin:
    """Checks ``dataset.json`` channel names against :attr:`expected_channels` in ``initialize``."""

    expected_channels: tuple[str, ...] = ("CT", "PET")

    def initialize(self):
        if not self.was_initialized:
            check_channels(self.dataset_json["channel_names"], self.expected_channels,
                           pet_global=pet_normalized_globally(self.dataset_json))
        super().initialize()


class TrainingSeedMixin:
    """Seed the run from ``$NNUNETV2_PETCT_SEED`` (if set) before the network is built.

    nnU-Net 2.8 does not seed training. With the variable set, ``initialize`` seeds Python's
    ``random``, numpy's global generator and torch (CPU and CUDA) with ``seed + rank`` (rank = the
    global DDP rank, 0 otherwise), so the network initialisation (the random output layer of a
    pretrained run) and everything drawn in the main process differ between seeds and repeat for the
    same seed. nnU-Net's background data-augmentation workers draw their own randomness, so runs are
    *not* bit-reproducible (with ``nnUNet_n_proc_DA=0`` the augmentation runs in the main process and
    follows the seed too). The seed is written to ``training_seed.json`` in the fold folder when
    training starts (not for continued runs, which keep the file of their start) and to the log.
    The label-efficiency runner sets the variable for each repeated run.
    """

    def initialize(self):
        if not self.was_initialized:
            self._petct_seed = training_seed_from_env()
            if self._petct_seed is not None:
                import torch.distributed as dist

                rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
                s = self._petct_seed + rank
                random.seed(s)
                np.random.seed(s % 2**32)
                torch.manual_seed(s)
                if torch.cuda.is_available():
                    torch.cuda.manual_seed_all(s)
        super().initialize()

    def on_train_start(self):
        super().on_train_start()
        seed = getattr(self, "_petct_seed", None)
        self.print_to_log_file(f"training seed: {seed if seed is not None else f'none ({SEED_ENV} not set)'}")
        if self.local_rank == 0 and self.current_epoch == 0:
            record = {
                "seed": seed,
                "source": SEED_ENV if seed is not None else None,
                "trainer": self.__class__.__name__,
                "seeded": "python random, numpy, torch (seed + DDP rank) before the network is built"
                          if seed is not None else "nothing (nnU-Net default: unseeded)",
                "bit_reproducible": False,
            }
            os.makedirs(self.output_folder, exist_ok=True)
            with open(os.path.join(self.output_folder, SEED_FILE), "w") as f:
                json.dump(record, f, indent=2)


class SkipFinalValidationMixin:
    """No final validation (``perform_actual_validation``) after training.

    For the ``_tiny`` smoke variants only: on a small CPU, nnU-Net's final validation (worker pools for
    export and metrics) costs more than the tiny training itself, and the label-efficiency runner
    evaluates on the held-out test set instead. ``nnUNetv2_train --val`` still validates: the skip only
    applies right after training in the same process.
    """

    def run_training(self):
        super().run_training()
        self._petct_just_trained = True

    def perform_actual_validation(self, save_probabilities: bool = False):
        if getattr(self, "_petct_just_trained", False):
            self.print_to_log_file("final validation skipped (_tiny variant); run nnUNetv2_train --val for it")
            return None
        return super().perform_actual_validation(save_probabilities)


class TinyScheduleMixin:
    """2 epochs of 2 iterations and 1 validation iteration: for tests, CI and smoke runs.

    Put it *first* in the bases so its ``initialize`` sets the schedule before the optimizer and
    the learning-rate schedule are built from ``num_epochs``.
    """

    tiny_num_epochs = 2
    tiny_iterations_per_epoch = 2
    tiny_val_iterations_per_epoch = 1

    def initialize(self):
        if not self.was_initialized:
            self.num_epochs = self.tiny_num_epochs
            self.num_iterations_per_epoch = self.tiny_iterations_per_epoch
            self.num_val_iterations_per_epoch = self.tiny_val_iterations_per_epoch
        super().initialize()


class DemoScheduleMixin(TinyScheduleMixin):
    """A short schedule for ``make demo`` on a CPU: 30 epochs of 12 iterations, 2 validation iterations."""

    tiny_num_epochs = 30
    tiny_iterations_per_epoch = 12
    tiny_val_iterations_per_epoch = 2


class nnUNetTrainerPETCT(TrainingSeedMixin, PETCTChannelCheckMixin, nnUNetTrainer):
    """Supervised CT+PET lesion segmentation with nnU-Net's defaults (1000 epochs x 250 iterations, SGD
    peak lr 1e-2, poly decay, no warm-up): the "stock nnU-Net" baseline."""


class nnUNetTrainerPETCT_tiny(TinyScheduleMixin, SkipFinalValidationMixin, nnUNetTrainerPETCT):
    """:class:`nnUNetTrainerPETCT` with the tiny schedule (no final validation)."""
