"""The PET/CT trainer family's base: supervised CT+PET lesion segmentation with nnU-Net defaults.

Conventions added on top of ``nnUNetTrainer``:
- the dataset must have exactly the channels ``_0000`` = CT and ``_0001`` = PET (checked before
  anything is built, with a message that says how to fix it), by name (``dataset.json``) *and* by
  content (nnU-Net's ``dataset_fingerprint.json``: channel 0 must look like HU, channel 1 like
  SUV/counts; :func:`~nnunetv2_petct.conversion.channels.channel_content_problems`);
- a ``-pretrained_weights`` file is checked before nnU-Net's loader reads it
  (:class:`CheckedPretrainedWeightsMixin`): nnU-Net loads it with ``torch.load(weights_only=False)``,
  which runs code stored in the file;
- training checkpoints (``checkpoint_latest/best/final.pth``) are written atomically and verified, with
  plain Python values only, so they load with ``torch.load(weights_only=True)``; ``--c`` with a
  corrupt checkpoint falls back to the newest readable one (:class:`SafeCheckpointMixin`);
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
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_petct.conversion.channels import (
    CHANNEL_CONTENT_OVERRIDE_ENV,
    ChannelOrderError,
    channel_content_message,
    channel_content_problems,
    check_channels,
    pet_normalized_globally,
)
from nnunetv2_petct.io import atomic_write, write_json_atomic
from nnunetv2_petct.transfer.foundation import to_weights_only_safe
from nnunetv2_petct.transfer.weights import (
    TRUST_CHECKPOINT_ENV,
    IncompatibleCheckpointError,
    check_pretrained_weights_file,
    read_checkpoint_safely,
)

#: Training checkpoints nnU-Net's ``--c`` chooses from, in its order of preference.
TRAINING_CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")


class PretrainedWeightsFileError(RuntimeError):
    """The ``-pretrained_weights`` file is unsafe, corrupt or does not fit; the message names it and the fix."""


class CheckpointReadError(RuntimeError):
    """A training checkpoint for ``--c``/``--val`` cannot be read and no other one can stand in."""


def pretrained_file_from_argv(argv: list[str] | None = None) -> str | None:
    """The value after ``-pretrained_weights`` in ``argv`` (``sys.argv``), or None."""
    argv = sys.argv if argv is None else argv
    for i, a in enumerate(argv):
        if a == "-pretrained_weights" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("-pretrained_weights="):
            return a.split("=", 1)[1]
    return None


def unwrap_network(network) -> torch.nn.Module:
    """The plain module inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    mod = network.module if isinstance(getattr(network, "module", None), torch.nn.Module) else network
    return getattr(mod, "_orig_mod", mod)


