"""From a pretrained network to a downstream one: weight surgery and compatibility checks (:mod:`.weights`),
foundation checkpoints with their adaptation plan (:mod:`.foundation`), and experiment splits (:mod:`.splits`).

Pure library (no nnunetv2 import); the fine-tuning trainers live in
:mod:`nnunetv2_petct.nnunet.trainers.finetune`.
"""
