"""Convert the FDG part of DEEP-PSMA into nnU-Net Dataset222_DEEPPSMA_FDG (label: TTB).

    python dataset_conversion/Dataset222_DEEPPSMA_FDG.py /data/DEEP-PSMA [-np 8]
"""

import sys

from nnunetv2_petct.cli.convert import main

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if len(sys.argv) > 1 else 2)
    sys.exit(main(["deep-psma", sys.argv[1], "-d", "222", "--name", "DEEPPSMA_FDG", *sys.argv[2:]]))
