"""Re-exports for the nnUNet_extTrainer route (see README.md)."""

from nnunetv2_petct.nnunet.trainers.demo import (
    nnUNetTrainerPETCT_bench,
    nnUNetTrainerPETCT_demo,
    nnUNetTrainerPETCTFinetune_bench,
    nnUNetTrainerPETCTFinetune_demo,
    nnUNetTrainerPETCTLinearProbe_bench,
    nnUNetTrainerPETCTLinearProbe_demo,
    nnUNetTrainerPETCTMAE_bench,
    nnUNetTrainerPETCTMAE_demo,
    nnUNetTrainerPETCTScratch_bench,
    nnUNetTrainerPETCTScratch_demo,
)

__all__ = ["nnUNetTrainerPETCT_bench", "nnUNetTrainerPETCT_demo", "nnUNetTrainerPETCTFinetune_bench",
           "nnUNetTrainerPETCTFinetune_demo", "nnUNetTrainerPETCTLinearProbe_bench", "nnUNetTrainerPETCTLinearProbe_demo",
           "nnUNetTrainerPETCTMAE_bench", "nnUNetTrainerPETCTMAE_demo", "nnUNetTrainerPETCTScratch_bench",
           "nnUNetTrainerPETCTScratch_demo"]
