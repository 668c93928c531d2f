"""Issue 16, item 10: our trainers' checkpoints (checkpoint_best/final/latest.pth) hold plain Python values
(they load with torch.load(weights_only=True)) and are written atomically; ``--c`` with a corrupt
checkpoint falls back to the newest readable one, or names the corrupt file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from reliability_helpers import run_cli

from nnunetv2_petct.io import WriteError
from nnunetv2_petct.nnunet.trainers.base import CheckpointReadError, SafeCheckpointMixin, plain_checkpoint


class StubTrainer(SafeCheckpointMixin):
    """Just what SafeCheckpointMixin uses (no network, no nnU-Net)."""

    local_rank = 0
    disable_checkpointing = False
    was_initialized = True
    device = torch.device("cpu")

    def __init__(self, epoch: int):
        self.epoch = epoch
        self.log: list[str] = []

    def checkpoint_payload(self) -> dict:
        return {"network_weights": {"w": torch.full((3,), float(self.epoch))}, "current_epoch": self.epoch,
                "_best_ema": np.float64(0.5), "logging": {"train_losses": [np.float32(1.5), np.float64(1.25)]},
                "init_args": {"device": torch.device("cpu"), "fold": 0}, "axes": (0, 1, 2)}

    def print_to_log_file(self, *args):
        self.log.append(" ".join(map(str, args)))


def test_plain_checkpoint_turns_numpy_into_python():
    out = plain_checkpoint({"a": np.float64(1.5), "b": [np.int64(2)], "c": (np.float32(0.5),), "d": torch.device("cpu")})
    assert out == {"a": 1.5, "b": [2], "c": (0.5,), "d": torch.device("cpu")}
    assert type(out["a"]) is float and type(out["b"][0]) is int and isinstance(out["c"], tuple)
    assert plain_checkpoint({"p": Path("/x")}) == {"p": "/x"}
    with pytest.raises(TypeError, match=r"checkpoint\.x: a builtins\.object"):
        plain_checkpoint({"x": object()})


def test_save_is_weights_only_and_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_latest.pth"
    StubTrainer(3).save_checkpoint(str(path))
    ck = torch.load(path, weights_only=True)  # no allow-list needed
    assert ck["_best_ema"] == 0.5 and ck["logging"]["train_losses"] == [1.5, 1.25] and ck["axes"] == (0, 1, 2)
    good = path.read_bytes()

    real_save = torch.save

    def short_save(obj, f, *a, **k):  # a save that "returns" after writing half the file (a full disk)
        real_save(obj, f, *a, **k)
        data = Path(f).read_bytes()
        Path(f).write_bytes(data[: len(data) // 2])

    monkeypatch.setattr(torch, "save", short_save)
    with pytest.raises(WriteError, match="checkpoint_latest.pth"):
        StubTrainer(4).save_checkpoint(str(path))
    assert path.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_latest.pth"]


def test_read_falls_back_to_the_newest_readable_checkpoint(tmp_path):
    for name, epoch in (("checkpoint_best.pth", 2), ("checkpoint_latest.pth", 5)):
        StubTrainer(epoch).save_checkpoint(str(tmp_path / name))
    latest = tmp_path / "checkpoint_latest.pth"
    latest.write_bytes(latest.read_bytes()[:1000])
    t = StubTrainer(0)
    ck = t.read_training_checkpoint(str(latest))
    assert ck["current_epoch"] == 2
    assert any("checkpoint_latest.pth is truncated or corrupt" in m and "Continuing from checkpoint_best.pth instead "
               "(epoch 2)" in m for m in t.log)
    (tmp_path / "checkpoint_best.pth").write_bytes(b"")
    with pytest.raises(CheckpointReadError, match=r"checkpoint_latest\.pth is truncated or corrupt.*No other "
                                                  r"checkpoint in .* can stand in\. Delete checkpoint_latest\.pth"):
        StubTrainer(0).read_training_checkpoint(str(latest))


@pytest.mark.slow
def test_mae_checkpoints_through_nnunetv2_train(tiny_dataset, tmp_path):
    d = tiny_dataset
    env = {**d.env, "nnUNet_results": str(tmp_path / "results")}
    tr = "nnUNetTrainerPETCTMAE_tiny"
    args = [d.dataset_id, "3d_fullres", 0, "-tr", tr, "-device", "cpu"]
    proc = run_cli("nnUNetv2_train", args, env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fold = tmp_path / "results" / d.dataset_name / f"{tr}__nnUNetPlans__3d_fullres" / "fold_0"
    for name in ("checkpoint_final.pth", "checkpoint_best.pth", "foundation_final.pth", "foundation_best.pth"):
        ck = torch.load(fold / name, weights_only=True)  # plain values only: no numpy scalars
        if name.startswith("checkpoint"):
            assert type(ck["_best_ema"]) in (float, type(None)) and ck["mae_state"]["version"] == 1
            assert all(type(v) is float for v in ck["logging"]["train_losses"])
    assert not list(fold.glob(".tmp_*"))

    # an interrupted run: no final checkpoint, a latest one cut short mid-write, a best one
    (fold / "checkpoint_final.pth").rename(fold / "checkpoint_latest.pth")
    latest = fold / "checkpoint_latest.pth"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    proc = run_cli("nnUNetv2_train", [*args, "--c"], env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checkpoint_latest.pth is truncated or corrupt" in proc.stdout
    assert "Continuing from checkpoint_best.pth" in proc.stdout
    assert "PytorchStreamReader" not in proc.stdout + proc.stderr
    torch.load(fold / "checkpoint_final.pth", weights_only=True)

    # every checkpoint corrupt: a named error, no stream-reader traceback
    for name in ("checkpoint_final.pth", "checkpoint_best.pth"):
        (fold / name).write_bytes((fold / name).read_bytes()[:2000])
    proc = run_cli("nnUNetv2_train", [*args, "--c"], env, timeout=900)
    assert proc.returncode != 0
    assert f"CheckpointReadError: {fold / 'checkpoint_final.pth'} is truncated or corrupt" in proc.stderr
    assert "No other checkpoint" in proc.stderr and "PytorchStreamReader" not in proc.stderr
