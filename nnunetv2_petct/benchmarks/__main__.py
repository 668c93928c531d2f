"""``python -m nnunetv2_petct.benchmarks NAME [--json] [--device cpu|cuda]``: print benchmark figures."""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
import time

BENCHMARKS = {
    "mae-step": ("bench_mae_step", "seconds per training step: MAE trainer vs plain nnUNetTrainer, same network"),
    "dataloader": ("bench_dataloader", "pretraining patches per second from preprocessed blosc2 data"),
    "convert": ("bench_convert", "wall time and peak memory to convert one full-size study"),
    "predict": ("bench_predict", "seconds per full-size case for stock nnUNetv2_predict"),
    "evaluation": ("bench_evaluation", "seconds per whole-body case for autoPET metrics and lesion quantification"),
    "gpu": ("bench_gpu", "the GPU check (< 8 min): MAE vs nnU-Net step at the paper preset, peak memory, loader "
                         "vs step, full-size predict (--tiny: the same at a tiny size, e.g. on a CPU)"),
    "label-efficiency": ("bench_label_efficiency", "phantom label-efficiency study with seeds and statistics "
                                                   "(--budget cpu-1h: about 1 h on 2 CPU cores; gpu)"),
    "interactive": ("bench_interactive", "phantom click-guided segmentation (autoPET IV protocol, 0..10 clicks): "
                                         "interactive fine-tuned vs interactive scratch vs non-interactive, 3 seeds "
                                         "(--budget cpu-1h: about 1-1.5 h on 2 CPU cores; gpu)"),
}
#: Not part of ``all``: long studies and the GPU check (which repeats mae-step, dataloader and predict).
NOT_IN_ALL = ("gpu", "label-efficiency", "interactive")


def machine() -> dict:
    """The machine the figures come from (:func:`nnunetv2_petct.io.machine_facts`)."""
    from nnunetv2_petct.io import machine_facts

    facts = machine_facts()
    facts["cpu_count"] = facts["logical_cores"]  # the name earlier figures used
    return facts


def run_one(name: str, **kwargs) -> dict:
    module_name, _ = BENCHMARKS[name]
    module = importlib.import_module(f"nnunetv2_petct.benchmarks.{module_name}")
    accepted = inspect.signature(module.run).parameters
    kwargs = {k: v for k, v in kwargs.items() if v is not None and k in accepted}
    t0 = time.perf_counter()
    result = module.run(**kwargs)
    return {"benchmark": name, **result, "machine": machine(), "wall_s": round(time.perf_counter() - t0, 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m nnunetv2_petct.benchmarks",
        description="Print benchmark figures. Benchmarks: "
        + "; ".join(f"{k}: {v[1]}" for k, v in BENCHMARKS.items()),
    )
    p.add_argument("name", choices=[*BENCHMARKS, "all"])
    p.add_argument("--json", action="store_true", help="one JSON line per benchmark")
    p.add_argument("--device", default=None, help="cpu or cuda (benchmarks that train or predict)")
    p.add_argument("--tiny", action="store_true", default=None,
                   help="gpu: the same code path at a tiny size (automatic without a GPU)")
    p.add_argument("--budget", default="cpu-1h", choices=("cpu-1h", "gpu", "tiny"),
                   help="label-efficiency / interactive: cpu-1h (about 1 h on 2 CPU cores), gpu (one GPU), tiny (tests)")
    p.add_argument("--out", default=None,
                   help="label-efficiency: output folder (default label_efficiency_benchmark_<budget>; reused)")
    p.add_argument("--jobs", type=int, default=None, help="label-efficiency: training runs side by side")
    a = p.parse_args(argv)
    names = [n for n in BENCHMARKS if n not in NOT_IN_ALL] if a.name == "all" else [a.name]
    status = 0
    for name in names:
        try:
            result = run_one(name, device=a.device, tiny=a.tiny, budget=a.budget, out=a.out, jobs=a.jobs)
        except Exception as e:  # keep going in 'all'; report the failure as a figure-less line
            result = {"benchmark": name, "error": repr(e)}
            status = 1
        if a.json:
            print(json.dumps(result), flush=True)
        else:
            print(f"== {name}")
            for k, v in result.items():
                print(f"  {k}: {v}")
    return status


if __name__ == "__main__":
    sys.exit(main())
