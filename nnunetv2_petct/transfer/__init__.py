"""From a pretrained network to a downstream one: weight surgery and compatibility checks (:mod:`.weights`),
foundation checkpoints with their adaptation plan (:mod:`.foundation`), experiment splits (:mod:`.splits`),
late fusion of two single-modality models for the separated-modality probe (:mod:`.late_fusion`) and the
leakage guard between pretraining and test cases (:mod:`.leakage`).

Pure library (no nnunetv2 import); the fine-tuning trainers live in
:mod:`nnunetv2_petct.nnunet.trainers.finetune` and :mod:`nnunetv2_petct.nnunet.trainers.late_fusion`.
"""
