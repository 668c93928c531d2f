"""Multi-node (and CPU) DDP training of nnU-Net trainers under ``torchrun``.

    torchrun --nnodes N --nproc_per_node G [rendezvous options] -m nnunetv2_petct.distributed \\
        DATASET 3d_fullres FOLD -tr nnUNetTrainerPETCTMAE [-p PLANS] [--c] [-pretrained_weights FILE]

Why not ``nnUNetv2_train -num_gpus N``: nnU-Net 2.8.1's own DDP route (``run_training.run_ddp``) starts its
workers with ``mp.spawn`` on one machine, always with NCCL, and the trainer then uses ``cuda:<global rank>``
and ``DDP(network, device_ids=[global rank])``. That is right on one node only; on node 2 of a job global
rank 8 would ask for ``cuda:8``. It also cannot run on CPUs (DDP refuses ``device_ids`` for CPU modules).

What this launcher does, per process started by torchrun:

- reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT`` from the
  environment torchrun sets, and initializes the process group (``--backend auto``: NCCL on GPUs, gloo on CPU);
- finds the trainer class by name exactly as ``nnUNetv2_train`` does
  (``nnunetv2.utilities.find_objects.recursive_find_trainer_class_by_name``; our trainers resolve through the
  package's discovery hook) and builds it like ``run_training.get_trainer_from_args``;
- applies :class:`DistributedTrainerMixin` through a subclass created at launch time that keeps the trainer's
  ``__name__``, ``__qualname__`` and ``__module__``: the output folder
  (``<trainer>__<plans>__<configuration>``) and the ``trainer_name`` stored in checkpoints are those of the
  original class, so ``nnUNetv2_predict`` / ``-pretrained_weights`` / ``--c`` with the stock tools find it;
- the mixin puts the network on ``cuda:<LOCAL_RANK>`` (or the CPU) and wraps it in DDP with the right
  ``device_ids`` (none on CPU); nnU-Net's batch split across ranks, loss gathering for logging, rank-0-only
  checkpoints and barriers are nnU-Net's own and stay in place;
- seeds ``random``/numpy/torch: identically on every rank before the network is built (rank 0's initial
  weights are broadcast by DDP anyway) and per rank (and per start epoch, so a resumed run does not replay
  the same draws) right before nnU-Net creates its data loaders, so ranks draw different cases and patches.
  With ``nnUNet_n_proc_DA`` > 0, nnU-Net's augmentation worker processes reseed numpy from OS entropy
  (``seeds=None`` in nnU-Net), which also differs between ranks and workers, but is not reproducible;
- the MAE trainers seed their mask generators from (seed, rank, epoch) themselves
  (:func:`nnunetv2_petct.pretraining.mae.seed_for`), so masks differ between ranks as well.

Debugging aid: ``--check-sync`` (or ``NNUNETV2_PETCT_DIST_CHECK=1``) all-gathers, after every optimizer
step, a checksum of the parameters of every rank and raises when they differ; rank 0 prints one line per
step (``sync-check epoch E step K: max_abs_diff=0.0 ...``) and one per rank with the case keys it trained on
and its mask-generator seed; every rank writes its final weights (and rank 0 the initial ones) to
``<fold folder>/sync_check/``. It costs one small all-gather per step.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

CHECK_ENV = "NNUNETV2_PETCT_DIST_CHECK"
SYNC_CHECK_PREFIX = "[nnunetv2_petct.distributed]"
DEFAULT_SEED = 12345
EXIT_BAD_INPUT = 2

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class LaunchError(Exception):
    """Bad input or environment (reported with exit code 2, before any training)."""


@dataclass(frozen=True)
class DistEnv:
    """What torchrun tells each process (``RANK`` etc.); ``local_world_size`` = processes on this node."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int


