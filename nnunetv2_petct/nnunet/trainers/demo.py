"""``_demo`` variants used by ``make demo``: the real trainers with short schedules for a 2-core CPU.

Class names are experiment identities (nnU-Net's output folders), so the demo's short runs never
mix with real ones. The numbers were chosen by measuring on the demo's phantoms:

- MAE pretraining: ``DEMO_MAE_EPOCHS`` x ``DEMO_MAE_ITERATIONS`` iterations, the paper's recipe otherwise
  (AdamW, cosine); twice as many did not improve the fine-tuned model;
- segmentation (fine-tuned, scratch, stock nnU-Net, probe): ``DEMO_SEG_EPOCHS`` x ``DEMO_SEG_ITERATIONS``
  iterations, ``DEMO_SEG_VAL_ITERATIONS`` validation batches per epoch (the pseudo-Dice curves of the
  report), no final validation (the demo evaluates on its held-out test set). Fine-tuned and scratch share
  one schedule (peak lr :data:`DEMO_FINETUNE_LR` with the fine-tuning warm-up), so they differ only in
  their initialization; stock nnU-Net keeps its recipe (lr 1e-2, poly, no warm-up) and the probe its own
  (head only, lr 1e-2).

Every segmentation run of the demo (and of the benchmark), stock nnU-Net's recipe included, starts its
output layers at the foreground prior (:class:`OutputPriorInitMixin`). Measured on the demo's phantoms: with
nnU-Net's initialization (bias 0, random weights: most voxels start as "lesion"), the first SGD steps (momentum
0.99) overshoot into a deeply saturated all-background state (lesion voxels at p ~ 1e-6 from random weights,
~1e-9 from MAE weights, although they are ranked correctly, AUC 0.96); leaving it took 100 to more than 1,000
iterations, so short runs often predicted nothing. Started at the prior, every method learns from its first
50 iterations.

On the CPU, ``OMP_NUM_THREADS`` sets torch's thread count (``nnUNetv2_train`` otherwise takes one thread
per core): the demo runs two trainings side by side with one thread each on a 2-core machine.
"""

from __future__ import annotations

import math
import os

import torch

from nnunetv2_petct.nnunet.trainers.base import (
    SkipFinalValidationMixin,
    TinyScheduleMixin,
    nnUNetTrainerPETCT,
    unwrap_network,
)
from nnunetv2_petct.nnunet.trainers.finetune import (
    nnUNetTrainerPETCTFinetune,
    nnUNetTrainerPETCTLinearProbe,
    nnUNetTrainerPETCTScratch,
)
from nnunetv2_petct.nnunet.trainers.mae import nnUNetTrainerPETCTMAE

DEMO_MAE_EPOCHS, DEMO_MAE_ITERATIONS, DEMO_MAE_VAL_ITERATIONS = 40, 25, 2
DEMO_SEG_EPOCHS, DEMO_SEG_ITERATIONS, DEMO_SEG_VAL_ITERATIONS = 60, 25, 4
#: Peak learning rate of the demo's fine-tuning and scratch runs: the same schedule for both (nnU-Net's 1e-2,
#: linear warm-up over 5 % of the epochs, poly decay), so that they differ only in their initialization. The
#: fine-tuning recipe's 1e-3 is made for 1000 epochs x 250 iterations; in 1000 iterations it learned slowly
#: and unevenly (Dice 0.29 and 0.57 in two demo-sized runs, against 0.54 at 1e-2).
DEMO_FINETUNE_LR = 1e-2


class CPUThreadsFromEnvMixin:
    """On the CPU, ``torch.set_num_threads(OMP_NUM_THREADS)`` when that variable is set (a positive int)."""

    def initialize(self):
        threads = os.environ.get("OMP_NUM_THREADS", "")
        if not self.was_initialized and self.device.type == "cpu" and threads.isdigit() and int(threads) > 0:
            torch.set_num_threads(int(threads))
        super().initialize()


def set_output_prior(network: torch.nn.Module, prior: float, regions: bool = False) -> int:
    """Set the bias of every output layer (``decoder.seg_layers``) so that the network starts at the
    foreground prior: softmax outputs get bias 0 for background and ``log(prior / (1 - prior))`` for each
    foreground class (p(foreground) ~ ``prior`` where the features are uninformative); region (sigmoid)
    outputs get ``log(prior / (1 - prior))`` on every channel. Weights are left as initialized. Returns the
    number of layers changed (0 for a network without ``decoder.seg_layers``).

    Raises:
        ValueError: ``prior`` not in (0, 1).
    """
    if not 0.0 < prior < 1.0:
        raise ValueError(f"prior must be in (0, 1), got {prior}")
    layers = getattr(getattr(network, "decoder", None), "seg_layers", None)
    if layers is None:
        return 0
    logit = math.log(prior / (1.0 - prior))
    n = 0
    with torch.no_grad():
        for layer in layers:
            if getattr(layer, "bias", None) is None:
                continue
            layer.bias.fill_(logit)
            if not regions:
                layer.bias[0] = 0.0
            n += 1
    return n


class OutputPriorInitMixin:
    """Start the output layers at the foreground prior :attr:`output_prior` (see :func:`set_output_prior` and
    the module doc). Applied right after the network is built, so nnU-Net's ``-pretrained_weights`` (which
    never loads output layers) keeps it."""

    output_prior: float = 0.01

    def initialize(self):
        first = not self.was_initialized
        super().initialize()
        if first:
            n = set_output_prior(unwrap_network(self.network), self.output_prior, regions=self.label_manager.has_regions)
            self.print_to_log_file(f"output layers ({n}) start at the foreground prior {self.output_prior}")


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


