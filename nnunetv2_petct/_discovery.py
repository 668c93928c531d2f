"""Make our trainers findable by the stock ``nnUNetv2_train`` / ``nnUNetv2_predict`` commands.

Why: nnU-Net 2.8 finds a trainer class by importing *every* module under
``nnunetv2.training.nnUNetTrainer`` and only then the folders in ``nnUNet_extTrainer``. One of its
own modules imports timm -> torchvision, which fails to import next to a CPU torch wheel, so the
stock search crashes before it ever reaches a plugin folder (SPEC §5).

How: the wheel installs ``nnunetv2_petct_discovery.pth`` into site-packages. Its single line puts a
lazy finder (defined inline, so start-up imports nothing, not even this package) at the front of
``sys.meta_path``. The finder does nothing until the module ``nnunetv2.utilities.find_objects`` is
imported; then it imports this module and, right after that nnU-Net module has executed, wraps
``recursive_find_trainer_class_by_name`` so that names of *our* trainers resolve directly to our
classes and every other name goes to nnU-Net's own function unchanged. Because ``run_training`` and
``predict_from_raw_data`` import the function by name after that moment, both stock commands see the
wrapper. :func:`install` does the same from Python (for environments without the ``.pth`` file).

Defensive by design:
- the start-up cost is one ``sys.meta_path`` entry and one string comparison per import;
- if nnU-Net no longer has the function, nothing is patched, a warning says so, and nnU-Net's own
  behaviour (including ``nnUNet_extTrainer``) is left in place;
- any error while looking up our trainers falls back to nnU-Net's own search, with a warning;
- ``NNUNETV2_PETCT_NO_HOOK=1`` disables the hook entirely;
- uninstalling the package removes the ``.pth`` file (it is listed in the wheel's RECORD).
"""

from __future__ import annotations

import os
import sys

TARGET_MODULE = "nnunetv2.utilities.find_objects"
TARGET_FUNCTION = "recursive_find_trainer_class_by_name"
DISABLE_ENV = "NNUNETV2_PETCT_NO_HOOK"


def _warn(message: str) -> None:
    # logging is not configured in nnU-Net's CLIs; a plain stderr line is what users see.
    print(f"[nnunetv2_petct] {message}", file=sys.stderr)


def wrap_trainer_lookup(module) -> bool:
    """Wrap ``module.recursive_find_trainer_class_by_name`` (idempotent). Returns True when patched."""
    original = getattr(module, TARGET_FUNCTION, None)
    if original is None or not callable(original):
        _warn(
            f"{TARGET_MODULE}.{TARGET_FUNCTION} not found (nnU-Net changed?): our trainers are only "
            f"found through nnU-Net's own search, e.g. nnUNet_extTrainer=<repo>/trainers."
        )
        return False
    if getattr(original, "_nnunetv2_petct_wrapped", False):
        return True

    def recursive_find_trainer_class_by_name(trainer_name: str):
        unknown = None
        try:
            from nnunetv2_petct.nnunet.registry import OUR_PREFIX, find_trainer_class, unknown_trainer_message

            trainer_class = find_trainer_class(trainer_name)
            # with nnUNet_extTrainer set, a user's own nnUNetTrainerPETCT... subclass may live there: nnU-Net searches
            if trainer_class is None and trainer_name.startswith(OUR_PREFIX) and not os.environ.get("nnUNet_extTrainer"):
                unknown = unknown_trainer_message(trainer_name)
        except Exception as e:  # never make nnU-Net worse than without us
            _warn(f"looking up {trainer_name!r} among our trainers failed ({e!r}); using nnU-Net's own search.")
            trainer_class = None
        if trainer_class is not None:
            return trainer_class
        if unknown is not None:
            # our prefix, not one of ours: answer here (nnU-Net's own scan crashes next to a CPU torch)
            _warn(unknown)
            raise SystemExit(2)
        return original(trainer_name)

    recursive_find_trainer_class_by_name.__wrapped__ = original
    recursive_find_trainer_class_by_name.__doc__ = original.__doc__
    recursive_find_trainer_class_by_name._nnunetv2_petct_wrapped = True
    setattr(module, TARGET_FUNCTION, recursive_find_trainer_class_by_name)
    return True


class _PatchingLoader:
    """Delegates to the real loader and patches the module right after it executed."""

    def __init__(self, loader) -> None:
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        try:
            wrap_trainer_lookup(module)
        except Exception as e:
            _warn(f"could not install the trainer lookup ({e!r}); nnU-Net's own behaviour applies.")

    def __getattr__(self, name):  # get_source, get_code, ... for tracebacks and linecache
        return getattr(self._loader, name)


MARKER = "_nnunetv2_petct"  # attribute of our meta-path entries (the .pth's lazy one and _Finder)
_busy = False


def find_patched_spec(fullname, path=None, target=None):
    """The real spec of :data:`TARGET_MODULE` (from the other finders) with a patching loader."""
    global _busy
    if fullname != TARGET_MODULE or _busy:
        return None
    _busy = True
    try:
        for finder in sys.meta_path:
            if getattr(finder, MARKER, False) or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
    finally:
        _busy = False
    if spec.loader is None or not hasattr(spec.loader, "exec_module"):
        return spec
    spec.loader = _PatchingLoader(spec.loader)
    return spec


class _Finder:
    """``sys.meta_path`` entry that only reacts to :data:`TARGET_MODULE` (used by :func:`install`)."""

    _nnunetv2_petct = True

    def find_spec(self, fullname, path=None, target=None):
        return find_patched_spec(fullname, path, target)


def hook_installed() -> bool:
    """True when one of our entries (the ``.pth``'s lazy finder or :class:`_Finder`) is on ``sys.meta_path``."""
    return any(getattr(f, MARKER, False) for f in sys.meta_path)


def install() -> None:
    """Called from the ``.pth`` file at interpreter start-up. Cheap and never raises."""
    try:
        if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
            return
        if hook_installed():
            return
        module = sys.modules.get(TARGET_MODULE)
        if module is not None:  # already imported (e.g. install() called late): patch in place
            wrap_trainer_lookup(module)
            return
        sys.meta_path.insert(0, _Finder())
    except Exception as e:  # a .pth line must never break the interpreter
        _warn(f"discovery hook not installed ({e!r}).")
