"""Convert SPADE into the unlabeled nnU-Net Dataset223_SPADE (cropped to the body).

    python dataset_conversion/Dataset223_SPADE.py /data/SPADE [-np 8] [--exclude qc.txt]

No geometry is stored in SPADE: the spacing defaults to the authors' 3 x 3.5 x 3.5 mm (z y x), stated in
every manifest record (override with --spacing Z Y X). The 11 known-bad scans are excluded.
"""

import sys

from nnunetv2_petct.cli.convert import main

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if len(sys.argv) > 1 else 2)
    sys.exit(main(["spade", sys.argv[1], "-d", "223", "--name", "SPADE", *sys.argv[2:]]))
