"""The demo's trainer pieces: the output-prior initialization, the schedules' iteration counts."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from nnunetv2_petct.nnunet.trainers.demo import (
    DEMO_SEG_EPOCHS,
    DEMO_SEG_ITERATIONS,
    nnUNetTrainerPETCT_demo,
    nnUNetTrainerPETCTFinetune_demo,
    nnUNetTrainerPETCTLinearProbe_demo,
    nnUNetTrainerPETCTScratch_demo,
    set_output_prior,
)
from tests.conftest import run


class _Decoder(torch.nn.Module):
    def __init__(self, n_out: int):
        super().__init__()
        self.seg_layers = torch.nn.ModuleList([torch.nn.Conv3d(4, n_out, 1), torch.nn.Conv3d(4, n_out, 1)])


class _Net(torch.nn.Module):
    def __init__(self, n_out: int = 2):
        super().__init__()
        self.decoder = _Decoder(n_out)


def test_output_prior_gives_the_prior_where_features_are_silent():
    net = _Net(2)
    weights_before = [layer.weight.detach().clone() for layer in net.decoder.seg_layers]
    assert set_output_prior(net, 0.01) == 2
    for layer, w in zip(net.decoder.seg_layers, weights_before):
        # zero features: the output is the bias alone; softmax of (0, log(p / (1 - p))) is exactly p
        p = torch.softmax(layer(torch.zeros(1, 4, 1, 1, 1)), dim=1)[0, 1].item()
        assert p == pytest.approx(0.01, rel=1e-5)
        assert torch.equal(layer.weight, w)  # weights untouched
    # regions (sigmoid outputs): every channel starts at the prior
    regions = _Net(3)
    set_output_prior(regions, 0.2, regions=True)
    assert torch.sigmoid(regions.decoder.seg_layers[0].bias).tolist() == pytest.approx([0.2] * 3)
    assert set_output_prior(torch.nn.Linear(2, 2), 0.01) == 0  # no seg_layers: nothing to do
    with pytest.raises(ValueError):
        set_output_prior(net, 1.0)


def test_every_demo_segmentation_trainer_starts_at_the_prior_and_shares_the_schedule():
    for cls in (nnUNetTrainerPETCTFinetune_demo, nnUNetTrainerPETCTScratch_demo, nnUNetTrainerPETCT_demo,
                nnUNetTrainerPETCTLinearProbe_demo):
        assert cls.output_prior == 0.01
        assert (cls.tiny_num_epochs, cls.tiny_iterations_per_epoch) == (DEMO_SEG_EPOCHS, DEMO_SEG_ITERATIONS)


_SCRIPT = """
import json, sys, torch
from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
from nnunetv2_petct.nnunet.trainers.demo import nnUNetTrainerPETCTFinetune_demo as T
pre = sys.argv[1]
plans = json.load(open(pre + '/nnUNetPlans.json')); plans['continue_training'] = False
t = T(plans, '3d_fullres', 0, json.load(open(pre + '/dataset.json')), device=torch.device('cpu'))
t.initialize()
other = T.build_network_architecture(t.plans_manager, t.configuration_manager, 2, 2, True)
torch.save({'network_weights': other.state_dict()}, sys.argv[2])
load_pretrained_weights(t.network, sys.argv[2])
sd, osd = t.network.state_dict(), other.state_dict()
print(json.dumps({'bias': [sd[k].tolist() for k in sd if '.seg_layers.' in k and k.endswith('bias')],
                  'loaded': all(torch.equal(sd[k], osd[k]) for k in sd if '.seg_layers.' not in k)}))
"""


@pytest.mark.slow
def test_output_prior_survives_pretrained_weights(tiny_dataset, tmp_path):
    d = tiny_dataset
    pre = d.root / "preprocessed" / d.dataset_name
    proc = run([sys.executable, "-c", _SCRIPT, str(pre), str(tmp_path / "weights.pth")], d.env)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    # nnU-Net's loader transfers everything but the output layers, which keep the prior
    assert res["loaded"] is True
    logit = math.log(0.01 / 0.99)
    assert res["bias"] and all(b == pytest.approx([0.0, logit], abs=1e-6) for b in res["bias"])
