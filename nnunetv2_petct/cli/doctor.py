"""``nnUNetv2_petct_doctor``: is the plugin wired into nnU-Net here? (hook, trainers, paths, devices)"""

from __future__ import annotations

import argparse
import os
import sys


def diagnose() -> dict:
    """What a user needs to know when a trainer is not found: facts, no side effects."""
    from nnunetv2_petct import __version__, _discovery

    report: dict = {"nnunetv2_petct": __version__, "python": sys.executable}
    report["hook_installed"] = _discovery.hook_installed()
    report["hook_disabled_by_env"] = os.environ.get(_discovery.DISABLE_ENV, "") not in ("", "0")
    try:
        import nnunetv2
        from nnunetv2.utilities import find_objects

        report["nnunetv2"] = getattr(nnunetv2, "__version__", "installed")
        fn = getattr(find_objects, _discovery.TARGET_FUNCTION, None)
        report["trainer_lookup_wrapped"] = bool(getattr(fn, "_nnunetv2_petct_wrapped", False))
    except Exception as e:
        report["nnunetv2"] = f"not importable: {e!r}"
    try:
        from nnunetv2_petct.nnunet.registry import all_trainer_classes

        report["trainers"] = sorted(all_trainer_classes())
    except Exception as e:
        report["trainers"] = f"error: {e!r}"
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        report[var] = os.environ.get(var)
    try:
        import torch

        report["torch"] = torch.__version__
        report["cuda_available"] = torch.cuda.is_available()
    except Exception as e:
        report["torch"] = f"not importable: {e!r}"
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nnUNetv2_petct_doctor",
                                description="Check that nnU-Net finds the PET/CT trainers in this environment.")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    report = diagnose()
    if a.json:
        import json

        print(json.dumps(report))
    else:
        for k, v in report.items():
            print(f"{k:24s} {v}")
    ok = report.get("trainer_lookup_wrapped") and isinstance(report.get("trainers"), list)
    if not ok:
        print("\nOur trainers are not wired into nnU-Net's lookup here. Reinstall the package (pip install "
              "nnunetv2_petct), unset NNUNETV2_PETCT_NO_HOOK, or use nnUNet_extTrainer=<repo>/trainers.",
              file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
