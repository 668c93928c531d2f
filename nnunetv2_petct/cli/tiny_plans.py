"""``nnUNetv2_petct_tiny_plans``: shrink a dataset's nnU-Net plans for CPU smoke runs, tests and the demo."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from nnunetv2_petct.conversion.registry import find_dataset_dir


def find_preprocessed_dataset(dataset: str, preprocessed_dir: str | None = None) -> Path:
    """``$nnUNet_preprocessed/DatasetXXX_Name`` for an id (``7``, ``007``) or a full name."""
    base = preprocessed_dir or os.environ.get("nnUNet_preprocessed")
    if not base:
        raise SystemExit("error: nnUNet_preprocessed is not set (or pass --preprocessed-dir)")
    try:
        return find_dataset_dir(Path(base), dataset)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="nnUNetv2_petct_tiny_plans",
        description="Shrink an nnU-Net plans file in place (patch, stages, features, batch size) so that "
        "training runs in seconds on a CPU. For tests, CI and demos; never for real experiments.",
    )
    p.add_argument("-d", "--dataset", required=True, help="dataset id or name (DatasetXXX_Name)")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    p.add_argument("-c", "--configuration", default="3d_fullres")
    p.add_argument("--patch", type=int, nargs=3, default=(32, 32, 32), metavar=("Z", "Y", "X"))
    p.add_argument("--stages", type=int, default=3)
    p.add_argument("--base-features", type=int, default=4)
    p.add_argument("--max-features", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--preprocessed-dir", default=None, help="default: $nnUNet_preprocessed")
    p.add_argument("-q", "--quiet", action="store_true")
    a = p.parse_args(argv)
    folder = find_preprocessed_dataset(a.dataset, a.preprocessed_dir)
    try:
        from nnunetv2_petct.nnunet.plans import shrink_plans_file

        plans = shrink_plans_file(folder / f"{a.plans}.json", a.configuration, patch_size=a.patch,
                                  n_stages=a.stages, base_features=a.base_features,
                                  max_features=a.max_features, batch_size=a.batch_size)
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not a.quiet:
        c = plans["configurations"][a.configuration]
        print(f"{folder.name}/{a.plans}.json [{a.configuration}]: patch {c['patch_size']}, batch {c['batch_size']}, "
              f"features {c['architecture']['arch_kwargs']['features_per_stage']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
