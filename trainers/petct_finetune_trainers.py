"""Re-exports for the nnUNet_extTrainer route (see README.md): fine-tuning, scratch and probing trainers."""

from nnunetv2_petct.nnunet.trainers.finetune import (
    nnUNetTrainerPETCTFinetune,
    nnUNetTrainerPETCTFinetune_tiny,
    nnUNetTrainerPETCTFrozenEncoder,
    nnUNetTrainerPETCTFrozenEncoder_tiny,
    nnUNetTrainerPETCTLinearProbe,
    nnUNetTrainerPETCTLinearProbe_tiny,
    nnUNetTrainerPETCTLinearProbeRandomInit,
    nnUNetTrainerPETCTLinearProbeRandomInit_tiny,
    nnUNetTrainerPETCTScratch,
    nnUNetTrainerPETCTScratch_tiny,
    nnUNetTrainerPETCTScratchLR1e3,
    nnUNetTrainerPETCTScratchLR1e3_tiny,
)

__all__ = [
    "nnUNetTrainerPETCTFinetune",
    "nnUNetTrainerPETCTFinetune_tiny",
    "nnUNetTrainerPETCTFrozenEncoder",
    "nnUNetTrainerPETCTFrozenEncoder_tiny",
    "nnUNetTrainerPETCTLinearProbe",
    "nnUNetTrainerPETCTLinearProbeRandomInit",
    "nnUNetTrainerPETCTLinearProbeRandomInit_tiny",
    "nnUNetTrainerPETCTLinearProbe_tiny",
    "nnUNetTrainerPETCTScratch",
    "nnUNetTrainerPETCTScratch_tiny",
    "nnUNetTrainerPETCTScratchLR1e3",
    "nnUNetTrainerPETCTScratchLR1e3_tiny",
]