def read_dist_env(environ: dict | None = None) -> DistEnv:
    """Read the variables torchrun sets; raises :class:`LaunchError` naming the missing or bad ones.

    ``LOCAL_WORLD_SIZE`` is optional (defaults to ``WORLD_SIZE``, i.e. one node).
    """
    env = os.environ if environ is None else environ
    missing = [k for k in _TORCHRUN_VARS if not env.get(k)]
    if missing:
        raise LaunchError(f"environment variable(s) {', '.join(missing)} not set: start this module with torchrun, "
                          f"e.g. `torchrun --nproc_per_node 2 -m nnunetv2_petct.distributed DATASET 3d_fullres "
                          f"FOLD -tr TRAINER` (see --help)")
    try:
        rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"])
        local_world = int(env.get("LOCAL_WORLD_SIZE") or world)
        port = int(env["MASTER_PORT"])
    except ValueError as e:
        raise LaunchError(f"torchrun environment variable is not an integer: {e}") from e
    if world < 1 or not 0 <= rank < world or not 0 <= local < local_world or local_world > world:
        raise LaunchError(f"inconsistent torchrun environment: RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local} "
                          f"LOCAL_WORLD_SIZE={local_world}")
    return DistEnv(rank, world, local, local_world, env["MASTER_ADDR"], port)


def resolve_device(device: str, local_rank: int, cuda_available: bool, cuda_device_count: int):
    """``torch.device`` for this process: ``cuda:<local_rank>`` or ``cpu``.

    ``device="auto"``: CUDA when available, else CPU. Raises :class:`LaunchError` when CUDA is asked for but
    absent, or when ``local_rank`` is not a visible GPU (more processes per node than GPUs).
    """
    import torch

    if device not in ("auto", "cuda", "cpu"):
        raise LaunchError(f"--device must be auto, cuda or cpu, got {device!r}")
    if device == "auto":
        device = "cuda" if cuda_available else "cpu"
    if device == "cpu":
        return torch.device("cpu")
    if not cuda_available:
        raise LaunchError("--device cuda but torch sees no CUDA device (CPU-only torch build, or no GPU in this job)")
    if local_rank >= cuda_device_count:
        raise LaunchError(f"LOCAL_RANK {local_rank} but only {cuda_device_count} GPU(s) are visible on this node: "
                          f"use --nproc_per_node <= number of GPUs (check CUDA_VISIBLE_DEVICES)")
    return torch.device("cuda", local_rank)


def resolve_backend(backend: str, device_type: str) -> str:
    """``auto`` -> ``nccl`` on CUDA, ``gloo`` on CPU. NCCL with CPU tensors is refused (:class:`LaunchError`)."""
    if backend not in ("auto", "nccl", "gloo"):
        raise LaunchError(f"--backend must be auto, nccl or gloo, got {backend!r}")
    if backend == "auto":
        return "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl" and device_type != "cuda":
        raise LaunchError("--backend nccl needs GPUs; use gloo (or auto) with --device cpu")
    return backend


def rank_seed(base_seed: int, rank: int, epoch: int = 0) -> int:
    """A 32-bit seed that differs per rank and per (start) epoch; the same inputs give the same seed."""
    from nnunetv2_petct.pretraining.mae import seed_for

    return seed_for(base_seed, rank, epoch) % (2**32)


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global RNG and torch (CPU and all CUDA devices) with ``seed``."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def parameter_checksums(module) -> torch.Tensor:
    """Per-tensor ``(sum, sum of squares)`` of every parameter, in float64 on the CPU (shape ``(2 * n,)``).

    Any change of a single element changes the sums (barring exact cancellation), and the vector is small
    enough to all-gather every step.
    """
    import torch

    with torch.no_grad():
        values = []
        for p in module.parameters():
            x = p.detach().to(torch.float64)
            values.append(x.sum())
            values.append((x * x).sum())
        return torch.stack(values).cpu() if values else torch.zeros(0, dtype=torch.float64)


def _unwrap(network):
    from torch._dynamo import OptimizedModule
    from torch.nn.parallel import DistributedDataParallel

    mod = network.module if isinstance(network, DistributedDataParallel) else network
    return mod._orig_mod if isinstance(mod, OptimizedModule) else mod


