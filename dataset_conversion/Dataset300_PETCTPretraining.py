"""Assemble the unlabeled pretraining set Dataset300_PETCTPretraining from the converted cohorts
(221 AutoPET, 222 DEEP-PSMA FDG, 223 SPADE, 224 ViMed-PET; the paper's 4,997 scans).

    python dataset_conversion/Dataset300_PETCTPretraining.py [--from 221 222 223 224] [--exclude FILE] [-np 8]

To keep the AutoPET test scans out of pretraining, pass their ids with --exclude (e.g. the ``test`` list
of ``paper_split_100pct.json`` written by ``nnUNetv2_petct_splits paper``).
"""

import sys

from nnunetv2_petct.cli.pretraining_dataset import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--from" not in args:
        args += ["--from", "221", "222", "223", "224"]
    sys.exit(main(["-d", "300", "--name", "PETCTPretraining", *args]))
