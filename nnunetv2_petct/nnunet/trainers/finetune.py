"""Transfer from the PET/CT foundation model: fine-tuning, from-scratch baselines, linear probing.

Every trainer here is used through the stock commands, e.g.::

    nnUNetv2_train DATASET 3d_fullres FOLD -tr nnUNetTrainerPETCTFinetune -pretrained_weights foundation_final.pth
    nnUNetv2_train DATASET 3d_fullres FOLD -tr nnUNetTrainerPETCTScratch
    nnUNetv2_predict ... -tr nnUNetTrainerPETCTFinetune

and nnU-Net names the output folder after the class, so pretrained, scratch and probe results of one
dataset and fold sit side by side.

- ``nnUNetTrainerPETCTFinetune``: weights required; SGD peak lr **1e-3**, warm-up, poly; all layers train
  (the output layer starts from random weights: nnU-Net's loader never transfers ``.seg_layers.``).
- ``nnUNetTrainerPETCTScratch``: weights refused; SGD peak lr **1e-2** (nnU-Net's tuned rate) with the
  *same* warm-up and length as fine-tuning; all layers train. The strong from-scratch baseline.
- ``nnUNetTrainerPETCTScratchLR1e3``: ablation — the fine-tuning rate 1e-3 from random weights (the
  handicapped baseline earlier versions used; kept so that its effect can be shown, not as a baseline).
- ``nnUNetTrainerPETCT`` (in ``base``): stock nnU-Net (lr 1e-2, poly, no warm-up) — the other baseline.
- ``nnUNetTrainerPETCTLinearProbe``: weights required; probe schedule; only the last 1x1x1 output
  convolution trains, deep supervision off.
- ``nnUNetTrainerPETCTFrozenEncoder``: weights required; fine-tuning schedule; the decoder trains, the
  encoder is frozen.
- ``nnUNetTrainerPETCTLinearProbeRandomInit``: weights refused; probe schedule and freezing on nnU-Net's
  random initialization (control for the probe).
- ``nnUNetTrainerPETCTLateFusionProbe`` (module ``late_fusion``): the separated-modality probe.

Each has a ``_tiny`` variant (2 epochs x 2 iterations, no final validation after training) for tests.
They accept CT+PET datasets (``_0000`` = CT, ``_0001`` = PET) and single-channel CT-only or PET-only
datasets (use ``nnUNetv2_petct_adapt_checkpoint --keep`` to make a 1-channel checkpoint from a 2-channel one).

Schedule (``FinetuneScheduleMixin``): nnU-Net's SGD (Nesterov, momentum 0.99, weight decay 3e-5), a
**linear warm-up over the first 5 % of the epochs** (50 of nnU-Net's 1000; at least 1) to the peak rate,
then nnU-Net's polynomial decay (exponent 0.9) to 0 over the remaining epochs, nnU-Net's 1000 x 250
iterations. The peak rate depends on the initialization, as in the recipe this follows — the OpenMind
benchmark of 3D medical SSL (Wald et al., 2025, the nnssl framework) and upstream nnU-Net's
``PretrainedTrainer``: **1e-3 for pretrained weights** (the large default rate and the random output
layer's first gradients otherwise wash out pretrained features early) and **1e-2 from scratch**
(nnU-Net's tuned rate: random weights have nothing to protect, and 1e-3 under-trains them). Scratch and
fine-tuning therefore share warm-up and length, so the comparison is "each at its own tuned rate with
the same budget"; stock nnU-Net (no warm-up) is reported next to them, and the 1e-3 scratch run is an
explicitly named ablation.

Probe schedule: nnU-Net's default (lr 1e-2, poly, no warm-up): only a freshly initialized 1x1x1 head
is trained, there are no pretrained weights to protect. Deep supervision is off, so exactly one output
layer (``decoder.seg_layers[-1]``) is trained; every other parameter has ``requires_grad = False``,
is left out of the optimizer, and every module without trainable parameters (normalization, dropout,
activations) is kept in eval mode during training, so batch statistics of BatchNorm variants are not
updated either. The trainer verifies at the end that the frozen tensors are bit-identical to those at
the start of training (after the pretrained weights were loaded) and fails loudly otherwise.

How the trainers know whether ``-pretrained_weights`` was given (nnU-Net does not tell them):
``nnUNetv2_train`` calls ``trainer.initialize()``, then ``load_pretrained_weights(trainer.network,
file)``, then ``trainer.run_training()``. At the end of ``initialize`` we record a SHA-1 digest of the
freshly initialized non-output weights; at the start of training (``on_train_start``) we compare:
changed weights at epoch 0 mean pretrained weights were loaded. A run continued with ``--c``
(``current_epoch > 0`` after nnU-Net loaded its own checkpoint) is allowed as is: nnU-Net itself refuses
``--c`` together with ``-pretrained_weights``, and the run was checked when it started. Secondary signal:
the ``-pretrained_weights`` value in ``sys.argv`` (only for the log, the provenance file and as an extra
reason to refuse in scratch trainers). The digest is primary because it also covers programmatic use
(``run_training(..., pretrained_weights=...)``) and cannot be fooled by an unrelated argv. Each run
writes ``pretrained_weights.json`` (loaded or not, file name if known, digests) to the fold folder.

Normalization check: when the weights file is known and records the pretraining normalization (foundation
checkpoints: ``nnssl_adaptation_plan["normalization_schemes"]`` / ``["use_mask_for_norm"]``), a target
configuration that normalizes differently is refused before training with the command that writes matching
plans (:func:`nnunetv2_petct.transfer.foundation.normalization_mismatch`); files without that record (e.g.
nnU-Net training checkpoints) are not checked.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from nnunetv2.utilities.file_path_utilities import convert_identifier_to_trainer_plans_config
from torch.optim.lr_scheduler import _LRScheduler

from nnunetv2_petct.conversion.channels import channel_kind
from nnunetv2_petct.io import write_json_atomic
from nnunetv2_petct.nnunet.trainers.base import (  # noqa: F401 - SkipFinalValidationMixin re-exported
    SkipFinalValidationMixin,
    TinyScheduleMixin,
    nnUNetTrainerPETCT,
    unwrap_network,
)
from nnunetv2_petct.nnunet.trainers.base import pretrained_file_from_argv as _pretrained_file_from_argv
from nnunetv2_petct.transfer.foundation import normalization_mismatch, read_adaptation_plan
from nnunetv2_petct.transfer.weights import tensor_digest

PRETRAINED_INFO_FILE = "pretrained_weights.json"
FINETUNE_PEAK_LR = 1e-3
"""Peak SGD rate for pretrained weights (nnssl / upstream ``PretrainedTrainer`` recipe)."""
SCRATCH_PEAK_LR = 1e-2
"""Peak SGD rate from random weights: nnU-Net's tuned default (the same recipe's from-scratch rate)."""


class PretrainedWeightsError(RuntimeError):
    """A transfer trainer was started with the wrong kind of initialization (weights missing or given)."""


# ---------------------------------------------------------------------------------------- schedule
def warmup_poly_lr(epoch: int, peak_lr: float, warmup_epochs: int, max_epochs: int, exponent: float = 0.9) -> float:
    """Learning rate of ``epoch`` (0-based): linear warm-up then polynomial decay.

    - ``epoch < warmup_epochs``: ``peak_lr * (epoch + 1) / warmup_epochs`` (reaches the peak in the
      last warm-up epoch; never 0);
    - afterwards: ``peak_lr * (1 - (epoch - warmup_epochs) / (max_epochs - warmup_epochs)) ** exponent``.

    ``warmup_epochs = 0`` is nnU-Net's plain poly schedule. Epochs past ``max_epochs`` give 0.
    """
    if warmup_epochs > 0 and epoch < warmup_epochs:
        return peak_lr * (epoch + 1) / warmup_epochs
    span = max(1, max_epochs - warmup_epochs)
    progress = min(1.0, max(0.0, (epoch - warmup_epochs) / span))
    return peak_lr * (1.0 - progress) ** exponent


class WarmupPolyLRScheduler(_LRScheduler):
    """:func:`warmup_poly_lr` as a scheduler that nnU-Net steps once per epoch with the epoch index.

    Stateless in the epoch (``step(epoch)`` sets the rate from the formula), so a run continued with
    ``--c`` resumes at the right rate without extra state.
    """

    def __init__(self, optimizer, peak_lr: float, warmup_epochs: int, max_epochs: int, exponent: float = 0.9):
        self.peak_lr = float(peak_lr)
        self.warmup_epochs = int(warmup_epochs)
        self.max_epochs = int(max_epochs)
        self.exponent = float(exponent)
        self.ctr = 0
        super().__init__(optimizer, -1)

    def step(self, current_step=None):  # noqa: D102 - nnU-Net calls step(self.current_epoch)
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        lr = warmup_poly_lr(int(current_step), self.peak_lr, self.warmup_epochs, self.max_epochs, self.exponent)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self):
        return self._last_lr


# ---------------------------------------------------------------------------------------- mixins
class FlexibleChannelsMixin:
    """Accept CT+PET datasets and single-channel CT-only / PET-only datasets.

    Sets ``expected_channels`` (checked by ``PETCTChannelCheckMixin``) from the dataset: one channel
    whose name is a CT or PET name -> that channel alone; anything else -> the default CT, PET.
    """

    def initialize(self):
        if not self.was_initialized:
            names = self.dataset_json.get("channel_names", {})
            if len(names) == 1:
                kind = channel_kind(str(next(iter(names.values()))))
                if kind in ("CT", "PET"):
                    self.expected_channels = (kind,)
        super().initialize()


def warmup_epochs_for(num_epochs: int, warmup_fraction: float, min_warmup_epochs: int = 1) -> int:
    """Warm-up length in epochs: 0 when ``warmup_fraction <= 0``, otherwise
    ``max(min_warmup_epochs, round(num_epochs * warmup_fraction))``."""
    if warmup_fraction <= 0:
        return 0
    return max(int(min_warmup_epochs), int(round(num_epochs * warmup_fraction)))


NNUNET_PEAK_LR, NNUNET_EPOCHS, NNUNET_ITERATIONS_PER_EPOCH = 1e-2, 1000, 250
"""nnU-Net's defaults (``nnUNetTrainer.__init__``), for trainers that keep them."""


