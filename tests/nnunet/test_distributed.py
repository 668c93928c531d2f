"""DDP launcher (nnunetv2_petct.nnunet.distributed, run as ``-m nnunetv2_petct.distributed``): 2 CPU
processes with gloo under torchrun, plus unit checks."""

from __future__ import annotations

import ast
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run

TRAINER = "nnUNetTrainerPETCTMAE_tiny"  # tiny schedule: 2 epochs x 2 iterations, global batch 2 -> 1 per rank
STEP_RE = re.compile(r"sync-check epoch (\d+) step (\d+): max_abs_diff=(\S+) world_size=(\d+) losses=(\[.*\])")
RANK_RE = re.compile(r"sync-check epoch (\d+) step (\d+) rank (\d+): keys=(\[.*?\]) mask_seed=(\S+)")
SEED_RE = re.compile(r"rank (\d+): device (\S+), data-sampling seed (\d+)")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(d, env: dict, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "nnunetv2_petct.distributed",
           str(d.dataset_id), "3d_fullres", "0", "-tr", TRAINER, "--device", "cpu", *extra]
    return run(cmd, env, timeout=600)


def _parse(stdout: str) -> tuple[dict, dict, dict]:
    """({step: (epoch, diff, world, losses)}, {(step, rank): (keys, mask_seed)}, {rank: sampling seed})."""
    steps, ranks, seeds = {}, {}, {}
    for m in STEP_RE.finditer(stdout):
        steps[int(m[2])] = (int(m[1]), float(m[3]), int(m[4]), ast.literal_eval(m[5]))
    for m in RANK_RE.finditer(stdout):
        ranks[(int(m[2]), int(m[3]))] = (ast.literal_eval(m[4]), int(m[5]))
    for m in SEED_RE.finditer(stdout):
        seeds[int(m[1])] = int(m[3])
    return steps, ranks, seeds


def _load(path: Path, weights_only: bool = False):
    import torch

    return torch.load(path, map_location="cpu", weights_only=weights_only)


def _assert_same_state(a: dict, b: dict) -> None:
    import torch

    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def dist_run(tiny_dataset, tmp_path_factory):
    """One 2-rank CPU training with --check-sync, into its own nnUNet_results (other tests share the default)."""
    d = tiny_dataset
    results = tmp_path_factory.mktemp("dist_results")
    # one torch thread per process: 2 processes on 2 cores
    env = {**d.env, "nnUNet_results": str(results), "OMP_NUM_THREADS": "1"}
    proc = _torchrun(d, env, "--check-sync")
    fold = results / d.dataset_name / f"{TRAINER}__nnUNetPlans__3d_fullres" / "fold_0"
    return d, env, results, fold, proc