def _say(message: str) -> None:
    print(f"{SYNC_CHECK_PREFIX} {message}", flush=True)


class DistributedTrainerMixin:
    """Makes an nnU-Net trainer correct under a torchrun launch (any node count, GPUs or CPUs).

    Applied by :func:`make_distributed_trainer_class`, which sets the class attributes below. No
    ``__init__`` (nnU-Net records the constructor's arguments by introspection).
    """

    _dist_device = None  # torch.device for this process
    _dist_seed: int = DEFAULT_SEED
    _dist_check_sync: bool = False
    _dist_iteration: int = 0  # iteration within the epoch (for --check-sync step numbers)

    # ------------------------------------------------------------------ device and DDP wrapping

    def _ddp_factory(self):
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None

        def ddp(module, device_ids=None, **kwargs):  # nnU-Net passes device_ids=[global rank]: replaced
            return DistributedDataParallel(module, device_ids=ids, **kwargs)

        return ddp

    @contextlib.contextmanager
    def _patched_ddp(self):
        """Replace the ``DDP`` name nnU-Net's ``initialize`` uses, for this call only."""
        import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as trainer_module

        if not hasattr(trainer_module, "DDP"):
            raise RuntimeError("nnunetv2.training.nnUNetTrainer.nnUNetTrainer has no DDP name any more (nnU-Net "
                               "changed?): nnunetv2_petct.distributed needs an update")
        original = trainer_module.DDP
        trainer_module.DDP = self._ddp_factory()
        try:
            yield
        finally:
            trainer_module.DDP = original

    def initialize(self):
        if not self.was_initialized and self._dist_device is not None:
            # nnU-Net's __init__ forces cuda:<global rank> in DDP; use this process's device instead.
            self.device = self._dist_device
            if self.device.type != "cuda":
                self.grad_scaler = None  # mixed precision only on CUDA (as nnU-Net)
            with self._patched_ddp():
                super().initialize()
            return
        super().initialize()

    # ------------------------------------------------------------------ per-rank seeding

    def _rank(self) -> int:
        from torch import distributed as dist

        return dist.get_rank() if self.is_ddp else 0

    def on_train_start(self):
        if not self.was_initialized:
            self.initialize()  # network built under the launcher's rank-independent seed
        seed = rank_seed(self._dist_seed, self._rank(), self.current_epoch)
        seed_everything(seed)  # before nnU-Net creates (and starts) the data loaders
        self.print_to_log_file(f"distributed: {self._world_size()} process(es); base seed {self._dist_seed}, "
                               f"start epoch {self.current_epoch}")
        _say(f"rank {self._rank()}: device {self.device}, data-sampling seed {seed}")
        self._dist_iteration = 0
        super().on_train_start()
        if self._dist_check_sync:
            if self._rank() == 0:
                self._save_check_weights("initial_rank0.pth")
            self._sync_check(step=self.current_epoch * self.num_iterations_per_epoch, loss=None, keys=None)

    def _world_size(self) -> int:
        from torch import distributed as dist

        return dist.get_world_size() if self.is_ddp else 1

    # ------------------------------------------------------------------ --check-sync

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self._dist_iteration = 0

    def train_step(self, batch: dict) -> dict:
        out = super().train_step(batch)
        if self._dist_check_sync:
            step = self.current_epoch * self.num_iterations_per_epoch + self._dist_iteration + 1
            keys = [str(k) for k in batch.get("keys", [])] if isinstance(batch, dict) else []
            self._sync_check(step=step, loss=out.get("loss"), keys=keys)
        self._dist_iteration += 1
        return out

    def on_train_end(self):
        super().on_train_end()
        if self._dist_check_sync:
            self._save_check_weights(f"final_rank{self._rank()}.pth")

    def _save_check_weights(self, name: str) -> None:
        import torch

        folder = os.path.join(self.output_folder, "sync_check")
        os.makedirs(folder, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in _unwrap(self.network).state_dict().items()}
        from nnunetv2_petct.io import atomic_write

        with atomic_write(os.path.join(folder, name)) as tmp:
            torch.save(state, tmp)

    def _sync_check(self, step: int, loss, keys) -> float:
        """All-gather parameter checksums (and this step's loss, keys, mask seed); raise if ranks differ."""
        import numpy as np
        from torch import distributed as dist

        gen = getattr(self, "_mae_generator", None)
        mask_seed = int(gen.initial_seed()) if gen is not None else None
        mine = (parameter_checksums(_unwrap(self.network)).numpy(),
                None if loss is None else float(np.asarray(loss).mean()), keys, mask_seed)
        if self.is_ddp:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, mine)
        else:
            gathered = [mine]
        ref = gathered[0][0]
        diff = max((float(np.max(np.abs(g[0] - ref))) if ref.size else 0.0) for g in gathered)
        if self._rank() == 0:
            losses = [g[1] for g in gathered]
            _say(f"sync-check epoch {self.current_epoch} step {step}: max_abs_diff={diff!r} "
                 f"world_size={len(gathered)} losses={losses!r}")
            if keys is not None:
                for r, g in enumerate(gathered):
                    _say(f"sync-check epoch {self.current_epoch} step {step} rank {r}: keys={g[2]!r} "
                         f"mask_seed={g[3]!r}")
        if diff != 0.0:
            raise RuntimeError(f"sync-check step {step}: parameters differ between ranks (max abs difference of "
                               f"per-tensor sums {diff!r}); DDP is not synchronizing this trainer")
        return diff