def trainer_schedule(trainer_class: type) -> dict:
    """The optimisation schedule a trainer class trains with, read from its class attributes (no instance):
    ``peak_lr``, ``warmup_epochs``, ``epochs``, ``iterations_per_epoch``. Short variants
    (:class:`TinyScheduleMixin`: ``_tiny``, ``_demo``, ``_cpu1h``, ``_bench``) give their own epochs and
    iterations; :class:`FinetuneScheduleMixin` its peak and warm-up; otherwise nnU-Net's defaults (1e-2, no
    warm-up, 1000 x 250). A subclass that changes these in ``__init__`` is not seen."""
    short = issubclass(trainer_class, TinyScheduleMixin)
    epochs = int(trainer_class.tiny_num_epochs) if short else NNUNET_EPOCHS
    iterations = int(trainer_class.tiny_iterations_per_epoch) if short else NNUNET_ITERATIONS_PER_EPOCH
    if issubclass(trainer_class, FinetuneScheduleMixin):
        peak = float(trainer_class.finetune_initial_lr)
        warmup = warmup_epochs_for(epochs, trainer_class.warmup_fraction, trainer_class.min_warmup_epochs)
    else:
        peak, warmup = NNUNET_PEAK_LR, 0
    return {"peak_lr": peak, "warmup_epochs": warmup, "epochs": epochs, "iterations_per_epoch": iterations}


