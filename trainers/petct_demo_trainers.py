"""Re-exports for the nnUNet_extTrainer route (see README.md)."""

from nnunetv2_petct.nnunet.trainers.demo import (
    nnUNetTrainerPETCT_demo,
    nnUNetTrainerPETCTFinetune_demo,
    nnUNetTrainerPETCTLinearProbe_demo,
    nnUNetTrainerPETCTMAE_demo,
    nnUNetTrainerPETCTScratch_demo,
)

__all__ = ["nnUNetTrainerPETCT_demo", "nnUNetTrainerPETCTFinetune_demo", "nnUNetTrainerPETCTLinearProbe_demo",
           "nnUNetTrainerPETCTMAE_demo", "nnUNetTrainerPETCTScratch_demo"]