def make_distributed_trainer_class(trainer_class: type, device, seed: int = DEFAULT_SEED,
                                   check_sync: bool = False) -> type:
    """``trainer_class`` with :class:`DistributedTrainerMixin` first in its bases, under the same name.

    ``__name__``, ``__qualname__`` and ``__module__`` are copied, so nnU-Net's output folder and the
    ``trainer_name`` it stores in checkpoints are the original class's (``nnUNetv2_predict`` then finds the
    original class by that name). The new class is not registered anywhere.
    """
    attrs = {
        "__module__": trainer_class.__module__,
        "__qualname__": trainer_class.__qualname__,
        "__doc__": trainer_class.__doc__,
        "_dist_device": device,
        "_dist_seed": int(seed),
        "_dist_check_sync": bool(check_sync),
    }
    return type(trainer_class.__name__, (DistributedTrainerMixin, trainer_class), attrs)


# ---------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="torchrun [torchrun options] -m nnunetv2_petct.distributed",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Train an nnU-Net trainer (e.g. nnUNetTrainerPETCTMAE) with DDP across processes started by torchrun:\n"
            "any number of nodes and GPUs (NCCL), or CPU processes (gloo). Options mirror nnUNetv2_train.\n"
            "Each process reads RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT from torchrun.\n"
            "The plans' batch size is the GLOBAL batch size: it is split across all processes (nnU-Net's rule),\n"
            "so it must be >= the number of processes. Only global rank 0 writes checkpoints, logs and previews;\n"
            "results go to the usual nnUNet_results folder of the trainer, as with nnUNetv2_train."),
        epilog=(
            "examples:\n"
            "  # one node, 4 GPUs\n"
            "  torchrun --standalone --nproc_per_node 4 -m nnunetv2_petct.distributed 600 3d_fullres all \\\n"
            "      -tr nnUNetTrainerPETCTMAE\n"
            "  # 2 nodes x 4 GPUs (run on every node; see docs/distributed.md for Slurm)\n"
            "  torchrun --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \\\n"
            "      --rdzv_id JOB -m nnunetv2_petct.distributed 600 3d_fullres all -tr nnUNetTrainerPETCTMAE\n"
            "  # 2 CPU processes (testing)\n"
            "  torchrun --standalone --nproc_per_node 2 -m nnunetv2_petct.distributed 501 3d_fullres 0 \\\n"
            "      -tr nnUNetTrainerPETCTMAE_tiny --device cpu\n"
            "  # resume after an interruption: the same command plus --c"),
    )
    p.add_argument("dataset_name_or_id", help="dataset name (DatasetXXX_Name) or ID to train with")
    p.add_argument("configuration", help="configuration to train, e.g. 3d_fullres")
    p.add_argument("fold", help="fold of the 5-fold cross-validation (0-4) or 'all'")
    p.add_argument("-tr", default="nnUNetTrainer", metavar="TRAINER",
                   help="trainer class name (default: nnUNetTrainer), e.g. nnUNetTrainerPETCTMAE")
    p.add_argument("-p", default="nnUNetPlans", metavar="PLANS", help="plans identifier (default: nnUNetPlans)")
    p.add_argument("-pretrained_weights", default=None, metavar="FILE",
                   help="checkpoint to initialize the network from (as nnUNetv2_train; not with --c)")
    p.add_argument("--npz", action="store_true", help="save softmax predictions of the final validation (as nnUNetv2_train)")
    p.add_argument("--c", action="store_true",
                   help="continue from checkpoint_final / checkpoint_latest / checkpoint_best of the fold folder")
    p.add_argument("--val", action="store_true", help="only run the final validation (training must be finished)")
    p.add_argument("--val_best", action="store_true", help="final validation with checkpoint_best instead of final")
    p.add_argument("--disable_checkpointing", action="store_true", help="write no checkpoints (testing)")
    p.add_argument("--save_every", type=int, default=None, metavar="EPOCHS",
                   help="write checkpoint_latest.pth every EPOCHS epochs instead of the trainer's (nnU-Net: 50); "
                        "lower it when jobs can be preempted or hit a time limit (--c resumes from it)")
    p.add_argument("--device", "-device", default="auto", choices=("auto", "cuda", "cpu"),
                   help="auto (default): cuda:<LOCAL_RANK> when torch sees GPUs, else cpu")
    p.add_argument("--backend", default="auto", choices=("auto", "nccl", "gloo"),
                   help="process-group backend; auto (default): nccl on GPUs, gloo on CPU")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help=f"base seed: network initialization (same on all ranks) and per-rank data sampling "
                        f"(seed, rank, start epoch) (default {DEFAULT_SEED})")
    p.add_argument("--timeout-min", type=float, default=60.0,
                   help="collective-operation timeout in minutes (default 60; rank 0 runs the final validation "
                        "while the others wait)")
    p.add_argument("--check-sync", action="store_true",
                   help=f"debug: after every optimizer step all-gather parameter checksums and fail if the ranks "
                        f"differ; also log each rank's case keys and write initial/final weights to "
                        f"<fold>/sync_check/ (same as {CHECK_ENV}=1)")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors from this launcher")
    return p