class FinetuneScheduleMixin:
    """SGD (nnU-Net's), peak lr :attr:`finetune_initial_lr`, linear warm-up, then poly (see module doc).

    Only parameters with ``requires_grad`` go to the optimizer (frozen ones are left out).
    """

    finetune_initial_lr: float = FINETUNE_PEAK_LR
    warmup_fraction: float = 0.05  # 50 of nnU-Net's 1000 epochs
    min_warmup_epochs: int = 1

    @property
    def warmup_epochs(self) -> int:
        return warmup_epochs_for(self.num_epochs, self.warmup_fraction, self.min_warmup_epochs)

    def initialize(self):
        if not self.was_initialized:
            self.initial_lr = self.finetune_initial_lr
        super().initialize()

    def configure_optimizers(self):
        params = [p for p in unwrap_network(self.network).parameters() if p.requires_grad]
        if not params:
            raise RuntimeError(f"{self.__class__.__name__}: no trainable parameter")
        optimizer = torch.optim.SGD(params, self.initial_lr, weight_decay=self.weight_decay, momentum=0.99,
                                    nesterov=True)
        scheduler = WarmupPolyLRScheduler(optimizer, self.initial_lr, self.warmup_epochs, self.num_epochs)
        self.print_to_log_file(
            f"optimizer: SGD nesterov momentum 0.99, peak lr {self.initial_lr}, linear warm-up "
            f"{self.warmup_epochs} epoch(s), poly decay to epoch {self.num_epochs}; "
            f"{sum(p.numel() for p in params)} trainable parameters"
        )
        return optimizer, scheduler


