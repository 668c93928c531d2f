"""Masked-autoencoder pretraining, the pure part: block masks, zero-mean imputation, the weighted loss,
schedules and training steps (:mod:`.mae`), and reconstruction previews (:mod:`.previews`).

Pure library (no nnunetv2 import); the nnU-Net trainers live in :mod:`nnunetv2_petct.nnunet.trainers.mae`.
"""