def _parse_fold(fold: str):
    if fold == "all":
        return fold
    try:
        return int(fold)
    except ValueError:
        raise LaunchError(f"fold must be an integer or 'all', got {fold!r}") from None


def _find_trainer_class(name: str) -> type:
    from nnunetv2.utilities import find_objects  # the package's discovery hook wraps this function

    try:
        cls = find_objects.recursive_find_trainer_class_by_name(name)
    except Exception as e:
        raise LaunchError(f"looking up trainer {name!r} failed: {e!r}") from e
    if cls is None:
        raise LaunchError(f"trainer {name!r} not found (not one of nnU-Net's, ours, or in nnUNet_extTrainer)")
    return cls


def _load_plans_and_dataset_json(dataset_name_or_id: str, plans_identifier: str) -> tuple[dict, dict]:
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    if not nnUNet_preprocessed.is_set():
        raise LaunchError("nnUNet_preprocessed is not set (export nnUNet_raw / nnUNet_preprocessed / nnUNet_results)")
    try:
        name = maybe_convert_to_dataset_name(dataset_name_or_id)
    except (RuntimeError, ValueError) as e:
        raise LaunchError(f"dataset {dataset_name_or_id!r}: {e}") from e
    base = os.path.join(str(nnUNet_preprocessed), name)
    plans_file = os.path.join(base, plans_identifier + ".json")
    dataset_file = os.path.join(base, "dataset.json")
    for f in (plans_file, dataset_file):
        if not os.path.isfile(f):
            raise LaunchError(f"{f} not found: plan and preprocess the dataset first (nnUNetv2_plan_and_preprocess)")
    return load_json(plans_file), load_json(dataset_file)