class ProbeScheduleMixin(FinetuneScheduleMixin):
    """nnU-Net's default rate (1e-2) and poly decay without warm-up, on the trainable parameters only."""

    finetune_initial_lr = SCRATCH_PEAK_LR
    warmup_fraction = 0.0


class PretrainedWeightsPolicyMixin:
    """Require (``"required"``) or refuse (``"forbidden"``) ``-pretrained_weights``; see the module doc."""

    pretrained_weights_policy: str = "required"  # "required" | "forbidden" | "any"
    pretrained_weights_hint: str = "foundation_final.pth"  # what -pretrained_weights should be, for messages

    def initialize(self):
        first = not self.was_initialized
        super().initialize()
        if first:
            self._petct_init_digest = tensor_digest(unwrap_network(self.network))

    def _pretrained_loaded(self) -> bool:
        return tensor_digest(unwrap_network(self.network)) != self._petct_init_digest

    def _check_pretrained_policy(self) -> None:
        loaded = self._pretrained_loaded()
        continued = self.current_epoch > 0
        argv_file = _pretrained_file_from_argv()
        name = self.__class__.__name__
        if not continued:
            if self.pretrained_weights_policy == "required" and not loaded:
                if "Finetune" in name or "LinearProbe" in name:
                    alt = name.replace("Finetune", "Scratch").replace("LinearProbe", "LinearProbeRandomInit")
                else:
                    alt = "nnUNetTrainerPETCTScratch"
                raise PretrainedWeightsError(
                    f"{name} needs pretrained weights, but none were loaded (no -pretrained_weights?). "
                    f"Run: nnUNetv2_train DATASET CONFIGURATION FOLD -tr {name} -pretrained_weights "
                    f"{self.pretrained_weights_hint}. To train from random weights use {alt}."
                )
            if self.pretrained_weights_policy == "forbidden" and (loaded or argv_file):
                raise PretrainedWeightsError(
                    f"{name} is a from-scratch baseline and refuses pretrained weights"
                    f"{f' (got -pretrained_weights {argv_file})' if argv_file else ' (weights were loaded)'}. "
                    f"Drop -pretrained_weights, or use the pretrained counterpart "
                    f"(nnUNetTrainerPETCTFinetune / nnUNetTrainerPETCTLinearProbe)."
                )
        if loaded and argv_file and not continued:
            self._check_pretraining_normalization(argv_file)
        info = {
            "trainer": name,
            "policy": self.pretrained_weights_policy,
            "pretrained_weights_loaded": bool(loaded) if not continued else None,
            "continued_from_epoch": int(self.current_epoch) if continued else None,
            "pretrained_weights_file": os.path.abspath(argv_file) if argv_file else None,
            "digest_random_init": self._petct_init_digest,
            "digest_at_train_start": tensor_digest(unwrap_network(self.network)),
            "detection": "SHA-1 of the non-output weights after initialize() vs at on_train_start(); "
                         "file name from sys.argv",
        }
        self.print_to_log_file(
            f"pretrained weights: {'loaded' if loaded else 'not loaded'}"
            f"{f' from {argv_file}' if argv_file else ''}{' (continued run)' if continued else ''}"
        )
        if self.local_rank == 0 and not continued:
            write_json_atomic(info, os.path.join(self.output_folder, PRETRAINED_INFO_FILE))

    def _check_pretraining_normalization(self, weights_file: str) -> None:
        """Refuse weights pretrained with another normalization than this configuration's (when the file says)."""
        plan = read_adaptation_plan(weights_file)
        if plan is None:
            return
        cm = self.configuration_manager
        problem = normalization_mismatch(plan, cm.normalization_schemes, cm.use_mask_for_norm)
        if problem:
            raise PretrainedWeightsError(f"{self.__class__.__name__}: {weights_file}: {problem}")
        self.print_to_log_file(f"normalization matches the pretraining: {list(cm.normalization_schemes)}")

    def on_train_start(self):
        if not self.was_initialized:
            self.initialize()
        self._check_pretrained_policy()  # before data loaders and worker processes exist
        super().on_train_start()


