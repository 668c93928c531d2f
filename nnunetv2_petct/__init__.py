"""nnunetv2_petct: an nnU-Net v2 plugin for whole-body FDG PET/CT foundation models.

Importing this package is cheap and never imports nnunetv2 or torch: the interpreter runs
``nnunetv2_petct._discovery.install()`` at start-up (through a ``.pth`` file), and the pure
library modules (SUV, masking, metrics, phantoms) are imported on demand.
"""

__version__ = "0.1.0"
