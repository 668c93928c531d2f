"""Issue 16, item 3: a user-supplied .pth is read with torch.load(weights_only=True) before anything else
touches it. A crafted pickle (its __reduce__ runs a shell command) never runs; empty, truncated and text
files give one message naming the file; another architecture gives a short summary and the fix."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from reliability_helpers import run_cli

from nnunetv2_petct.transfer import weights as W


class Payload:
    """Unpickling this runs ``touch <marker>`` (what a hostile checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def small_unet(in_ch: int = 2):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    torch.manual_seed(0)
    return PlainConvUNet(input_channels=in_ch, num_classes=2, deep_supervision=False, n_stages=2,
                         features_per_stage=[4, 8], conv_op=torch.nn.Conv3d, kernel_sizes=[[3, 3, 3]] * 2,
                         strides=[[1, 1, 1], [2, 2, 2]], n_conv_per_stage=[1, 1], n_conv_per_stage_decoder=[1],
                         conv_bias=True, norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"affine": True},
                         nonlin=torch.nn.LeakyReLU)


def bad_files(folder: Path, network) -> dict[str, Path]:
    """evil (zip, torch.save), evil_legacy (plain pickle), truncated, empty, text, other_arch."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / "PAYLOAD_RAN"
    good = {"network_weights": network.state_dict()}
    files = {k: folder / f"{k}.pth" for k in ("evil", "evil_legacy", "truncated", "empty", "text", "other_arch")}
    torch.save({**good, "x": Payload(marker)}, files["evil"])
    files["evil_legacy"].write_bytes(pickle.dumps({**good, "x": Payload(marker)}, protocol=2))
    torch.save(good, folder / "good.pth")
    data = (folder / "good.pth").read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["empty"].write_bytes(b"")
    files["text"].write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    torch.save({"network_weights": small_unet(1).state_dict()}, files["other_arch"])
    return files


@pytest.mark.parametrize("name, error, says", [
    ("evil", W.UnsafeCheckpointError, "it references posix.system"),
    ("evil_legacy", W.UnsafeCheckpointError, "not a weights-only checkpoint"),
    ("truncated", W.CorruptCheckpointError, "truncated or corrupt"),
    ("empty", W.CorruptCheckpointError, "is empty (0 bytes)"),
    ("text", W.CorruptCheckpointError, "it is a text file"),
    ("other_arch", W.IncompatibleCheckpointError, "does not fit the network"),
])
def test_check_pretrained_weights_file_refuses_with_one_message(tmp_path, name, error, says):
    net = small_unet(2)
    files = bad_files(tmp_path, net)
    with pytest.raises(error) as info:
        W.check_pretrained_weights_file(files[name], net)
    msg = str(info.value)
    assert str(files[name]) in msg and says in msg
    assert not (tmp_path / "PAYLOAD_RAN").exists()
    if error is W.UnsafeCheckpointError:
        assert "--import-trusted" in msg and W.TRUST_CHECKPOINT_ENV in msg
    if name == "other_arch":  # input channels 1 vs 2: the adaptation fix, and a short list
        assert "Input channels: checkpoint 1, network 2" in msg and "nnUNetv2_petct_adapt_checkpoint" in msg
        assert len(msg.splitlines()) < 15 and "tensor([" not in msg
    assert W.check_pretrained_weights_file(tmp_path / "good.pth", net).ok


def test_payload_is_live_when_loaded_unsafely(tmp_path):
    """Control: the crafted file really runs its payload under weights_only=False (so the tests above can fail)."""
    files = bad_files(tmp_path, small_unet(2))
    torch.load(files["evil"], weights_only=False)
    assert (tmp_path / "PAYLOAD_RAN").exists()


def test_import_trusted_converts_a_legacy_checkpoint(tmp_path):
    """A trusted legacy file (numpy values, a date object) becomes a weights-only file with the same weights."""
    import datetime

    net = small_unet(2)
    legacy = tmp_path / "legacy.pth"
    torch.save({"network_weights": net.state_dict(), "_best_ema": np.float64(0.25), "when": datetime.date(2024, 5, 1),
                "axes": (0, 1, 2)}, legacy)
    with pytest.raises(W.UnsafeCheckpointError):
        W.load_checkpoint(legacy)
    out = tmp_path / "legacy_safe.pth"
    proc = run_cli("nnUNetv2_petct_adapt_checkpoint", [legacy, "--import-trusted", "-o", out], dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    safe = torch.load(out, weights_only=True)
    assert safe["_best_ema"] == 0.25 and type(safe["_best_ema"]) is float
    assert safe["when"] == "2024-05-01" and safe["axes"] == [0, 1, 2]
    assert W.differing_tensors(safe, net, skip_output=False) == []
    assert safe["petct_metadata"]["imported_from"]["file"] == str(legacy.resolve())


# ----------------------------------------------------------------------- the real nnUNetv2_train CLI
@pytest.mark.slow
def test_nnunetv2_train_refuses_unsafe_and_broken_pretrained_weights(tiny_dataset, tmp_path):
    """nnUNetv2_train -tr nnUNetTrainerPETCTFinetune_tiny -pretrained_weights FILE (the stock CLI; initialize()
    runs before nnU-Net's loader, whose torch.load(weights_only=False) would run the payload)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    d = tiny_dataset
    pre = Path(d.env["nnUNet_preprocessed"]) / d.dataset_name
    pm = PlansManager(json.loads((pre / "nnUNetPlans.json").read_text()))
    net = nnUNetTrainer.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 2, 2, True)
    files = bad_files(tmp_path / "ckpts", net)
    one_channel = nnUNetTrainer.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 1, 2, True)
    torch.save({"network_weights": one_channel.state_dict()}, files["other_arch"])
    marker = tmp_path / "ckpts" / "PAYLOAD_RAN"
    env = {**d.env, "nnUNet_results": str(tmp_path / "results")}

    def train(path, **extra):
        return run_cli("nnUNetv2_train", [d.dataset_id, "3d_fullres", 0, "-tr", "nnUNetTrainerPETCTFinetune_tiny",
                                          "-device", "cpu", "-pretrained_weights", path], {**env, **extra}, timeout=600)

    proc = train(files["evil"])
    assert proc.returncode != 0 and not marker.exists()
    assert f"PretrainedWeightsFileError: {files['evil']} is not a weights-only checkpoint: it references posix.system" \
        in proc.stderr and "--import-trusted" in proc.stderr

    for name, says in (("truncated", "is truncated or corrupt"), ("other_arch", "does not fit the network")):
        proc = train(files[name])
        assert proc.returncode != 0
        tail = proc.stderr.strip().splitlines()
        error_line = next(i for i, line in enumerate(tail) if "PretrainedWeightsFileError: " in line)
        assert str(files[name]) in tail[error_line] and says in tail[error_line]
        assert "PytorchStreamReader" not in proc.stderr and "tensor([" not in proc.stderr
        assert len(tail) - error_line < 15  # a summary, not a dump of every tensor
    assert "Input channels: checkpoint 1, network 2" in proc.stderr

    # control: with the documented opt-in the file goes to nnU-Net's loader as before, and the payload runs
    proc = train(files["evil"], NNUNETV2_PETCT_TRUST_CHECKPOINT="1")
    assert marker.exists()
