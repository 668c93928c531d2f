"""Click-guided (interactive) lesion segmentation trainers: CT + PET + two click channels (autoPET IV, SPEC §9).

    nnUNetv2_train DATASET 3d_fullres FOLD -tr nnUNetTrainerPETCTInteractive -pretrained_weights foundation_final.pth
    nnUNetv2_train DATASET 3d_fullres FOLD -tr nnUNetTrainerPETCTInteractiveScratch
    nnUNetv2_train DATASET 3d_fullres FOLD -tr nnUNetTrainerPETCTInteractiveStock

The dataset stays CT (``_0000``) + PET (``_0001``). The network reads four channels: CT, PET, a Gaussian
heatmap of the tumor clicks and one of the background clicks
(:mod:`nnunetv2_petct.interactive.heatmaps`, sigma :data:`~nnunetv2_petct.interactive.heatmaps.DEFAULT_SIGMA_MM`
in mm, at least 1.5 voxels of the coarsest axis: :func:`~nnunetv2_petct.interactive.heatmaps.effective_sigma_mm`).
The click channels are rendered on the fly inside every training and validation step, on the
training device, from clicks simulated on the patch's own label
(:func:`nnunetv2_petct.interactive.simulation.sample_batch_clicks`: a random number of tumor and background
clicks per sample, none at all with some probability; tumor clicks inside lesions preferring the interior;
background clicks on high-uptake non-lesion voxels, around lesions and elsewhere). nnU-Net's data loading and
augmentation are untouched: clicks are simulated after augmentation, on the augmented label, so they always
sit where the network sees the lesion.

Zero clicks = the non-interactive model: the network's forward accepts the two image channels alone and then
appends two all-zero click channels (:func:`add_zero_click_channels_hook`), which is also what stock
``nnUNetv2_predict`` (and nnU-Net's final validation) feed it. ``nnUNetv2_petct_predict --clicks`` and
:class:`nnunetv2_petct.nnunet.interactive_predictor.InteractiveSession` feed the click channels.

From a foundation checkpoint (``-pretrained_weights``, a 2-channel CT+PET MAE or segmentation checkpoint): the
network's input convolution is built with 2 input channels for nnU-Net's stock loader (which demands equal
shapes) and widened to 4 channels after the weights are loaded, the two click slices of its kernel set to
zero (:func:`widen_input_projection`). Step 0 is therefore exactly the pretrained network whatever the clicks
are; the trainer checks this on a random input (maximum absolute output difference, written to
``interactive_stem.json``; within float rounding, 1e-5). The optimizer is built again after the widening.

Recipes (each baseline at its own, as in the label-efficiency grid): ``nnUNetTrainerPETCTInteractive`` =
:class:`~nnunetv2_petct.nnunet.trainers.finetune.nnUNetTrainerPETCTFinetune`'s (pretrained weights required,
peak lr 1e-3 with warm-up); ``...InteractiveScratch`` = ``nnUNetTrainerPETCTScratch``'s (random weights, 1e-2,
same warm-up and length); ``...InteractiveStock`` = stock nnU-Net's (1e-2, poly, no warm-up). ``_tiny`` (tests),
``_demo`` and ``_bench`` variants follow the non-interactive ones.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from nnunetv2_petct.interactive.heatmaps import (
    DEFAULT_SIGMA_MM,
    effective_sigma_mm,
    render_click_channels_torch,
)
from nnunetv2_petct.interactive.simulation import TrainingClickConfig, sample_batch_clicks
from nnunetv2_petct.io import write_json_atomic
from nnunetv2_petct.nnunet.trainers.base import (
    SkipFinalValidationMixin,
    TinyScheduleMixin,
    nnUNetTrainerPETCT,
    pretrained_file_from_argv,
    unwrap_network,
)
from nnunetv2_petct.nnunet.trainers.demo import (
    DEMO_FINETUNE_LR,
    BenchSegScheduleMixin,
    Cpu1hSegScheduleMixin,
    CPUThreadsFromEnvMixin,
    DemoSegScheduleMixin,
    OutputPriorInitMixin,
)
from nnunetv2_petct.nnunet.trainers.finetune import nnUNetTrainerPETCTFinetune, nnUNetTrainerPETCTScratch
from nnunetv2_petct.transfer.weights import find_input_projection_keys

#: Channels the click rendering appends to the image channels: tumor heatmap, background heatmap.
CLICK_CHANNELS = 2
STEM_RECORD_FILE = "interactive_stem.json"
#: Largest output difference accepted between the pretrained network and the widened one at step 0.
STEM_CHECK_TOLERANCE = 1e-5


# ------------------------------------------------------------------------------------ network surgery
def input_projection(network: torch.nn.Module) -> tuple[str, torch.nn.Module]:
    """``(module path, module)`` of the convolution that reads the network's input (the first convolution
    in state-dict order; the decoder's alias of the encoder shares the module object).

    Raises:
        ValueError: the network has no convolution.
    """
    keys = find_input_projection_keys(network)
    if not keys:
        raise ValueError("the network has no convolution to read the click channels")
    path = sorted(keys, key=len)[0].removesuffix(".weight")
    return path, network.get_submodule(path)


def set_input_channels(network: torch.nn.Module, n_channels: int) -> tuple[int, int]:
    """Make the input convolution read ``n_channels`` channels: extra input channels get zero kernel slices,
    fewer keep the first ``n_channels`` slices. Returns ``(old, new)`` channel counts. The parameter is a new
    ``torch.nn.Parameter`` (an optimizer built before holds the old one: build it again)."""
    _, conv = input_projection(network)
    old = int(conv.weight.shape[1])
    if old == n_channels:
        return old, old
    with torch.no_grad():
        w = conv.weight.detach()
        if n_channels > old:
            extra = torch.zeros((w.shape[0], n_channels - old, *w.shape[2:]), dtype=w.dtype, device=w.device)
            new = torch.cat([w, extra], dim=1)
        else:
            new = w[:, :n_channels].clone()
    conv.weight = torch.nn.Parameter(new.contiguous(), requires_grad=conv.weight.requires_grad)
    conv.in_channels = int(n_channels)
    return old, int(n_channels)


def widen_input_projection(network: torch.nn.Module, n_image_channels: int) -> tuple[int, int]:
    """Widen the input convolution from ``n_image_channels`` to ``n_image_channels + CLICK_CHANNELS`` with zero
    click slices (the network's outputs do not change, whatever the click channels hold)."""
    return set_input_channels(network, n_image_channels + CLICK_CHANNELS)


def add_zero_click_channels_hook(network: torch.nn.Module, n_image_channels: int):
    """A forward pre-hook: an input with exactly ``n_image_channels`` channels gets ``CLICK_CHANNELS`` all-zero
    channels appended (no clicks), so stock ``nnUNetv2_predict`` runs the interactive model as the
    non-interactive one. Inputs with the click channels pass unchanged, and so does every input while the
    input convolution reads the image channels only (narrowed to load a 2-channel checkpoint). Returns the
    hook handle."""

    _, conv = input_projection(network)

    def pad(module, args):
        x = args[0]
        # only while the input convolution reads the click channels (a narrowed stem reads the images alone)
        if (isinstance(x, torch.Tensor) and x.ndim >= 2 and x.shape[1] == n_image_channels
                and conv.weight.shape[1] == n_image_channels + CLICK_CHANNELS):
            zeros = x.new_zeros((x.shape[0], CLICK_CHANNELS, *x.shape[2:]))
            return (torch.cat([x, zeros], dim=1), *args[1:])
        return None

    return network.register_forward_pre_hook(pad)


def _check_input_size(network: torch.nn.Module, n_channels: int, patch_size) -> tuple[int, ...]:
    """A small input shape the network accepts: per axis the product of the encoder's strides (min 8)."""
    strides = getattr(getattr(network, "encoder", None), "strides", None)
    shape = []
    for axis in range(len(patch_size)):
        f = 1
        for s in strides or []:
            f *= int(s[axis]) if isinstance(s, (list, tuple)) else int(s)
        shape.append(min(max(f, 8), int(patch_size[axis])))
    return (1, n_channels, *shape)


# ------------------------------------------------------------------------------------------- trainers
class InteractiveClicksMixin:
    """Four input channels (CT, PET, tumor clicks, background clicks) rendered from simulated clicks in every
    training and validation step; a 2-channel ``-pretrained_weights`` checkpoint is loaded into the image
    channels and the click channels start at zero. See the module doc."""

    click_config: TrainingClickConfig = TrainingClickConfig()
    click_sigma_mm: float = DEFAULT_SIGMA_MM

    @classmethod
    def _image_channels(cls, num_input_channels: int) -> int:
        return int(num_input_channels)

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        """nnU-Net's network for the plans with ``num_input_channels + 2`` inputs (the predictor calls this
        with the dataset's image channels); an input without the click channels gets zero clicks."""
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

        network = nnUNetTrainer.build_network_architecture(
            plans_manager, configuration_manager, num_input_channels + CLICK_CHANNELS, num_output_channels,
            enable_deep_supervision)
        add_zero_click_channels_hook(network, num_input_channels)
        return network

    # -------------------------------------------------------------------- initialisation and stem
    def initialize(self):
        first = not self.was_initialized
        super().initialize()
        if first:
            seed = getattr(self, "_petct_seed", None)
            base = int(seed) if seed is not None else int(np.random.SeedSequence().entropy % 2**31)
            self._click_seed = base + 7919 * int(getattr(self, "local_rank", 0))
            self._click_rng = np.random.default_rng(self._click_seed)
            self.print_to_log_file(
                f"interactive: {CLICK_CHANNELS} click channels (tumor, background), Gaussian sigma "
                f"{effective_sigma_mm(self.click_sigma_mm, self.configuration_manager.spacing):.1f} mm "
                f"(max of {self.click_sigma_mm} mm and 1.5 voxels), clicks simulated per sample from the label: "
                f"{self.click_config}")

    def _check_pretrained_weights_file(self) -> None:
        # -pretrained_weights holds a 2-channel (CT, PET) network: nnU-Net's loader demands equal shapes, so the
        # input convolution reads the image channels only until the weights are in (widened in on_train_start).
        self._click_stem_narrowed = False
        if pretrained_file_from_argv() is not None:
            old, new = set_input_channels(unwrap_network(self.network), self.num_input_channels)
            self._click_stem_narrowed = old != new
            self.optimizer, self.lr_scheduler = self.configure_optimizers()
        super()._check_pretrained_weights_file()

    def on_train_start(self):
        super().on_train_start()
        if getattr(self, "_click_stem_narrowed", False):
            self._widen_after_loading()

    def _widen_after_loading(self) -> None:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = unwrap_network(self.network)
        x = torch.randn(_check_input_size(net, self.num_input_channels, self.configuration_manager.patch_size),
                        generator=torch.Generator().manual_seed(0)).to(self.device)
        clicks = torch.rand((x.shape[0], CLICK_CHANNELS, *x.shape[2:]),
                            generator=torch.Generator().manual_seed(1)).to(self.device)
        was_training = net.training
        net.eval()
        with torch.no_grad():
            ref = net(x)
            ref = ref[0] if isinstance(ref, (list, tuple)) else ref
            old, new = widen_input_projection(net, self.num_input_channels)
            out = net(torch.cat([x, clicks], dim=1))
            out = out[0] if isinstance(out, (list, tuple)) else out
        net.train(was_training)
        diff = float((out - ref).abs().max())
        if isinstance(self.network, DDP):
            self.network = DDP(net, device_ids=[self.local_rank])
        self.optimizer, self.lr_scheduler = self.configure_optimizers()
        record = {
            "input_channels_pretrained": old, "input_channels_now": new,
            "click_channels": ["tumor heatmap", "background heatmap"],
            "click_weights_at_start": "zero",
            "check": "max |network(CT, PET, random clicks) - pretrained network(CT, PET)| on a random input at step 0",
            "max_abs_output_difference": diff, "tolerance": STEM_CHECK_TOLERANCE,
        }
        if self.local_rank == 0:
            write_json_atomic(record, os.path.join(self.output_folder, STEM_RECORD_FILE))
        self.print_to_log_file(f"interactive: input convolution widened {old} -> {new} channels, click weights 0; "
                               f"step-0 output difference to the pretrained network {diff:.2e}")
        if not diff <= STEM_CHECK_TOLERANCE * max(1.0, float(ref.abs().max())):
            raise RuntimeError(f"{self.__class__.__name__}: the widened network differs from the pretrained one "
                               f"at step 0 (max {diff:.3e}): bug")

    # ---------------------------------------------------------------------------- click channels
    def _with_clicks(self, batch: dict, rng: np.random.Generator) -> dict:
        data, target = batch["data"], batch["target"]
        label = target[0] if isinstance(target, (list, tuple)) else target
        if data.shape[1] != self.num_input_channels:
            return batch  # already carries click channels
        pet = data[:, 1] if data.shape[1] > 1 else None
        tumor, background = sample_batch_clicks(label, pet, tuple(self.configuration_manager.spacing), rng,
                                                self.click_config)
        data = data.to(self.device, non_blocking=True)
        maps = render_click_channels_torch(tumor, background, tuple(data.shape[2:]), tuple(self.configuration_manager.spacing),
                                           effective_sigma_mm(self.click_sigma_mm, self.configuration_manager.spacing),
                                           device=data.device)
        out = dict(batch)
        out["data"] = torch.cat([data, maps.to(data.dtype)], dim=1)
        return out

    def train_step(self, batch: dict) -> dict:
        return super().train_step(self._with_clicks(batch, self._click_rng))

    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        # the same clicks for the same validation batches every epoch (comparable pseudo-Dice curves)
        self._val_click_rng = np.random.default_rng(self._click_seed + 1)

    def validation_step(self, batch: dict) -> dict:
        rng = getattr(self, "_val_click_rng", None) or np.random.default_rng(self._click_seed + 1)
        return super().validation_step(self._with_clicks(batch, rng))


class nnUNetTrainerPETCTInteractive(InteractiveClicksMixin, nnUNetTrainerPETCTFinetune):
    """Click-guided lesion segmentation fine-tuned from a foundation checkpoint (``-pretrained_weights``
    required): the fine-tuning recipe (peak lr 1e-3, warm-up, poly); the click channels start at zero."""


class nnUNetTrainerPETCTInteractiveScratch(InteractiveClicksMixin, nnUNetTrainerPETCTScratch):
    """Click-guided from random weights at the from-scratch recipe (peak lr 1e-2, same warm-up and length)."""


class nnUNetTrainerPETCTInteractiveStock(InteractiveClicksMixin, nnUNetTrainerPETCT):
    """Click-guided from random weights at stock nnU-Net's recipe (lr 1e-2, poly, no warm-up)."""


class nnUNetTrainerPETCTInteractive_tiny(TinyScheduleMixin, SkipFinalValidationMixin, nnUNetTrainerPETCTInteractive):
    """:class:`nnUNetTrainerPETCTInteractive`, tiny schedule (tests)."""


class nnUNetTrainerPETCTInteractiveScratch_tiny(TinyScheduleMixin, SkipFinalValidationMixin,
                                                nnUNetTrainerPETCTInteractiveScratch):
    """:class:`nnUNetTrainerPETCTInteractiveScratch`, tiny schedule (tests)."""


class nnUNetTrainerPETCTInteractiveStock_tiny(TinyScheduleMixin, SkipFinalValidationMixin,
                                              nnUNetTrainerPETCTInteractiveStock):
    """:class:`nnUNetTrainerPETCTInteractiveStock`, tiny schedule (tests)."""


class nnUNetTrainerPETCTInteractive_demo(
        CPUThreadsFromEnvMixin, OutputPriorInitMixin, DemoSegScheduleMixin, SkipFinalValidationMixin,
        nnUNetTrainerPETCTInteractive):
    """Interactive, fine-tuned from a foundation checkpoint: demo schedule (``make demo``-sized runs), as the non-interactive ``_demo`` variants."""

    finetune_initial_lr = DEMO_FINETUNE_LR


class nnUNetTrainerPETCTInteractiveScratch_demo(
        CPUThreadsFromEnvMixin, OutputPriorInitMixin, DemoSegScheduleMixin, SkipFinalValidationMixin,
        nnUNetTrainerPETCTInteractiveScratch):
    """Interactive, from random weights, scratch recipe: demo schedule (``make demo``-sized runs), as the non-interactive ``_demo`` variants."""

    finetune_initial_lr = DEMO_FINETUNE_LR


class nnUNetTrainerPETCTInteractiveStock_demo(
        CPUThreadsFromEnvMixin, OutputPriorInitMixin, DemoSegScheduleMixin, SkipFinalValidationMixin,
        nnUNetTrainerPETCTInteractiveStock):
    """Interactive, from random weights, stock nnU-Net recipe: demo schedule (``make demo``-sized runs), as the non-interactive ``_demo`` variants."""


class nnUNetTrainerPETCTInteractive_cpu1h(
        CPUThreadsFromEnvMixin, OutputPriorInitMixin, Cpu1hSegScheduleMixin, SkipFinalValidationMixin,
        nnUNetTrainerPETCTInteractive):
    """Interactive, fine-tuned from a foundation checkpoint: CPU budget of ``benchmarks interactive``, as the non-interactive ``_cpu1h`` variants."""

    finetune_initial_lr = DEMO_FINETUNE_LR


class nnUNetTrainerPETCTInteractiveScratch_cpu1h(
        CPUThreadsFromEnvMixin, OutputPriorInitMixin, Cpu1hSegScheduleMixin, SkipFinalValidationMixin,
        nnUNetTrainerPETCTInteractiveScratch):
    """Interactive, from random weights, scratch recipe: CPU budget of ``benchmarks interactive``, as the non-interactive ``_cpu1h`` variants."""

    finetune_initial_lr = DEMO_FINETUNE_LR


class nnUNetTrainerPETCTInteractiveStock_cpu1h(
        CPUThreadsFromEnvMixin, OutputPriorInitMixin, Cpu1hSegScheduleMixin, SkipFinalValidationMixin,
        nnUNetTrainerPETCTInteractiveStock):
    """Interactive, from random weights, stock nnU-Net recipe: CPU budget of ``benchmarks interactive``, as the non-interactive ``_cpu1h`` variants."""


class nnUNetTrainerPETCTInteractive_bench(
        OutputPriorInitMixin, BenchSegScheduleMixin, SkipFinalValidationMixin,
        nnUNetTrainerPETCTInteractive):
    """Interactive, fine-tuned from a foundation checkpoint: GPU budget of ``benchmarks interactive``, as the non-interactive ``_bench`` variants."""


class nnUNetTrainerPETCTInteractiveScratch_bench(
        OutputPriorInitMixin, BenchSegScheduleMixin, SkipFinalValidationMixin,
        nnUNetTrainerPETCTInteractiveScratch):
    """Interactive, from random weights, scratch recipe: GPU budget of ``benchmarks interactive``, as the non-interactive ``_bench`` variants."""


class nnUNetTrainerPETCTInteractiveStock_bench(
        OutputPriorInitMixin, BenchSegScheduleMixin, SkipFinalValidationMixin,
        nnUNetTrainerPETCTInteractiveStock):
    """Interactive, from random weights, stock nnU-Net recipe: GPU budget of ``benchmarks interactive``, as the non-interactive ``_bench`` variants."""
