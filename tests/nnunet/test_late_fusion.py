"""The separated-modality late-fusion probe: network, bundle and CLI (in-process on the tiny plans).

The end-to-end training (only the head trains, frozen tensors bit-identical) runs in the label-efficiency
grid of ``test_finetune_trainers`` (method ``late_fusion_probe``).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

from tests.conftest import cli
from tests.nnunet.test_finetune_trainers import (  # noqa: F401 - transfer_grid is a fixture
    RUNS,
    TRAINERS,
    fold_dir,
    load_trained,
    transfer_grid,
)


@pytest.fixture(scope="module")
def plans(tiny_planned):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pre = Path(tiny_planned.env["nnUNet_preprocessed"]) / tiny_planned.dataset_name
    pm = PlansManager(json.loads((pre / "nnUNetPlans.json").read_text()))
    return pre, pm, pm.get_configuration("3d_fullres")


def _single(pm, cm, seed: int):
    """A single-channel U-Net of the plans (what nnUNetTrainerPETCTMAE_CTOnly/_PETOnly train), random weights
    with non-trivial norm parameters."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    torch.manual_seed(seed)
    net = nnUNetTrainer.build_network_architecture(pm, cm, 1, 1, False)
    with torch.no_grad():
        for n, p in net.named_parameters():
            if "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    return net.eval()


def _foundation(net, pre: Path, channel: int, name: str) -> dict:
    from nnunetv2_petct.transfer.foundation import build_foundation_checkpoint

    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    meta = {"trainer_name": f"synthetic {name}", "input_channels": [channel], "channel_order": [name],
            "pretraining_data": [{"dataset_name": "DatasetX", "cases": [{"case_id": f"{name.lower()}_case"}]}]}
    return build_foundation_checkpoint(net.state_dict(), plans, "3d_fullres", 1, meta, [name])


def test_late_fusion_output_equals_the_concatenation_computed_by_hand(plans, tmp_path):
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    from nnunetv2_petct.nnunet.trainers.late_fusion import nnUNetTrainerPETCTLateFusionProbe
    from nnunetv2_petct.transfer.late_fusion import bundle_late_fusion_checkpoints
    from nnunetv2_petct.transfer.weights import save_checkpoint

    pre, pm, cm = plans
    ct_net, pet_net = _single(pm, cm, 1), _single(pm, cm, 2)
    bundle = bundle_late_fusion_checkpoints(_foundation(ct_net, pre, 0, "CT"), _foundation(pet_net, pre, 1, "PET"))
    path = save_checkpoint(bundle, tmp_path / "late_fusion.pth")
    # the network as nnUNetv2_train / nnUNetv2_predict build it (staticmethod, plans only), loaded by nnU-Net's
    # own -pretrained_weights loader
    net = nnUNetTrainerPETCTLateFusionProbe.build_network_architecture(pm, cm, 2, 2, False)
    load_pretrained_weights(net, str(path))
    torch.manual_seed(3)
    with torch.no_grad():
        net.head.seg_layers[0].weight.normal_()
        net.head.seg_layers[0].bias.normal_()
    net.eval()

    # by hand: run the two single-channel networks, take the input of their final 1x1x1 layer, concatenate,
    # apply the head's weights as a per-voxel matrix product
    captured = {}

    def grab(name):
        def hook(module, inputs):
            captured[name] = inputs[0].detach().clone()
        return hook

    ct_net.decoder.seg_layers[-1].register_forward_pre_hook(grab("ct"))
    pet_net.decoder.seg_layers[-1].register_forward_pre_hook(grab("pet"))
    torch.manual_seed(4)
    x = torch.randn(1, 2, *cm.patch_size)
    with torch.no_grad():
        ct_net(x[:, :1])
        pet_net(x[:, 1:2])
        got = net(x)
    feats = torch.cat([captured["ct"], captured["pet"]], dim=1)
    f = captured["ct"].shape[1]
    w = net.head.seg_layers[0].weight.reshape(2, 2 * f)  # (classes, 2F) of the 1x1x1 conv
    b = net.head.seg_layers[0].bias
    expected = torch.einsum("bfzyx,cf->bczyx", feats, w) + b[None, :, None, None, None]
    assert got.shape == (1, 2, *cm.patch_size)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # same trainable parameters per input feature as the joint probe: joint head F*C + C, late fusion 2F*C + C
    joint_head = ct_net.decoder.seg_layers[-1]
    assert joint_head.in_channels == f and joint_head.weight.numel() == f * 1  # the single-channel MAE head
    assert net.head.seg_layers[0].weight.numel() == 2 * f * 2 and net.head.seg_layers[0].bias.numel() == 2
    # every non-output tensor of the network came from the bundle, and the branches have no output layers
    sd = net.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in bundle["network_weights"].items())
    assert {k for k in sd if not k.startswith("head.")} == set(bundle["network_weights"])
    assert not any(".seg_layers." in k for k in bundle["network_weights"])