def build_trainer(args, device):
    """The trainer, built the way ``run_training.get_trainer_from_args`` does, with the mixin applied."""
    check = args.check_sync or os.environ.get(CHECK_ENV, "0").lower() in ("1", "true", "yes")
    cls = make_distributed_trainer_class(_find_trainer_class(args.tr), device, seed=args.seed, check_sync=check)
    plans, dataset_json = _load_plans_and_dataset_json(args.dataset_name_or_id, args.p)
    plans["continue_training"] = args.c
    return cls(plans=plans, configuration=args.configuration, fold=_parse_fold(args.fold),
               dataset_json=dataset_json, device=device)


def _set_threads(device, env: DistEnv) -> None:
    import torch

    if device.type == "cuda":  # as nnUNetv2_train: torch threads do not help a GPU run
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
    elif not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // env.local_world_size))


def run(args) -> None:
    """Everything after argument parsing (raises :class:`LaunchError` on bad input)."""
    env = read_dist_env()
    if args.c and args.val:
        raise LaunchError("--c and --val cannot be combined")
    if args.c and args.pretrained_weights:
        raise LaunchError("--c and -pretrained_weights cannot be combined (weights are loaded at the start only)")
    if args.val_best and args.disable_checkpointing:
        raise LaunchError("--val_best needs checkpoints (not with --disable_checkpointing)")
    if args.pretrained_weights and not os.path.isfile(args.pretrained_weights):
        raise LaunchError(f"-pretrained_weights file {args.pretrained_weights} not found")
    if args.save_every is not None and args.save_every < 1:
        raise LaunchError(f"--save_every must be >= 1, got {args.save_every}")
    _parse_fold(args.fold)

    import torch
    from torch import distributed as dist

    device = resolve_device(args.device, env.local_rank, torch.cuda.is_available(),
                            torch.cuda.device_count() if torch.cuda.is_available() else 0)
    backend = resolve_backend(args.backend, device.type)
    _set_threads(device, env)
    if env.rank != 0:
        os.environ["nnUNet_wandb_enabled"] = "0"  # one experiment-tracker run per job, from rank 0
    # fail on bad input on every rank before any collective call
    trainer_class = _find_trainer_class(args.tr)
    _load_plans_and_dataset_json(args.dataset_name_or_id, args.p)
    logger.info("rank %d/%d (local %d/%d): %s on %s, backend %s, master %s:%d", env.rank, env.world_size,
                env.local_rank, env.local_world_size, trainer_class.__name__, device, backend, env.master_addr,
                env.master_port)

    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, init_method="env://", rank=env.rank, world_size=env.world_size,
                            timeout=timedelta(minutes=float(args.timeout_min)))
    try:
        seed_everything(rank_seed(args.seed, 0, 0))  # identical on all ranks: network initialization
        trainer = build_trainer(args, device)
        if args.disable_checkpointing:
            trainer.disable_checkpointing = True
        if args.save_every is not None:
            trainer.save_every = args.save_every

        from nnunetv2.run.run_training import maybe_load_checkpoint

        maybe_load_checkpoint(trainer, args.c, args.val, args.pretrained_weights)
        if device.type == "cuda":
            torch.backends.cudnn.deterministic = False
            torch.backends.cudnn.benchmark = True
        if not args.val:
            trainer.run_training()
        if args.val_best:
            trainer.load_checkpoint(os.path.join(trainer.output_folder, "checkpoint_best.pth"))
        trainer.perform_actual_validation(args.npz)
        dist.barrier()  # rank 0 may still be writing the validation results
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s")
    try:
        run(args)
    except LaunchError as e:
        rank = os.environ.get("RANK", "?")
        print(f"nnunetv2_petct.distributed (rank {rank}): error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")  # as nnUNetv2_train
    sys.exit(main())