class FreezeMixin:
    """Train only the parameters of :meth:`trainable_parameters`; everything else frozen and in eval mode.

    Freezing happens in ``configure_optimizers`` (called by ``initialize`` right after the network is
    built, before nnU-Net loads pretrained weights; ``load_state_dict`` copies values in place and keeps
    ``requires_grad``). Frozen tensors are checked bit for bit at the end of training.
    """

    freeze_verify: bool = True

    def trainable_parameters(self, network) -> Iterable[torch.nn.Parameter]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _apply_freeze(self) -> None:
        mod = unwrap_network(self.network)
        for p in mod.parameters():
            p.requires_grad_(False)
        for p in self.trainable_parameters(mod):
            p.requires_grad_(True)

    def configure_optimizers(self):
        self._apply_freeze()
        return super().configure_optimizers()

    def _frozen_state(self) -> dict:
        mod = unwrap_network(self.network)
        sd = mod.state_dict(keep_vars=True)
        return {k: v for k, v in sd.items() if not (isinstance(v, torch.nn.Parameter) and v.requires_grad)}

    def _set_frozen_modules_to_eval(self) -> None:
        """Leaf modules: with parameters -> train mode iff one of them trains; without (norm without
        affine, dropout, activation) -> train mode iff their parent module has a trainable parameter."""
        mod = unwrap_network(self.network)
        parents = {}
        for m in mod.modules():
            for child in m.children():
                parents.setdefault(id(child), m)
        for m in mod.modules():
            if next(m.children(), None) is not None:
                continue  # only leaves compute; containers follow their children
            own = list(m.parameters(recurse=False))
            if own:
                m.train(any(p.requires_grad for p in own))
            else:
                parent = parents.get(id(m))
                m.train(parent is not None and any(p.requires_grad for p in parent.parameters()))

    def on_train_start(self):
        super().on_train_start()
        self._petct_frozen_digest = tensor_digest(self._frozen_state(), skip_output=False)
        n_train = sum(p.numel() for p in unwrap_network(self.network).parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in unwrap_network(self.network).parameters())
        self.print_to_log_file(f"frozen: {n_all - n_train} of {n_all} parameters; trainable: {n_train}")

    def on_train_epoch_start(self):
        super().on_train_epoch_start()  # nnU-Net puts the whole network in train mode here
        self._set_frozen_modules_to_eval()

    def on_train_end(self):
        super().on_train_end()
        if self.freeze_verify:
            now = tensor_digest(self._frozen_state(), skip_output=False)
            if now != self._petct_frozen_digest:
                raise RuntimeError(f"{self.__class__.__name__}: frozen weights changed during training (bug)")
            self.print_to_log_file("verified: frozen weights are bit-identical to those at the start of training")


class LinearProbeMixin(FreezeMixin):
    """Deep supervision off; only the final 1x1x1 output convolution (``decoder.seg_layers[-1]``) trains."""

    def initialize(self):
        if not self.was_initialized:
            self.enable_deep_supervision = False
        super().initialize()

    def trainable_parameters(self, network):
        return list(network.decoder.seg_layers[-1].parameters())


class FrozenEncoderMixin(FreezeMixin):
    """The encoder is frozen; the decoder (upsampling, convolutions, output layers) trains."""

    def trainable_parameters(self, network):
        # the decoder holds a reference to the encoder (``decoder.encoder``): leave those out
        return [p for n, p in network.decoder.named_parameters() if not n.startswith("encoder.")]


