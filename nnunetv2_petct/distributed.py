"""``torchrun ... -m nnunetv2_petct.distributed``: the documented entry point of the multi-node launcher.

The launcher lives in :mod:`nnunetv2_petct.nnunet.distributed` (nnU-Net-facing code); this module only
keeps the short ``-m`` name working.
"""

import sys

from nnunetv2_petct.nnunet.distributed import main

if __name__ == "__main__":
    sys.exit(main())
