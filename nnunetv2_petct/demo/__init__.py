"""``make demo``: the whole foundation-model pipeline, from raw cohort "downloads" to a report.

Run ``python -m nnunetv2_petct.demo --help``. Every step is a real command-line call (our CLIs
and the stock nnU-Net ones) in a subprocess, recorded in ``demo_output/commands.sh`` so that it can
be copied and pasted; the same commands run on real downloads with other paths, dataset ids and
trainer names (see the README).

Steps (each skipped when its outputs exist; ``--fresh`` starts clean):
 1. synthetic downloads: AutoPET per-study NIfTI (labeled), DEEP-PSMA, SPADE, ViMed-like, DICOM;
 2. conversion of each cohort, the pretraining set, planning (tiny plans for the CPU), plans
    transferred to the AutoPET dataset;
 3. MAE pretraining;
 4. label-efficiency runs at a small label fraction: fine-tuned, from scratch, linear probe,
    each predicted on the held-out test set with ``nnUNetv2_predict`` and evaluated;
 5. ``demo_output/report.md`` with the commands, cohort counts, metric table and figures.

Numbers from this toy run are not the paper's: the phantoms are tiny and the schedules short.
"""

from nnunetv2_petct.demo.config import (
    AUTOPET_ID,
    DEEPPSMA_ID,
    DICOM_ID,
    PRETRAIN_ID,
    PROFILES,
    SPADE_ID,
    VIMED_ID,
    Demo,
    Profile,
    default_device,
)

__all__ = ["AUTOPET_ID", "DEEPPSMA_ID", "DICOM_ID", "PRETRAIN_ID", "PROFILES", "SPADE_ID", "VIMED_ID", "Demo",
           "Profile", "default_device"]