@pytest.mark.slow
def test_two_cpu_ranks_train_in_sync(dist_run):
    import torch

    _, _, results, fold, proc = dist_run
    out = proc.stdout
    steps, ranks, seeds = _parse(out)
    # step 0 = after DDP wrapped the network, then 2 epochs x 2 iterations
    assert sorted(steps) == [0, 1, 2, 3, 4], out[-3000:]
    for step, (epoch, diff, world, _) in steps.items():
        assert world == 2
        assert diff == 0.0, f"ranks diverged at step {step}"
        assert epoch == max(0, (step - 1) // 2)  # steps 1, 2 in epoch 0; 3, 4 in epoch 1

    # ranks sampled differently: data seeds, case keys and MAE mask seeds differ between ranks
    assert set(seeds) == {0, 1} and seeds[0] != seeds[1]
    keys = {r: [ranks[(s, r)][0] for s in range(1, 5)] for r in (0, 1)}
    assert all(len(k) == 1 for r in keys for k in keys[r])  # global batch 2 split into 1 per rank
    assert keys[0] != keys[1], keys
    for s in range(1, 5):
        assert ranks[(s, 0)][1] != ranks[(s, 1)][1], f"same mask seed on both ranks at step {s}"

    # the logged training loss of an epoch is the mean over ranks and iterations (nnU-Net gathers it)
    ckpt = _load(fold / "checkpoint_final.pth")
    assert ckpt["trainer_name"] == TRAINER  # the launcher's subclass kept the original name
    assert ckpt["current_epoch"] == 2
    for epoch in (0, 1):
        per_step = [loss for s in (2 * epoch + 1, 2 * epoch + 2) for loss in steps[s][3]]
        assert len(per_step) == 4
        np.testing.assert_allclose(ckpt["logging"]["train_losses"][epoch], np.mean(per_step), rtol=1e-9)

    # identical final weights on both ranks, different from the initial ones, equal to the checkpoint's
    check = fold / "sync_check"
    initial = _load(check / "initial_rank0.pth")
    final0, final1 = _load(check / "final_rank0.pth"), _load(check / "final_rank1.pth")
    _assert_same_state(final0, final1)
    _assert_same_state(final0, ckpt["network_weights"])
    changed = [k for k in final0 if not torch.equal(final0[k], initial[k])]
    assert len(changed) >= len(final0) // 2, "training did not change the weights"

    # rank 0 alone wrote the foundation checkpoint (every rank's print_to_log_file reaches stdout) and the log
    found = list(results.rglob("foundation_final.pth"))
    assert found == [fold / "foundation_final.pth"]
    written = [line for line in out.splitlines() if "foundation checkpoint written:" in line]
    assert sum(line.endswith("foundation_final.pth") for line in written) == 1, written
    foundation = _load(found[0], weights_only=True)
    _assert_same_state(foundation["network_weights"], final0)
    assert len(list(fold.glob("training_log_*.txt"))) == 1


@pytest.mark.slow
def test_resume_with_c(dist_run):
    d, env, results, fold, first = dist_run
    assert first.returncode == 0
    # Make the fold look like a run interrupted after epoch 0 that saved checkpoint_latest.pth.
    import torch

    ckpt = _load(fold / "checkpoint_final.pth")
    ckpt["current_epoch"] = 1
    ckpt["logging"] = {k: v[:1] for k, v in ckpt["logging"].items()}
    torch.save(ckpt, fold / "checkpoint_latest.pth")
    for name in ("checkpoint_final.pth", "foundation_final.pth"):
        (fold / name).unlink()

    proc = _torchrun(d, {**env, "NNUNETV2_PETCT_DIST_CHECK": "1"}, "--c")
    steps, _, seeds = _parse(proc.stdout)
    # resumed at epoch 1: only its 2 iterations (steps 3, 4) ran; step 2 is the state after loading
    assert sorted(steps) == [2, 3, 4], proc.stdout[-3000:]
    assert all(diff == 0.0 for _, diff, _, _ in steps.values())
    # every rank starts from the checkpoint's weights
    _assert_same_state(_load(fold / "sync_check" / "initial_rank0.pth"), ckpt["network_weights"])
    # per-rank data seeds depend on the start epoch: the resumed run does not replay epoch 0's draws
    _, _, first_seeds = _parse(first.stdout)
    assert seeds[0] != seeds[1] and seeds[0] != first_seeds[0] and seeds[1] != first_seeds[1]

    final = _load(fold / "checkpoint_final.pth")
    assert final["current_epoch"] == 2
    losses = final["logging"]["train_losses"]
    assert len(losses) == 2 and losses[0] == ckpt["logging"]["train_losses"][0]
    np.testing.assert_allclose(losses[1], np.mean(steps[3][3] + steps[4][3]), rtol=1e-9)
    assert not (fold / "checkpoint_latest.pth").exists()  # nnU-Net removes it at the end
    assert list(results.rglob("foundation_final.pth")) == [fold / "foundation_final.pth"]
    _load(fold / "foundation_final.pth", weights_only=True)


# ------------------------------------------------------------------------------------------------ units


def test_read_dist_env_requires_torchrun_variables():
    from nnunetv2_petct.nnunet.distributed import LaunchError, read_dist_env

    with pytest.raises(LaunchError, match="RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT"):
        read_dist_env({})
    env = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "node1",
           "MASTER_PORT": "29500"}
    e = read_dist_env(env)
    # rank 5 of 8 on the second node of 2 x 4: local rank 1 -> cuda:1, not cuda:5
    assert (e.rank, e.world_size, e.local_rank, e.local_world_size, e.master_port) == (5, 8, 1, 4, 29500)
    with pytest.raises(LaunchError, match="inconsistent"):
        read_dist_env({**env, "RANK": "8"})


