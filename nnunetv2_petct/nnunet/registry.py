"""Where our trainer classes live, for the discovery hook and for listings.

Adding a trainer module: append it to :data:`TRAINER_MODULES` and add a thin re-export module in
the repository's ``trainers/`` folder (the ``nnUNet_extTrainer`` route).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

TRAINER_MODULES: tuple[str, ...] = (
    "nnunetv2_petct.nnunet.trainers.base",
    "nnunetv2_petct.nnunet.trainers.mae",
    "nnunetv2_petct.nnunet.trainers.finetune",
    "nnunetv2_petct.nnunet.trainers.late_fusion",
    "nnunetv2_petct.nnunet.trainers.demo",
    "nnunetv2_petct.nnunet.trainers.interactive",
)


def _import_trainer_modules() -> tuple[list, list[str]]:
    modules, errors = [], []
    for name in TRAINER_MODULES:
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            continue
        try:
            modules.append(importlib.import_module(name))
        except Exception as e:  # report, but let the other modules still serve their trainers
            errors.append(f"{name}: {e!r}")
    return modules, errors


def _is_trainer(obj) -> bool:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    return isinstance(obj, type) and issubclass(obj, nnUNetTrainer)


def find_trainer_class(name: str):
    """Our trainer class called ``name``, or None when it is not one of ours.

    Only names starting with ``nnUNetTrainerPETCT`` are ours; anything else returns None at once
    (nnU-Net's own search then runs, unchanged). A module of ours that fails to import raises
    ImportError naming it, when the requested class could have come from it.
    """
    if not name.startswith("nnUNetTrainerPETCT"):
        return None
    modules, errors = _import_trainer_modules()
    for module in modules:
        obj = getattr(module, name, None)
        if obj is not None and _is_trainer(obj):
            return obj
    if errors:
        raise ImportError(f"trainer {name!r} not found; some trainer modules failed to import: " + "; ".join(errors))
    return None


def all_trainer_classes() -> dict[str, type]:
    """Every trainer class we define, by name (imports nnunetv2)."""
    modules, errors = _import_trainer_modules()
    if errors:
        raise ImportError("; ".join(errors))
    found: dict[str, type] = {}
    for module in modules:
        for attr, obj in vars(module).items():
            if attr.startswith("nnUNetTrainerPETCT") and _is_trainer(obj) and obj.__module__ == module.__name__:
                found[attr] = obj
    return found


#: Trainer names starting with this are ours: the discovery hook answers an unknown one itself.
OUR_PREFIX = "nnUNetTrainerPETCT"


def unknown_trainer_message(name: str) -> str:
    """"no trainer NAME; ours are: ..." with the closest of our trainer names first (difflib)."""
    import difflib

    names = sorted(all_trainer_classes())
    close = difflib.get_close_matches(name, names, n=len(names), cutoff=0.0)
    return f"no trainer {name}; ours are: {', '.join(close)}"
