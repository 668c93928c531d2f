"""Convert AutoPET FDG-PET-CT-Lesions into nnU-Net Dataset221_AutoPET (nnU-Net dataset_conversion style).

    python dataset_conversion/Dataset221_AutoPET.py /data/FDG-PET-CT-Lesions [-np 8]
    python dataset_conversion/Dataset221_AutoPET.py /data/autoPET-III --layout nnunet
    python dataset_conversion/Dataset221_AutoPET.py /data/TCIA-DICOM --layout dicom

Every layout gives the same case ids (``fdg_<hash>_<MM-DD-YYYY>``), so the paper's split lists map
onto the result (``nnUNetv2_petct_splits paper -d 221 --fraction 10``). Any further options are passed
on to ``nnUNetv2_petct_convert`` (see its --help).
"""

import argparse
import sys

from nnunetv2_petct.cli.convert import main

LAYOUTS = {"nifti": "autopet", "nnunet": "autopet-nnunet", "dicom": "autopet-dicom"}

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source")
    p.add_argument("--layout", choices=sorted(LAYOUTS), default="nifti")
    a, rest = p.parse_known_args()
    sys.exit(main([LAYOUTS[a.layout], a.source, "-d", "221", "--name", "AutoPET", *rest]))