# ---------------------------------------------------------------------------------------- trainers
class _PETCTTransferBase(FlexibleChannelsMixin, nnUNetTrainerPETCT):
    """CT+PET or single-modality datasets; nnU-Net's defaults otherwise."""


class nnUNetTrainerPETCTFinetune(PretrainedWeightsPolicyMixin, FinetuneScheduleMixin, _PETCTTransferBase):
    """Fine-tune every layer from ``-pretrained_weights`` (required): peak lr 1e-3, 5 % linear warm-up, poly.

    The output layers (``.seg_layers.``) are not loaded (nnU-Net's loader) and start from random weights.
    """

    pretrained_weights_policy = "required"


class nnUNetTrainerPETCTScratch(PretrainedWeightsPolicyMixin, FinetuneScheduleMixin, _PETCTTransferBase):
    """From random weights (``-pretrained_weights`` refused) at nnU-Net's tuned peak lr 1e-2, with the warm-up
    and length of :class:`nnUNetTrainerPETCTFinetune`: the from-scratch baseline at its own tuned rate."""

    pretrained_weights_policy = "forbidden"
    finetune_initial_lr = SCRATCH_PEAK_LR


class nnUNetTrainerPETCTScratchLR1e3(PretrainedWeightsPolicyMixin, FinetuneScheduleMixin, _PETCTTransferBase):
    """Ablation: the fine-tuning rate (peak 1e-3) from random weights. Not a fair baseline (1e-3 is tuned for
    pretrained weights); it shows how much a too-low rate handicaps training from scratch."""

    pretrained_weights_policy = "forbidden"
    finetune_initial_lr = FINETUNE_PEAK_LR


class nnUNetTrainerPETCTLinearProbe(PretrainedWeightsPolicyMixin, LinearProbeMixin, ProbeScheduleMixin,
                                    _PETCTTransferBase):
    """Linear probe: only the final 1x1x1 output conv trains on the frozen pretrained network
    (``-pretrained_weights`` required; deep supervision off; norm layers frozen in eval mode)."""

    pretrained_weights_policy = "required"


class nnUNetTrainerPETCTFrozenEncoder(PretrainedWeightsPolicyMixin, FrozenEncoderMixin, FinetuneScheduleMixin,
                                      _PETCTTransferBase):
    """Frozen pretrained encoder, trained decoder (``-pretrained_weights`` required; fine-tuning schedule)."""

    pretrained_weights_policy = "required"


class nnUNetTrainerPETCTLinearProbeRandomInit(PretrainedWeightsPolicyMixin, LinearProbeMixin, ProbeScheduleMixin,
                                              _PETCTTransferBase):
    """Control for the probe: the same freezing on nnU-Net's random initialization (pretrained weights refused)."""

    pretrained_weights_policy = "forbidden"


class nnUNetTrainerPETCTFinetune_tiny(TinyScheduleMixin, SkipFinalValidationMixin,
                                      nnUNetTrainerPETCTFinetune):
    """:class:`nnUNetTrainerPETCTFinetune` with the tiny schedule (2 x 2 iterations; warm-up 1 epoch)."""


class nnUNetTrainerPETCTScratch_tiny(TinyScheduleMixin, SkipFinalValidationMixin,
                                     nnUNetTrainerPETCTScratch):
    """:class:`nnUNetTrainerPETCTScratch` with the tiny schedule."""


class nnUNetTrainerPETCTScratchLR1e3_tiny(TinyScheduleMixin, SkipFinalValidationMixin,
                                          nnUNetTrainerPETCTScratchLR1e3):
    """:class:`nnUNetTrainerPETCTScratchLR1e3` with the tiny schedule."""


class nnUNetTrainerPETCTLinearProbe_tiny(TinyScheduleMixin, SkipFinalValidationMixin,
                                         nnUNetTrainerPETCTLinearProbe):
    """:class:`nnUNetTrainerPETCTLinearProbe` with the tiny schedule."""


class nnUNetTrainerPETCTFrozenEncoder_tiny(TinyScheduleMixin, SkipFinalValidationMixin,
                                           nnUNetTrainerPETCTFrozenEncoder):
    """:class:`nnUNetTrainerPETCTFrozenEncoder` with the tiny schedule."""


