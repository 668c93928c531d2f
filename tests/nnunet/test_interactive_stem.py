"""The interactive trainers' network surgery, in process: widening the input convolution with zero click
slices leaves the network's output unchanged whatever the clicks are; the zero-click hook feeds stock
2-channel inputs; the training batch gets its two click channels."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from nnunetv2_petct.nnunet.trainers.interactive import (
    CLICK_CHANNELS,
    InteractiveClicksMixin,
    add_zero_click_channels_hook,
    input_projection,
    set_input_channels,
    widen_input_projection,
)


def _unet(in_channels: int = 2, seed: int = 0) -> torch.nn.Module:
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    torch.manual_seed(seed)
    net = PlainConvUNet(in_channels, 3, (4, 8, 16), torch.nn.Conv3d, 3, ((1, 1, 1), (2, 2, 2), (2, 2, 2)), 1, 2, 1,
                        conv_bias=True, norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                        nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=False)
    with torch.no_grad():  # non-trivial norm parameters, so that any reset would show
        for n, p in net.named_parameters():
            if "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    return net.eval()


def test_widened_network_equals_the_pretrained_one_for_any_clicks():
    pretrained = _unet(2)
    widened = copy.deepcopy(pretrained)
    assert widen_input_projection(widened, 2) == (2, 2 + CLICK_CHANNELS)
    _, conv = input_projection(widened)
    assert conv.weight.shape[1] == 4 and conv.in_channels == 4
    assert torch.count_nonzero(conv.weight[:, 2:]) == 0  # the click slices start at zero
    assert torch.equal(conv.weight[:, :2], input_projection(pretrained)[1].weight)  # image slices unchanged
    g = torch.Generator().manual_seed(3)
    x = torch.randn((2, 2, 16, 16, 16), generator=g)
    for clicks in (torch.zeros((2, 2, 16, 16, 16)), torch.rand((2, 2, 16, 16, 16), generator=g) * 5):
        with torch.no_grad():
            diff = (widened(torch.cat([x, clicks], 1)) - pretrained(x)).abs().max().item()
        assert diff <= 1e-6


def test_after_training_steps_the_click_channels_change_the_output():
    """The check above is not vacuous: once the click weights move, clicks change the output."""
    net = _unet(2)
    widen_input_projection(net, 2)
    _, conv = input_projection(net)
    with torch.no_grad():
        conv.weight[:, 2:] += 0.5
    x = torch.randn((1, 2, 16, 16, 16))
    clicks = torch.zeros((1, 2, 16, 16, 16))
    clicks[0, 0, 8, 8, 8] = 1.0
    with torch.no_grad():
        a, b = net(torch.cat([x, torch.zeros_like(clicks)], 1)), net(torch.cat([x, clicks], 1))
    assert (a - b).abs().max().item() > 1e-3


def test_narrowing_keeps_the_first_slices_and_rejects_nothing_else():
    net = _unet(4, seed=1)
    w4 = input_projection(net)[1].weight.detach().clone()
    assert set_input_channels(net, 2) == (4, 2)
    w2 = input_projection(net)[1].weight
    assert w2.shape[1] == 2 and torch.equal(w2, w4[:, :2])
    assert set_input_channels(net, 2) == (2, 2)  # no-op


def test_zero_click_hook_makes_two_channel_input_the_no_click_prediction():
    net = _unet(4, seed=2)
    add_zero_click_channels_hook(net, 2)
    x = torch.randn((1, 2, 16, 16, 16))
    with torch.no_grad():
        via_hook = net(x)
        explicit = net(torch.cat([x, torch.zeros((1, 2, 16, 16, 16))], 1))
        with_clicks = net(torch.cat([x, torch.ones((1, 2, 16, 16, 16))], 1))
    assert torch.equal(via_hook, explicit)
    assert not torch.equal(via_hook, with_clicks)  # 4-channel input passes unchanged (clicks are used)


def test_training_batch_gets_click_channels_rendered_from_its_label():
    """``_with_clicks``: the data gains tumor/background heatmaps; tumor peaks sit inside the label's lesion."""
    from nnunetv2_petct.interactive.simulation import TrainingClickConfig

    class Fake(InteractiveClicksMixin):
        num_input_channels = 2
        device = torch.device("cpu")
        click_config = TrainingClickConfig(p_no_clicks=0.0)

        class configuration_manager:  # noqa: N801 - stands in for nnU-Net's attribute
            spacing = (2.0, 2.0, 2.0)

    label = torch.zeros((4, 1, 16, 16, 16))
    label[:, :, 4:10, 4:10, 4:10] = 1
    data = torch.randn((4, 2, 16, 16, 16))
    data[:, 1] += 5 * label[:, 0]
    out = Fake()._with_clicks({"data": data, "target": [label]}, np.random.default_rng(0))
    assert out["data"].shape == (4, 4, 16, 16, 16)
    assert torch.equal(out["data"][:, :2], data)
    tumor = out["data"][:, 2]
    n_with_tumor_peak = 0
    for b in range(4):
        peaks = (tumor[b] == 1.0).nonzero()
        assert all(label[b, 0, z, y, x] == 1 for z, y, x in peaks.tolist())
        n_with_tumor_peak += int(len(peaks) > 0)
    assert n_with_tumor_peak >= 1
    assert float(out["data"][:, 2:].max()) <= 1.0 + 1e-6


@pytest.mark.parametrize("name", ["nnUNetTrainerPETCTInteractive", "nnUNetTrainerPETCTInteractiveScratch",
                                  "nnUNetTrainerPETCTInteractiveStock"])
def test_each_interactive_trainer_has_its_schedule_variants(name):
    from nnunetv2_petct.nnunet.registry import find_trainer_class
    from nnunetv2_petct.nnunet.trainers.finetune import TRANSFER_TRAINERS

    assert name in TRANSFER_TRAINERS.values()
    for suffix in ("", "_tiny", "_demo", "_cpu1h", "_bench"):
        cls = find_trainer_class(name + suffix)
        assert cls is not None and issubclass(cls, InteractiveClicksMixin), name + suffix
