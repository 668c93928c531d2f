"""The separated-modality linear probe: two frozen single-modality foundation models, one trained head.

    nnUNetv2_petct_late_fusion_checkpoint --ct CT_ONLY/foundation_final.pth --pet PET_ONLY/foundation_final.pth \\
        -o late_fusion.pth
    nnUNetv2_train DATASET 3d_fullres FOLD -tr nnUNetTrainerPETCTLateFusionProbe -pretrained_weights late_fusion.pth
    nnUNetv2_predict ... -tr nnUNetTrainerPETCTLateFusionProbe

The CT-only and PET-only foundation models come from ``nnUNetTrainerPETCTMAE_CTOnly`` / ``_PETOnly`` on
the same plans. The network (:class:`nnunetv2_petct.transfer.late_fusion.LateFusionNetwork`) runs the
CT network on channel 0 and the PET network on channel 1, concatenates their last decoder features and
applies one 1x1x1 convolution — the only trainable layer, with the joint probe's schedule (lr 1e-2,
poly, no warm-up) and the same freezing guarantees (frozen tensors bit-identical at the end, frozen
modules in eval mode). ``build_network_architecture`` builds it from the plans alone, so
``nnUNetv2_predict`` rebuilds the same network from the class name stored in the checkpoint. The
bundle's keys match the network's non-output keys, so nnU-Net's stock loader loads it; the head
(``head.seg_layers.0``) is an output layer and is never loaded.
"""

from __future__ import annotations

import torch

from nnunetv2_petct.nnunet.trainers.base import (
    SkipFinalValidationMixin,
    TinyScheduleMixin,
    nnUNetTrainerPETCT,
)
from nnunetv2_petct.nnunet.trainers.finetune import (
    LinearProbeMixin,
    PretrainedWeightsPolicyMixin,
    ProbeScheduleMixin,
)
from nnunetv2_petct.transfer.late_fusion import BRANCH_NAMES, LateFusionNetwork


def build_late_fusion_network(plans_manager, configuration_manager, num_input_channels: int,
                              num_output_channels: int) -> LateFusionNetwork:
    """The late-fusion network for the plans: one single-channel U-Net of the plans per input channel
    (channel 0 = CT, 1 = PET), built exactly as nnU-Net builds the single-modality MAE networks.

    Raises:
        ValueError: the dataset does not have exactly the 2 channels CT, PET.
    """
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    if int(num_input_channels) != len(BRANCH_NAMES):
        raise ValueError(f"the late-fusion probe needs {len(BRANCH_NAMES)} input channels (CT, PET); the dataset has "
                         f"{num_input_channels}")
    branches = {name: nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, 1, 1, False)
                for name in BRANCH_NAMES}
    return LateFusionNetwork(branches, int(num_output_channels))


class LateFusionProbeMixin(LinearProbeMixin):
    """Only the fusion head trains; deep supervision does not exist for this network."""

    def trainable_parameters(self, network):
        return list(network.head.parameters())

    def set_deep_supervision_enabled(self, enabled: bool):
        if enabled:
            raise RuntimeError(f"{self.__class__.__name__}: the late-fusion network has no deep supervision")


class nnUNetTrainerPETCTLateFusionProbe(PretrainedWeightsPolicyMixin, LateFusionProbeMixin, ProbeScheduleMixin,
                                        nnUNetTrainerPETCT):
    """Separated-modality linear probe: frozen CT-only and PET-only foundation models on their own channels,
    concatenated last decoder features, one trained 1x1x1 head (``-pretrained_weights`` = a late-fusion
    checkpoint, required). CT+PET datasets only."""

    pretrained_weights_policy = "required"
    pretrained_weights_hint = ("late_fusion.pth (made by nnUNetv2_petct_late_fusion_checkpoint --ct CT_ONLY.pth "
                               "--pet PET_ONLY.pth -o late_fusion.pth)")

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> torch.nn.Module:
        return build_late_fusion_network(plans_manager, configuration_manager, num_input_channels,
                                         num_output_channels)


class nnUNetTrainerPETCTLateFusionProbe_tiny(TinyScheduleMixin, SkipFinalValidationMixin,
                                             nnUNetTrainerPETCTLateFusionProbe):
    """:class:`nnUNetTrainerPETCTLateFusionProbe` with the tiny schedule."""


__all__ = ["build_late_fusion_network", "nnUNetTrainerPETCTLateFusionProbe", "nnUNetTrainerPETCTLateFusionProbe_tiny"]
