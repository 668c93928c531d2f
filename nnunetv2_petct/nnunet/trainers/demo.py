"""``_demo`` variants used by ``make demo``: the real trainers with :class:`DemoScheduleMixin`.

Class names are experiment identities (nnU-Net's output folders), so the demo's short runs never
mix with real ones.
"""

from __future__ import annotations

from nnunetv2_petct.nnunet.trainers.base import DemoScheduleMixin, nnUNetTrainerPETCT
from nnunetv2_petct.nnunet.trainers.finetune import (
    nnUNetTrainerPETCTFinetune,
    nnUNetTrainerPETCTLinearProbe,
    nnUNetTrainerPETCTScratch,
)
from nnunetv2_petct.nnunet.trainers.mae import nnUNetTrainerPETCTMAE


class nnUNetTrainerPETCTMAE_demo(DemoScheduleMixin, nnUNetTrainerPETCTMAE):
    """MAE pretraining, demo schedule."""


# A few hundred iterations are too few for the fine-tuning peak rate of 1e-3 to learn lesions at all;
# the demo fine-tunes at nnU-Net's default 1e-2 too (the from-scratch baseline uses 1e-2 anyway).
DEMO_FINETUNE_LR = 1e-2


class nnUNetTrainerPETCTFinetune_demo(DemoScheduleMixin, nnUNetTrainerPETCTFinetune):
    """Fine-tuning from a foundation checkpoint, demo schedule (peak lr 1e-2)."""

    finetune_initial_lr = DEMO_FINETUNE_LR


class nnUNetTrainerPETCTScratch_demo(DemoScheduleMixin, nnUNetTrainerPETCTScratch):
    """From random weights (peak lr 1e-2, warm-up, poly), demo schedule."""

    finetune_initial_lr = DEMO_FINETUNE_LR


class nnUNetTrainerPETCT_demo(DemoScheduleMixin, nnUNetTrainerPETCT):
    """Stock nnU-Net (lr 1e-2, poly, no warm-up), demo schedule."""


class nnUNetTrainerPETCTLinearProbe_demo(DemoScheduleMixin, nnUNetTrainerPETCTLinearProbe):
    """Linear probe on a frozen foundation model, demo schedule."""