def plain_checkpoint(obj: Any, where: str = "checkpoint") -> Any:
    """``obj`` with every value ``torch.load(weights_only=True)`` accepts (nnU-Net's logger and EMA hold numpy
    values); tuples and sets keep their type (:func:`nnunetv2_petct.transfer.foundation.to_weights_only_safe`).

    Raises:
        NotWeightsOnlySafeError: (a TypeError) another object, named by its place (e.g. ``checkpoint.logging.x``).
    """
    return to_weights_only_safe(obj, where, tuples_as_lists=False)


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
    """Checks ``dataset.json`` channel names against :attr:`expected_channels` and the channels' content
    (nnU-Net's dataset fingerprint) in ``initialize``, before anything is built."""

    expected_channels: tuple[str, ...] = ("CT", "PET")

    def initialize(self):
        if not self.was_initialized:
            check_channels(self.dataset_json["channel_names"], self.expected_channels,
                           pet_global=pet_normalized_globally(self.dataset_json))
            self._check_channel_content()
        super().initialize()

    def _check_channel_content(self) -> None:
        """Channel 0 must look like HU and channel 1 like PET in ``dataset_fingerprint.json`` (rules:
        :func:`~nnunetv2_petct.conversion.channels.channel_content_problems`); the env variable
        ``NNUNETV2_PETCT_SKIP_CHANNEL_CONTENT_CHECK=1`` logs a failure instead of raising."""
        base = getattr(self, "preprocessed_dataset_folder_base", None)
        path = os.path.join(base, "dataset_fingerprint.json") if base else None
        if not path or not os.path.isfile(path):
            self.print_to_log_file(f"channel content check skipped: no dataset_fingerprint.json in {base}")
            return
        try:
            with open(path) as f:
                props = json.load(f)["foreground_intensity_properties_per_channel"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            self.print_to_log_file(f"channel content check skipped: {path} unreadable ({e})")
            return
        problems, notes = channel_content_problems(props, self.expected_channels)
        for note in notes:
            self.print_to_log_file(f"channel content: {note}")
        if not problems:
            self.print_to_log_file(f"channel content check passed ({', '.join(self.expected_channels)})")
            return
        message = channel_content_message(problems, path)
        if os.environ.get(CHANNEL_CONTENT_OVERRIDE_ENV) == "1":
            self.print_to_log_file(f"WARNING: channel content check overridden by {CHANNEL_CONTENT_OVERRIDE_ENV}=1; "
                                   f"training continues although {message}")
            return
        raise ChannelOrderError(message)


class CheckedPretrainedWeightsMixin:
    """Check the ``-pretrained_weights`` file at the end of ``initialize``, before nnU-Net's loader reads it.

    ``nnUNetv2_train`` (2.8.1, ``run_training.maybe_load_checkpoint``) calls ``trainer.initialize()`` and
    then ``load_pretrained_weights``, which uses ``torch.load(weights_only=False)``: a crafted file would
    run its code there. Here the file (found in ``sys.argv``, as nnU-Net does not tell trainers) is read
    with ``weights_only=True`` first and compared with the network built by ``initialize``
    (:func:`~nnunetv2_petct.transfer.weights.check_pretrained_weights_file`): an unsafe, empty,
    truncated or text file, or a checkpoint of another architecture (summarized: the first differing
    tensors and the fix), stops the run with :class:`PretrainedWeightsFileError`. ``NNUNETV2_PETCT_TRUST_
    CHECKPOINT=1`` skips the check for a trusted legacy file (logged). Programmatic ``run_training(...,
    pretrained_weights=...)`` is not seen (no argv).
    """

    def initialize(self):
        first = not self.was_initialized
        super().initialize()
        if first:
            self._check_pretrained_weights_file()

    def _check_pretrained_weights_file(self) -> None:
        path = pretrained_file_from_argv()
        if path is None:
            return
        if os.environ.get(TRUST_CHECKPOINT_ENV) == "1":
            self.print_to_log_file(f"WARNING: {TRUST_CHECKPOINT_ENV}=1: {path} is passed to nnU-Net's loader "
                                   f"(torch.load weights_only=False) without the weights-only check")
            return
        try:
            report = check_pretrained_weights_file(path, unwrap_network(self.network))
        except (FileNotFoundError, IncompatibleCheckpointError) as e:
            raise PretrainedWeightsFileError(str(e)) from None
        self.print_to_log_file(f"-pretrained_weights {path}: weights-only safe and fits the network "
                               f"({report.n_transferred} tensors will be transferred)")


class SafeCheckpointMixin:
    """Training checkpoints that cannot be half-written and load with ``weights_only=True``.

    ``save_checkpoint`` writes nnU-Net's checkpoint dict (:meth:`checkpoint_payload`; subclasses add
    entries) with plain Python values (:func:`plain_checkpoint`: nnU-Net's logger and EMA hold numpy
    scalars) through :func:`nnunetv2_petct.io.atomic_write` (temporary file, fsync, zip verified, then
    renamed): a crash or a full disk never leaves a truncated checkpoint in place of the previous one.

    ``load_checkpoint`` (``--c``, ``--val``) reads with ``weights_only=True`` (numpy scalars of older
    checkpoints allowed). A corrupt file is reported and the newest readable other training checkpoint
    of the fold folder is used instead (``checkpoint_final``/``latest``/``best``, the highest epoch
    wins); when none can be read, :class:`CheckpointReadError` names the corrupt file.
    """

    def checkpoint_payload(self) -> dict:
        """nnU-Net 2.8.1's checkpoint dict (``nnUNetTrainer.save_checkpoint``)."""
        return {
            "network_weights": unwrap_network(self.network).state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
        }

    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        checkpoint = plain_checkpoint(self.checkpoint_payload())
        with atomic_write(filename) as tmp:
            torch.save(checkpoint, tmp)

    def resolve_training_checkpoint(self, filename: str | os.PathLike) -> tuple[Path, dict]:
        """``(file, checkpoint dict)`` to resume from: ``filename`` when it reads with ``weights_only=True``,
        else the newest readable other training checkpoint of its folder (a warning names the corrupt file).

        Raises:
            CheckpointReadError: ``filename`` is unreadable and no other checkpoint can stand in.
        """
        path = Path(filename)
        try:
            return path, read_checkpoint_safely(path, self.device, allow_numpy_scalars=True)
        except (FileNotFoundError, IncompatibleCheckpointError) as e:
            reason = str(e)
        candidates = []
        for name in TRAINING_CHECKPOINTS:
            other = path.parent / name
            if other == path or not other.is_file():
                continue
            try:
                ckpt = read_checkpoint_safely(other, self.device, allow_numpy_scalars=True)
            except (FileNotFoundError, IncompatibleCheckpointError) as e:
                self.print_to_log_file(f"WARNING: {other.name} cannot be used either: {e}")
                continue
            if isinstance(ckpt, Mapping) and "network_weights" in ckpt:
                candidates.append((int(ckpt.get("current_epoch", 0)), other, ckpt))
        if not candidates:
            raise CheckpointReadError(
                f"{reason}. No other checkpoint in {path.parent} can stand in. Delete {path.name} to start the "
                f"training over (without --c), or restore it from a backup.")
        epoch, other, ckpt = max(candidates, key=lambda c: c[0])
        self.print_to_log_file(f"WARNING: {reason}. Continuing from {other.name} instead (epoch {epoch}); the "
                               f"epochs after it are trained again.")
        return other, ckpt

    def read_training_checkpoint(self, filename_or_checkpoint) -> dict:
        """The checkpoint dict of :meth:`resolve_training_checkpoint` (a dict passes through)."""
        if not isinstance(filename_or_checkpoint, (str, os.PathLike)):
            return filename_or_checkpoint
        return self.resolve_training_checkpoint(filename_or_checkpoint)[1]

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        if not self.was_initialized:
            self.initialize()
        if isinstance(filename_or_checkpoint, (str, os.PathLike)):
            path, checkpoint = self.resolve_training_checkpoint(filename_or_checkpoint)
            # nnU-Net 2.8.1 reads the file itself (its dict branch is broken); this file was just read
            # with weights_only=True, so its pickle holds only plain types and tensors
            super().load_checkpoint(str(path))
        else:
            checkpoint = filename_or_checkpoint
            super().load_checkpoint(checkpoint)
        self.on_checkpoint_loaded(checkpoint)

    def on_checkpoint_loaded(self, checkpoint: dict) -> None:
        """Hook: after nnU-Net restored its state from ``checkpoint`` (subclasses restore their own)."""


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
            write_json_atomic(record, os.path.join(self.output_folder, SEED_FILE))


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


class nnUNetTrainerPETCT(TrainingSeedMixin, PETCTChannelCheckMixin, CheckedPretrainedWeightsMixin, SafeCheckpointMixin,
                         nnUNetTrainer):
    """Supervised CT+PET lesion segmentation with nnU-Net's defaults (1000 epochs x 250 iterations, SGD
    peak lr 1e-2, poly decay, no warm-up): the "stock nnU-Net" baseline."""


class nnUNetTrainerPETCT_tiny(TinyScheduleMixin, SkipFinalValidationMixin, nnUNetTrainerPETCT):
    """:class:`nnUNetTrainerPETCT` with the tiny schedule (no final validation)."""
