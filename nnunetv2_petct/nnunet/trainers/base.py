"""The PET/CT trainer family's base: supervised CT+PET lesion segmentation with nnU-Net defaults.

Conventions added on top of ``nnUNetTrainer``:
- the dataset must have exactly the channels ``_0000`` = CT and ``_0001`` = PET (checked before
  anything is built, with a message that says how to fix it);
- ``_tiny`` variants (2 epochs x 2 iterations, 1 validation iteration) for tests and CI.

Trainer variants override hooks only; mixins define no ``__init__`` because nnU-Net records the
constructor's arguments by introspection (SPEC §5).
"""

from __future__ import annotations

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_petct.conversion.channels import check_channels, pet_normalized_globally


class PETCTChannelCheckMixin:
    """Checks ``dataset.json`` channel names against :attr:`expected_channels` in ``initialize``."""

    expected_channels: tuple[str, ...] = ("CT", "PET")

    def initialize(self):
        if not self.was_initialized:
            check_channels(self.dataset_json["channel_names"], self.expected_channels,
                           pet_global=pet_normalized_globally(self.dataset_json))
        super().initialize()


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


class nnUNetTrainerPETCT(PETCTChannelCheckMixin, nnUNetTrainer):
    """Supervised CT+PET lesion segmentation with nnU-Net's defaults (1000 epochs x 250 iterations)."""


class nnUNetTrainerPETCT_tiny(TinyScheduleMixin, nnUNetTrainerPETCT):
    """:class:`nnUNetTrainerPETCT` with the tiny schedule."""