def test_device_and_backend_resolution():
    from nnunetv2_petct.nnunet.distributed import LaunchError, resolve_backend, resolve_device

    assert str(resolve_device("auto", 3, cuda_available=True, cuda_device_count=4)) == "cuda:3"
    assert str(resolve_device("auto", 3, cuda_available=False, cuda_device_count=0)) == "cpu"
    with pytest.raises(LaunchError, match="only 2 GPU"):
        resolve_device("cuda", 2, cuda_available=True, cuda_device_count=2)
    with pytest.raises(LaunchError, match="no CUDA"):
        resolve_device("cuda", 0, cuda_available=False, cuda_device_count=0)
    assert resolve_backend("auto", "cuda") == "nccl"
    assert resolve_backend("auto", "cpu") == "gloo"
    with pytest.raises(LaunchError, match="nccl needs GPUs"):
        resolve_backend("nccl", "cpu")


def test_rank_seeds_differ_by_rank_and_epoch_and_are_stable():
    from nnunetv2_petct.nnunet.distributed import rank_seed

    seeds = {rank_seed(12345, r, e) for r in range(16) for e in range(10)}
    assert len(seeds) == 160
    assert rank_seed(12345, 3, 2) == rank_seed(12345, 3, 2)
    assert all(0 <= s < 2**32 for s in seeds)  # valid numpy seeds


def test_parameter_checksums_see_a_single_changed_element():
    import torch

    from nnunetv2_petct.nnunet.distributed import parameter_checksums

    net = torch.nn.Sequential(torch.nn.Conv3d(2, 4, 3), torch.nn.Conv3d(4, 2, 1))
    before = parameter_checksums(net)
    assert before.shape == (2 * 4,) and before.dtype == torch.float64  # 4 tensors x (sum, sum of squares)
    with torch.no_grad():
        net[1].weight[0, 0, 0, 0, 0] += 1e-3
    after = parameter_checksums(net)
    assert torch.count_nonzero(after != before) >= 1


def test_launch_subclass_keeps_the_trainer_identity():
    import torch

    from nnunetv2_petct.nnunet.distributed import DistributedTrainerMixin, make_distributed_trainer_class
    from nnunetv2_petct.nnunet.registry import find_trainer_class
    from nnunetv2_petct.nnunet.trainers.mae import nnUNetTrainerPETCTMAE_tiny

    cls = make_distributed_trainer_class(nnUNetTrainerPETCTMAE_tiny, torch.device("cpu"), seed=7, check_sync=True)
    assert cls is not nnUNetTrainerPETCTMAE_tiny and issubclass(cls, nnUNetTrainerPETCTMAE_tiny)
    assert cls.__mro__[1] is DistributedTrainerMixin  # its hooks run first
    assert (cls.__name__, cls.__qualname__, cls.__module__) == (
        "nnUNetTrainerPETCTMAE_tiny", "nnUNetTrainerPETCTMAE_tiny", "nnunetv2_petct.nnunet.trainers.mae")
    # the name stored in checkpoints still resolves to the original class (what nnUNetv2_predict loads)
    assert find_trainer_class(cls.__name__) is nnUNetTrainerPETCTMAE_tiny
    # nnU-Net records __init__ arguments by introspection: the signature must be unchanged
    import inspect

    assert inspect.signature(cls.__init__) == inspect.signature(nnUNetTrainerPETCTMAE_tiny.__init__)


def test_cli_without_torchrun_exits_2_with_a_hint(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    proc = subprocess.run([sys.executable, "-m", "nnunetv2_petct.distributed", "501", "3d_fullres", "0", "-tr",
                           TRAINER], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "start this module with torchrun" in proc.stderr
    helped = subprocess.run([sys.executable, "-m", "nnunetv2_petct.distributed", "--help"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "--check-sync" in helped.stdout and "--backend" in helped.stdout
