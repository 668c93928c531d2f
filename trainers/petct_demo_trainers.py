"""Re-exports for the nnUNet_extTrainer route (see README.md)."""

from nnunetv2_petct.nnunet.trainers.demo import (
    nnUNetTrainerPETCT_bench,
    nnUNetTrainerPETCT_cpu1h,
    nnUNetTrainerPETCT_demo,
    nnUNetTrainerPETCTFinetune_bench,
    nnUNetTrainerPETCTFinetune_cpu1h,
    nnUNetTrainerPETCTFinetune_demo,
    nnUNetTrainerPETCTLinearProbe_bench,
    nnUNetTrainerPETCTLinearProbe_cpu1h,
    nnUNetTrainerPETCTLinearProbe_demo,
    nnUNetTrainerPETCTMAE_bench,
    nnUNetTrainerPETCTMAE_cpu1h,
    nnUNetTrainerPETCTMAE_demo,
    nnUNetTrainerPETCTScratch_bench,
    nnUNetTrainerPETCTScratch_cpu1h,
    nnUNetTrainerPETCTScratch_demo,
)

__all__ = [
    "nnUNetTrainerPETCT_bench",
    "nnUNetTrainerPETCT_cpu1h",
    "nnUNetTrainerPETCT_demo",
    "nnUNetTrainerPETCTFinetune_bench",
    "nnUNetTrainerPETCTFinetune_cpu1h",
    "nnUNetTrainerPETCTFinetune_demo",
    "nnUNetTrainerPETCTLinearProbe_bench",
    "nnUNetTrainerPETCTLinearProbe_cpu1h",
    "nnUNetTrainerPETCTLinearProbe_demo",
    "nnUNetTrainerPETCTMAE_bench",
    "nnUNetTrainerPETCTMAE_cpu1h",
    "nnUNetTrainerPETCTMAE_demo",
    "nnUNetTrainerPETCTScratch_bench",
    "nnUNetTrainerPETCTScratch_cpu1h",
    "nnUNetTrainerPETCTScratch_demo",
]