class nnUNetTrainerPETCTFinetune_demo(CPUThreadsFromEnvMixin, OutputPriorInitMixin, DemoSegScheduleMixin,
                                      SkipFinalValidationMixin,
                                      nnUNetTrainerPETCTFinetune):
    """Fine-tuning from a foundation checkpoint, demo schedule: peak lr 1e-2 (see :data:`DEMO_FINETUNE_LR`)."""

    finetune_initial_lr = DEMO_FINETUNE_LR


class nnUNetTrainerPETCTScratch_demo(CPUThreadsFromEnvMixin, OutputPriorInitMixin, DemoSegScheduleMixin,
                                     SkipFinalValidationMixin,
                                     nnUNetTrainerPETCTScratch):
    """From random weights with the scratch recipe (nnU-Net's peak lr 1e-2, the fine-tuning warm-up), demo schedule."""

    finetune_initial_lr = DEMO_FINETUNE_LR


class nnUNetTrainerPETCT_demo(CPUThreadsFromEnvMixin, OutputPriorInitMixin, DemoSegScheduleMixin,
                              SkipFinalValidationMixin,
                              nnUNetTrainerPETCT):
    """Stock nnU-Net (SGD lr 1e-2, poly, no warm-up), demo schedule."""


class nnUNetTrainerPETCTLinearProbe_demo(CPUThreadsFromEnvMixin, OutputPriorInitMixin, DemoSegScheduleMixin,
                                         SkipFinalValidationMixin,
                                         nnUNetTrainerPETCTLinearProbe):
    """Linear probe on a frozen foundation model, demo schedule."""


# ---- ``_cpu1h``: the CPU budget of the phantom label-efficiency benchmark (the demo's plans and recipes) -------
CPU1H_SEG_EPOCHS, CPU1H_SEG_ITERATIONS, CPU1H_SEG_VAL_ITERATIONS = 32, 25, 2


class Cpu1hSegScheduleMixin(TinyScheduleMixin):
    """The 1-hour CPU benchmark's segmentation schedule: the demo's recipes, 800 iterations (36 runs must fit)."""

    tiny_num_epochs = CPU1H_SEG_EPOCHS
    tiny_iterations_per_epoch = CPU1H_SEG_ITERATIONS
    tiny_val_iterations_per_epoch = CPU1H_SEG_VAL_ITERATIONS


class nnUNetTrainerPETCTMAE_cpu1h(CPUThreadsFromEnvMixin, DemoMAEScheduleMixin, nnUNetTrainerPETCTMAE):
    """MAE pretraining, 1-hour CPU benchmark (the demo's MAE schedule)."""


class nnUNetTrainerPETCTFinetune_cpu1h(CPUThreadsFromEnvMixin, OutputPriorInitMixin, Cpu1hSegScheduleMixin,
                                      SkipFinalValidationMixin, nnUNetTrainerPETCTFinetune):
    """Fine-tuning, 1-hour CPU benchmark (peak lr :data:`DEMO_FINETUNE_LR`, as the demo)."""

    finetune_initial_lr = DEMO_FINETUNE_LR


class nnUNetTrainerPETCTScratch_cpu1h(CPUThreadsFromEnvMixin, OutputPriorInitMixin, Cpu1hSegScheduleMixin,
                                     SkipFinalValidationMixin, nnUNetTrainerPETCTScratch):
    """From scratch, 1-hour CPU benchmark (peak lr :data:`DEMO_FINETUNE_LR`, as the demo)."""

    finetune_initial_lr = DEMO_FINETUNE_LR


class nnUNetTrainerPETCT_cpu1h(CPUThreadsFromEnvMixin, OutputPriorInitMixin, Cpu1hSegScheduleMixin,
                              SkipFinalValidationMixin, nnUNetTrainerPETCT):
    """Stock nnU-Net, 1-hour CPU benchmark."""


class nnUNetTrainerPETCTLinearProbe_cpu1h(CPUThreadsFromEnvMixin, OutputPriorInitMixin, Cpu1hSegScheduleMixin,
                                         SkipFinalValidationMixin, nnUNetTrainerPETCTLinearProbe):
    """Linear probe, 1-hour CPU benchmark."""


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


class nnUNetTrainerPETCTFinetune_bench(OutputPriorInitMixin, BenchSegScheduleMixin, SkipFinalValidationMixin,
                                       nnUNetTrainerPETCTFinetune):
    """Fine-tuning, benchmark (GPU) schedule."""


class nnUNetTrainerPETCTScratch_bench(OutputPriorInitMixin, BenchSegScheduleMixin, SkipFinalValidationMixin,
                                      nnUNetTrainerPETCTScratch):
    """From scratch, benchmark (GPU) schedule."""


class nnUNetTrainerPETCT_bench(OutputPriorInitMixin, BenchSegScheduleMixin, SkipFinalValidationMixin, nnUNetTrainerPETCT):
    """Stock nnU-Net, benchmark (GPU) schedule."""


class nnUNetTrainerPETCTLinearProbe_bench(OutputPriorInitMixin, BenchSegScheduleMixin, SkipFinalValidationMixin,
                                          nnUNetTrainerPETCTLinearProbe):
    """Linear probe, benchmark (GPU) schedule."""