def test_bundle_records_sources_and_refuses_wrong_inputs(plans):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunetv2_petct.transfer.late_fusion import LateFusionError, bundle_late_fusion_checkpoints
    from nnunetv2_petct.transfer.leakage import pretraining_data_of

    pre, pm, cm = plans
    ct, pet = _foundation(_single(pm, cm, 1), pre, 0, "CT"), _foundation(_single(pm, cm, 2), pre, 1, "PET")
    bundle = bundle_late_fusion_checkpoints(ct, pet, ("ct.pth", "pet.pth"))
    srcs = bundle["petct_metadata"]["late_fusion"]["sources"]
    assert [(s["branch"], s["channel"], s["file"]) for s in srcs] == [("ct", "CT", "ct.pth"), ("pet", "PET", "pet.pth")]
    # the leakage guard sees the pretraining cases of both sources
    assert [c["case_id"] for d in pretraining_data_of(bundle) for c in d["cases"]] == ["ct_case", "pet_case"]
    import io

    buf = io.BytesIO()  # the bundle must be weights_only-safe
    torch.save(bundle, buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=True)["format"] == bundle["format"]

    joint = nnUNetTrainer.build_network_architecture(pm, cm, 2, 2, False)
    with pytest.raises(LateFusionError, match="2 input channels.*nnUNetTrainerPETCTLinearProbe"):
        bundle_late_fusion_checkpoints({"network_weights": joint.state_dict()}, pet)
    with pytest.raises(LateFusionError, match="swap --ct and --pet"):
        bundle_late_fusion_checkpoints(pet, ct)
    plans_other = json.loads((pre / "nnUNetPlans.json").read_text())
    plans_other["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"][-1] *= 2
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm2 = PlansManager(plans_other)
    other = nnUNetTrainer.build_network_architecture(pm2, pm2.get_configuration("3d_fullres"), 1, 1, False)
    with pytest.raises(LateFusionError, match="different architectures"):
        bundle_late_fusion_checkpoints(ct, {"network_weights": other.state_dict()})


def test_late_fusion_cli_writes_a_bundle_the_stock_loader_accepts(plans, tmp_path):
    from nnunetv2_petct.transfer.weights import save_checkpoint

    pre, pm, cm = plans
    ct = save_checkpoint(_foundation(_single(pm, cm, 1), pre, 0, "CT"), tmp_path / "ct.pth")
    pet = save_checkpoint(_foundation(_single(pm, cm, 2), pre, 1, "PET"), tmp_path / "pet.pth")
    out = tmp_path / "lf.pth"
    proc = subprocess.run([cli("nnUNetv2_petct_late_fusion_checkpoint"), "--ct", str(ct), "--pet", str(pet), "-o",
                           str(out), "--check", str(pre)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "compatible" in proc.stdout and out.is_file()
    swapped = subprocess.run([cli("nnUNetv2_petct_late_fusion_checkpoint"), "--ct", str(pet), "--pet", str(ct), "-o",
                              str(tmp_path / "bad.pth")], capture_output=True, text=True, timeout=300)
    assert swapped.returncode == 2 and swapped.stderr.startswith("error: ") and "swap" in swapped.stderr
    assert not (tmp_path / "bad.pth").exists()
    # issue 21 item 8: a --check target that cannot be read refuses before anything is written
    missing = subprocess.run([cli("nnUNetv2_petct_late_fusion_checkpoint"), "--ct", str(ct), "--pet", str(pet),
                              "-o", str(tmp_path / "lf7.pth"), "--check", str(tmp_path / "missing_plans.json")],
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and missing.stderr.startswith("error: --check ") and "Traceback" not in missing.stderr
    assert "nothing written" in missing.stderr and not (tmp_path / "lf7.pth").exists()


# ------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
@pytest.mark.parametrize("run_name", RUNS)
def test_late_fusion_probe_trains_only_its_head(transfer_grid, run_name):  # noqa: F811
    """Through the runner (stock nnUNetv2_train -pretrained_weights late_fusion_checkpoint.pth): every tensor of
    both frozen branches is bit-identical to the bundle after training; only the 1x1x1 head trained."""
    from nnunetv2_petct.transfer.weights import differing_tensors

    g = transfer_grid
    fold = next(s["fold"] for s in g.design["subsets"] if s["run_name"] == run_name)
    fd = fold_dir(g.env, g.dataset_name, TRAINERS["late_fusion_probe"], fold)
    final = load_trained(fd / "checkpoint_final.pth")["network_weights"]
    bundle = torch.load(g.out / "late_fusion_checkpoint.pth", weights_only=True)
    assert differing_tensors(bundle["network_weights"], final) == []  # every branch tensor, bit for bit
    assert set(final) - set(bundle["network_weights"]) == {"head.seg_layers.0.weight", "head.seg_layers.0.bias"}
    # the bundle holds the two single-modality networks unchanged (their output layers dropped)
    ct = torch.load(g.foundation_ct, weights_only=True)["network_weights"]
    assert all(torch.equal(final[f"branches.ct.{k}"], v) for k, v in ct.items() if ".seg_layers." not in k)
    # tiny plans: last decoder stage 4 features per branch -> head 2 x 4 -> 2 classes: 16 weights + 2 biases,
    # vs 4 * 2 + 2 = 10 for the joint probe: the same 2 weights per input feature
    assert final["head.seg_layers.0.weight"].shape == (2, 8, 1, 1, 1)
    log = "\n".join(p.read_text() for p in fd.glob("training_log_*.txt"))
    assert re.search(r"trainable: 18\s*$", log, re.M)
    assert "verified: frozen weights are bit-identical" in log
    info = json.loads((fd / "pretrained_weights.json").read_text())
    assert info["pretrained_weights_loaded"] is True
    assert Path(info["pretrained_weights_file"]) == g.out / "late_fusion_checkpoint.pth"
