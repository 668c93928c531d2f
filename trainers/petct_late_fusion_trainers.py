"""Re-exports for the nnUNet_extTrainer route (see README.md): the separated-modality late-fusion probe."""

from nnunetv2_petct.nnunet.trainers.late_fusion import (
    nnUNetTrainerPETCTLateFusionProbe,
    nnUNetTrainerPETCTLateFusionProbe_tiny,
)

__all__ = ["nnUNetTrainerPETCTLateFusionProbe", "nnUNetTrainerPETCTLateFusionProbe_tiny"]
