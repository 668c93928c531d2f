"""``_demo`` variants used by ``make demo``: the real trainers with short schedules for a 2-core CPU.

Class names are experiment identities (nnU-Net's output folders), so the demo's short runs never
mix with real ones. The numbers were chosen by measuring on the demo's phantoms (see
``docs/benchmarks.md`` and the demo's report): with fewer segmentation iterations, or with the
learning rate decayed too early, nnU-Net's Dice+CE loss stays in its all-background state and every
model predicts nothing.

- MAE pretraining: ``DEMO_MAE_EPOCHS`` x ``DEMO_MAE_ITERATIONS`` iterations, the paper's recipe
  otherwise (AdamW, cosine);
- segmentation (fine-tuned, scratch, stock nnU-Net, probe): ``DEMO_SEG_EPOCHS`` x
  ``DEMO_SEG_ITERATIONS`` iterations, ``DEMO_SEG_VAL_ITERATIONS`` validation batches per epoch (the
  pseudo-Dice curve of the report), no final validation (the demo evaluates on its held-out test
  set); each method keeps its own learning-rate recipe (see the classes).

On the CPU, ``OMP_NUM_THREADS`` sets torch's thread count (``nnUNetv2_train`` otherwise takes one thread
per core): the demo runs two trainings side by side with one thread each on a 2-core machine.
"""

from __future__ import annotations

import os

import torch

from nnunetv2_petct.nnunet.trainers.base import TinyScheduleMixin, nnUNetTrainerPETCT
from nnunetv2_petct.nnunet.trainers.finetune import (
    SkipFinalValidationMixin,
    nnUNetTrainerPETCTFinetune,
    nnUNetTrainerPETCTLinearProbe,
    nnUNetTrainerPETCTScratch,
)
from nnunetv2_petct.nnunet.trainers.mae import nnUNetTrainerPETCTMAE

DEMO_MAE_EPOCHS, DEMO_MAE_ITERATIONS, DEMO_MAE_VAL_ITERATIONS = 40, 25, 2
DEMO_SEG_EPOCHS, DEMO_SEG_ITERATIONS, DEMO_SEG_VAL_ITERATIONS = 40, 25, 4


class CPUThreadsFromEnvMixin:
    """On the CPU, ``torch.set_num_threads(OMP_NUM_THREADS)`` when that variable is set (a positive int)."""

    def initialize(self):
        threads = os.environ.get("OMP_NUM_THREADS", "")
        if not self.was_initialized and self.device.type == "cpu" and threads.isdigit() and int(threads) > 0:
            torch.set_num_threads(int(threads))
        super().initialize()


class DemoMAEScheduleMixin(TinyScheduleMixin):
    """The demo's MAE schedule (see the module doc)."""

    tiny_num_epochs = DEMO_MAE_EPOCHS
    tiny_iterations_per_epoch = DEMO_MAE_ITERATIONS
    tiny_val_iterations_per_epoch = DEMO_MAE_VAL_ITERATIONS


class DemoSegScheduleMixin(TinyScheduleMixin):
    """The demo's segmentation schedule (see the module doc)."""

    tiny_num_epochs = DEMO_SEG_EPOCHS
    tiny_iterations_per_epoch = DEMO_SEG_ITERATIONS
    tiny_val_iterations_per_epoch = DEMO_SEG_VAL_ITERATIONS


class nnUNetTrainerPETCTMAE_demo(CPUThreadsFromEnvMixin, DemoMAEScheduleMixin, nnUNetTrainerPETCTMAE):
    """MAE pretraining, demo schedule."""


class nnUNetTrainerPETCTFinetune_demo(CPUThreadsFromEnvMixin, DemoSegScheduleMixin, SkipFinalValidationMixin,
                                      nnUNetTrainerPETCTFinetune):
    """Fine-tuning from a foundation checkpoint, demo schedule."""


class nnUNetTrainerPETCTScratch_demo(CPUThreadsFromEnvMixin, DemoSegScheduleMixin, SkipFinalValidationMixin,
                                     nnUNetTrainerPETCTScratch):
    """From random weights with the scratch recipe, demo schedule."""


class nnUNetTrainerPETCT_demo(CPUThreadsFromEnvMixin, DemoSegScheduleMixin, SkipFinalValidationMixin,
                              nnUNetTrainerPETCT):
    """Stock nnU-Net (SGD lr 1e-2, poly, no warm-up), demo schedule."""


class nnUNetTrainerPETCTLinearProbe_demo(CPUThreadsFromEnvMixin, DemoSegScheduleMixin, SkipFinalValidationMixin,
                                         nnUNetTrainerPETCTLinearProbe):
    """Linear probe on a frozen foundation model, demo schedule."""


# ---- ``_bench``: the GPU budget of the phantom label-efficiency benchmark (nnU-Net's own plans) -------------
BENCH_MAE_EPOCHS, BENCH_MAE_ITERATIONS, BENCH_MAE_VAL_ITERATIONS = 100, 100, 5
BENCH_SEG_EPOCHS, BENCH_SEG_ITERATIONS, BENCH_SEG_VAL_ITERATIONS = 60, 50, 10


class BenchMAEScheduleMixin(TinyScheduleMixin):
    """The benchmark's MAE schedule on a GPU (see the constants above)."""

    tiny_num_epochs = BENCH_MAE_EPOCHS
    tiny_iterations_per_epoch = BENCH_MAE_ITERATIONS
    tiny_val_iterations_per_epoch = BENCH_MAE_VAL_ITERATIONS


class BenchSegScheduleMixin(TinyScheduleMixin):
    """The benchmark's segmentation schedule on a GPU (see the constants above)."""

    tiny_num_epochs = BENCH_SEG_EPOCHS
    tiny_iterations_per_epoch = BENCH_SEG_ITERATIONS
    tiny_val_iterations_per_epoch = BENCH_SEG_VAL_ITERATIONS


class nnUNetTrainerPETCTMAE_bench(BenchMAEScheduleMixin, nnUNetTrainerPETCTMAE):
    """MAE pretraining, benchmark (GPU) schedule."""


class nnUNetTrainerPETCTFinetune_bench(BenchSegScheduleMixin, SkipFinalValidationMixin, nnUNetTrainerPETCTFinetune):
    """Fine-tuning, benchmark (GPU) schedule."""


class nnUNetTrainerPETCTScratch_bench(BenchSegScheduleMixin, SkipFinalValidationMixin, nnUNetTrainerPETCTScratch):
    """From scratch, benchmark (GPU) schedule."""


class nnUNetTrainerPETCT_bench(BenchSegScheduleMixin, SkipFinalValidationMixin, nnUNetTrainerPETCT):
    """Stock nnU-Net, benchmark (GPU) schedule."""


class nnUNetTrainerPETCTLinearProbe_bench(BenchSegScheduleMixin, SkipFinalValidationMixin,
                                          nnUNetTrainerPETCTLinearProbe):
    """Linear probe, benchmark (GPU) schedule."""
