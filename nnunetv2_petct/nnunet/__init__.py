"""nnU-Net-facing code: trainers, the trainer registry used by the discovery hook.

Everything under this package imports nnunetv2; the pure library (``nnunetv2_petct.*`` outside
``nnunet`` and ``cli``) does not.
"""