class nnUNetTrainerPETCTLinearProbeRandomInit_tiny(TinyScheduleMixin, SkipFinalValidationMixin,
                                                   nnUNetTrainerPETCTLinearProbeRandomInit):
    """:class:`nnUNetTrainerPETCTLinearProbeRandomInit` with the tiny schedule."""


# ---------------------------------------------------------------------------------- network helpers
def load_check_target(path: str | os.PathLike, plans_identifier: str = "nnUNetPlans",
                      configuration: str | None = None) -> tuple[dict, dict | None, str]:
    """Plans, dataset.json (or None) and configuration of a ``--check`` target.

    ``path``: a plans JSON file; a trained-model folder (``.../Trainer__Plans__Configuration`` or one of
    its ``fold_*`` folders: ``plans.json`` + ``dataset.json``); or a preprocessed dataset folder
    (``<plans_identifier>.json`` + ``dataset.json``). The configuration comes from ``configuration``,
    else the trained-model folder name, else ``3d_fullres``.

    Raises:
        FileNotFoundError: nothing usable at ``path`` (the message says what was looked for).
    """
    p = Path(path)
    if p.is_dir() and p.name.startswith("fold_") and (p.parent / "plans.json").is_file():
        p = p.parent
    if p.is_file():
        plans_file, ds_file = p, p.parent / "dataset.json"
    elif (p / "plans.json").is_file():
        plans_file, ds_file = p / "plans.json", p / "dataset.json"
        parts = convert_identifier_to_trainer_plans_config(p.name)
        if configuration is None and len(parts) == 3:
            configuration = parts[2]
    elif (p / f"{plans_identifier}.json").is_file():
        plans_file, ds_file = p / f"{plans_identifier}.json", p / "dataset.json"
    else:
        raise FileNotFoundError(f"{p}: not a plans file, a trained-model folder (plans.json) or a preprocessed "
                                f"dataset folder ({plans_identifier}.json)")
    with open(plans_file) as f:
        plans = json.load(f)
    dataset_json = None
    if ds_file.is_file():
        with open(ds_file) as f:
            dataset_json = json.load(f)
    return plans, dataset_json, configuration or "3d_fullres"


def network_from_plans(plans: dict, configuration: str = "3d_fullres", num_input_channels: int | None = None,
                       dataset_json: dict | None = None, num_output_channels: int | None = None,
                       deep_supervision: bool = True) -> torch.nn.Module:
    """The network nnU-Net's trainers build for ``plans``/``configuration`` (``build_network_architecture``).

    Input channels: ``num_input_channels``, else the number of ``dataset_json`` channels. Output channels:
    ``num_output_channels``, else the dataset's segmentation heads, else 2 (output layers are never
    transferred, so their size does not matter for compatibility checks).

    Raises:
        ValueError: the input channel count is unknown, or the configuration is not in the plans.
    """
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(plans)
    if configuration not in plans.get("configurations", {}):
        raise ValueError(f"configuration {configuration!r} not in the plans (have {list(plans.get('configurations', {}))})")
    cm = pm.get_configuration(configuration)
    if num_input_channels is None:
        if dataset_json is None:
            raise ValueError("number of input channels unknown: give a dataset.json or num_input_channels")
        num_input_channels = len(dataset_json.get("channel_names", dataset_json.get("modality", {})))
    if num_output_channels is None:
        num_output_channels = pm.get_label_manager(dataset_json).num_segmentation_heads if dataset_json else 2
    return nnUNetTrainer.build_network_architecture(pm, cm, int(num_input_channels), int(num_output_channels),
                                                    deep_supervision)


TRANSFER_TRAINERS = {
    "pretrained": "nnUNetTrainerPETCTFinetune",
    "scratch": "nnUNetTrainerPETCTScratch",
    "nnunet_default": "nnUNetTrainerPETCT",
    "probe": "nnUNetTrainerPETCTLinearProbe",
    "late_fusion_probe": "nnUNetTrainerPETCTLateFusionProbe",
    "scratch_lr1e3": "nnUNetTrainerPETCTScratchLR1e3",
    "frozen_encoder": "nnUNetTrainerPETCTFrozenEncoder",
    "probe_random_init": "nnUNetTrainerPETCTLinearProbeRandomInit",
    "interactive_pretrained": "nnUNetTrainerPETCTInteractive",
    "interactive_scratch": "nnUNetTrainerPETCTInteractiveScratch",
    "interactive_stock": "nnUNetTrainerPETCTInteractiveStock",
}
"""Method name (label-efficiency table) -> trainer class name (append ``_tiny``/``_demo`` for those schedules)."""

