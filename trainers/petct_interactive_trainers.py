"""Re-exports for the nnUNet_extTrainer route (see README.md)."""

from nnunetv2_petct.nnunet.trainers.interactive import (
    nnUNetTrainerPETCTInteractive,
    nnUNetTrainerPETCTInteractive_bench,
    nnUNetTrainerPETCTInteractive_cpu1h,
    nnUNetTrainerPETCTInteractive_demo,
    nnUNetTrainerPETCTInteractive_tiny,
    nnUNetTrainerPETCTInteractiveScratch,
    nnUNetTrainerPETCTInteractiveScratch_bench,
    nnUNetTrainerPETCTInteractiveScratch_cpu1h,
    nnUNetTrainerPETCTInteractiveScratch_demo,
    nnUNetTrainerPETCTInteractiveScratch_tiny,
    nnUNetTrainerPETCTInteractiveStock,
    nnUNetTrainerPETCTInteractiveStock_bench,
    nnUNetTrainerPETCTInteractiveStock_cpu1h,
    nnUNetTrainerPETCTInteractiveStock_demo,
    nnUNetTrainerPETCTInteractiveStock_tiny,
)

__all__ = [
    "nnUNetTrainerPETCTInteractive",
    "nnUNetTrainerPETCTInteractiveScratch",
    "nnUNetTrainerPETCTInteractiveScratch_bench",
    "nnUNetTrainerPETCTInteractiveScratch_cpu1h",
    "nnUNetTrainerPETCTInteractiveScratch_demo",
    "nnUNetTrainerPETCTInteractiveScratch_tiny",
    "nnUNetTrainerPETCTInteractiveStock",
    "nnUNetTrainerPETCTInteractiveStock_bench",
    "nnUNetTrainerPETCTInteractiveStock_cpu1h",
    "nnUNetTrainerPETCTInteractiveStock_demo",
    "nnUNetTrainerPETCTInteractiveStock_tiny",
    "nnUNetTrainerPETCTInteractive_bench",
    "nnUNetTrainerPETCTInteractive_cpu1h",
    "nnUNetTrainerPETCTInteractive_demo",
    "nnUNetTrainerPETCTInteractive_tiny",
]
