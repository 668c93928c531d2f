"""Re-exports for the nnUNet_extTrainer route (see README.md)."""

from nnunetv2_petct.nnunet.trainers.base import nnUNetTrainerPETCT, nnUNetTrainerPETCT_tiny

__all__ = ["nnUNetTrainerPETCT", "nnUNetTrainerPETCT_tiny"]