METHOD_RECIPES = {
    "pretrained": "fine-tuned from the joint CT+PET foundation model: SGD peak lr 1e-3, 5 % linear warm-up, poly, "
                  "1000 x 250 it. (nnssl / nnU-Net PretrainedTrainer recipe for pretrained weights)",
    "scratch": "from random weights: SGD peak lr 1e-2 (nnU-Net's tuned rate; the nnssl recipe's from-scratch rate) "
               "with the same warm-up and length as fine-tuning",
    "nnunet_default": "stock nnU-Net: SGD lr 1e-2, poly, no warm-up, 1000 x 250 it. (nnU-Net's defaults)",
    "probe": "linear probe: only the final 1x1x1 conv trains on the frozen joint foundation model "
             "(lr 1e-2, poly, no warm-up; deep supervision off)",
    "late_fusion_probe": "separated-modality linear probe: frozen CT-only and PET-only foundation models, each on "
                         "its own channel, last decoder features concatenated, one 1x1x1 head trained "
                         "(same head parameters per input feature as the probe)",
    "scratch_lr1e3": "ablation: random weights at the fine-tuning rate 1e-3 (same warm-up and length); "
                     "under-tuned for training from scratch",
    "frozen_encoder": "frozen pretrained encoder, decoder trained with the fine-tuning schedule (lr 1e-3)",
    "probe_random_init": "control: the linear probe on nnU-Net's random initialization (lr 1e-2)",
    "interactive_pretrained": "click-guided (CT, PET + tumor/background click heatmaps), fine-tuned from the "
                              "foundation model with zero-initialised click weights: the fine-tuning recipe",
    "interactive_scratch": "click-guided from random weights: the from-scratch recipe (peak lr 1e-2, same "
                           "warm-up and length)",
    "interactive_stock": "click-guided from random weights: stock nnU-Net's recipe (lr 1e-2, poly, no warm-up)",
}
"""Method -> one-line recipe and the reason for it (label-efficiency table, ``--help``, README)."""

NEEDS_PRETRAINED = {"pretrained", "probe", "frozen_encoder", "interactive_pretrained"}
"""Methods that need the joint foundation checkpoint (``--pretrained``)."""

NEEDS_SEPARATED = {"late_fusion_probe"}
"""Methods that need the two single-modality checkpoints (``--pretrained-ct`` / ``--pretrained-pet``)."""

__all__ = [
    "FINETUNE_PEAK_LR",
    "NNUNET_PEAK_LR",
    "METHOD_RECIPES",
    "NEEDS_PRETRAINED",
    "NEEDS_SEPARATED",
    "SCRATCH_PEAK_LR",
    "TRANSFER_TRAINERS",
    "PretrainedWeightsError",
    "load_check_target",
    "network_from_plans",
    "WarmupPolyLRScheduler",
    "nnUNetTrainerPETCTFinetune",
    "nnUNetTrainerPETCTFinetune_tiny",
    "nnUNetTrainerPETCTFrozenEncoder",
    "nnUNetTrainerPETCTFrozenEncoder_tiny",
    "nnUNetTrainerPETCTLinearProbe",
    "nnUNetTrainerPETCTLinearProbeRandomInit",
    "nnUNetTrainerPETCTLinearProbeRandomInit_tiny",
    "nnUNetTrainerPETCTLinearProbe_tiny",
    "nnUNetTrainerPETCTScratch",
    "nnUNetTrainerPETCTScratchLR1e3",
    "nnUNetTrainerPETCTScratchLR1e3_tiny",
    "nnUNetTrainerPETCTScratch_tiny",
    "trainer_schedule",
    "warmup_epochs_for",
    "warmup_poly_lr",
]
