"""Re-exports of the MAE pretraining trainers for the nnUNet_extTrainer route (see README.md)."""

from nnunetv2_petct.nnunet.trainers.mae import (
    nnUNetTrainerPETCTMAE,
    nnUNetTrainerPETCTMAE_CTOnly,
    nnUNetTrainerPETCTMAE_CTOnly_tiny,
    nnUNetTrainerPETCTMAE_JointMask,
    nnUNetTrainerPETCTMAE_JointMask_tiny,
    nnUNetTrainerPETCTMAE_paper,
    nnUNetTrainerPETCTMAE_paper_tiny,
    nnUNetTrainerPETCTMAE_PETOnly,
    nnUNetTrainerPETCTMAE_PETOnly_tiny,
    nnUNetTrainerPETCTMAE_Ratio25,
    nnUNetTrainerPETCTMAE_Ratio25_tiny,
    nnUNetTrainerPETCTMAE_Ratio75,
    nnUNetTrainerPETCTMAE_Ratio75_tiny,
    nnUNetTrainerPETCTMAE_SGDPoly,
    nnUNetTrainerPETCTMAE_SGDPoly_tiny,
    nnUNetTrainerPETCTMAE_tiny,
)

__all__ = [
    "nnUNetTrainerPETCTMAE",
    "nnUNetTrainerPETCTMAE_CTOnly",
    "nnUNetTrainerPETCTMAE_CTOnly_tiny",
    "nnUNetTrainerPETCTMAE_JointMask",
    "nnUNetTrainerPETCTMAE_JointMask_tiny",
    "nnUNetTrainerPETCTMAE_paper",
    "nnUNetTrainerPETCTMAE_paper_tiny",
    "nnUNetTrainerPETCTMAE_PETOnly",
    "nnUNetTrainerPETCTMAE_PETOnly_tiny",
    "nnUNetTrainerPETCTMAE_Ratio25",
    "nnUNetTrainerPETCTMAE_Ratio25_tiny",
    "nnUNetTrainerPETCTMAE_Ratio75",
    "nnUNetTrainerPETCTMAE_Ratio75_tiny",
    "nnUNetTrainerPETCTMAE_SGDPoly",
    "nnUNetTrainerPETCTMAE_SGDPoly_tiny",
    "nnUNetTrainerPETCTMAE_tiny",
]
