"""Convert ViMed-PET (extracted archives) into the unlabeled nnU-Net Dataset224_ViMedPET.

    python dataset_conversion/Dataset224_ViMedPET.py /data/ViMed-PET --spacing Z Y X --ct-offset -1024 \\
        [--pet-glob '*pet*'] [--ct-glob '*ct*'] [--pet-units counts] [-np 8]

The release's layout is not confirmed: check one study folder first and set the patterns, spacing
(for .npy/.npz arrays) and the CT offset/slope (HU = raw * slope + offset) accordingly. The converter
lists what it found when the patterns match nothing, and fails a case whose CT has no air (< -500 HU).
"""

import sys

from nnunetv2_petct.cli.convert import main

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if len(sys.argv) > 1 else 2)
    sys.exit(main(["vimed-pet", sys.argv[1], "-d", "224", "--name", "ViMedPET", *sys.argv[2:]]))
