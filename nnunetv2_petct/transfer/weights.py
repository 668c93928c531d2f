"""Weight surgery on U-Net state dicts: compatibility reports and input-channel adaptation.

Pure library (torch only; no nnunetv2 import). It works on the checkpoint layout nnU-Net's
``-pretrained_weights`` reads: a dict with ``network_weights`` (a state dict with nnU-Net's keys),
optionally ``nnssl_adaptation_plan`` (nnssl / upstream nnU-Net ``PretrainedTrainer`` metadata) and
``petct_metadata`` (ours).

nnU-Net's loader (``nnunetv2.run.load_pretrained_weights``, 2.8.1) transfers every key except those
containing ``.seg_layers.`` (the 1x1x1 output convolutions) and *asserts* that every other key of the
target network exists in the checkpoint with the same shape. :func:`check_compatibility` runs the same
test without asserting and explains the difference; :func:`select_input_channels` and
:func:`merge_single_channel_checkpoints` fix the one mismatch that can be fixed by surgery, the number
of input channels.

Input projection: the convolution(s) that read the image channels (dimension 1 of their weight).
nnU-Net's ``PlainConvUNet``/``ResidualEncoderUNet`` state dicts hold the same tensor under several
keys (``...convs.0.conv.weight`` and ``...convs.0.all_modules.0.weight``, and the decoder's alias
``decoder.encoder.*``); every alias is found and changed identically (see
:func:`find_input_projection_keys`).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import pickle
import re
import string
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nnunetv2_petct.io import atomic_write

logger = logging.getLogger(__name__)

#: Substrings of state-dict keys nnU-Net's loader never transfers (the output layers).
OUTPUT_LAYER_MARKERS: tuple[str, ...] = (".seg_layers.",)
#: Prefixes added by DDP / torch.compile wrappers (removed by :func:`state_dict_of`).
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")
#: Channel order of this project (SPEC §3): ``_0000`` = CT, ``_0001`` = PET.
DEFAULT_CHANNEL_NAMES: tuple[str, ...] = ("CT", "PET")

MOVE_PLANS_FIX = (
    "Fix: give the target dataset the pretraining plans, so both networks are built identically:\n"
    "  nnUNetv2_move_plans_between_datasets -s PRETRAIN_DATASET -t TARGET_DATASET -sp PRETRAIN_PLANS "
    "-tp TARGET_PLANS\n"
    "  nnUNetv2_preprocess -d TARGET_DATASET -plans_name TARGET_PLANS -c CONFIGURATION\n"
    "  nnUNetv2_train TARGET_DATASET CONFIGURATION FOLD -p TARGET_PLANS -tr TRAINER -pretrained_weights CHECKPOINT\n"
    "(the pretraining plans also fix the normalization, which must match between pretraining and fine-tuning)."
)
ADAPT_FIX = (
    "Only the number of input channels differs: convert the checkpoint with nnUNetv2_petct_adapt_checkpoint "
    "(e.g. `--keep PET` for a PET-only dataset, or `--ct CT_CKPT --pet PET_CKPT --rule first` to merge two "
    "single-modality checkpoints into a 2-channel one to initialise fine-tuning; to probe two single-modality "
    "models use nnUNetv2_petct_late_fusion_checkpoint and nnUNetTrainerPETCTLateFusionProbe)."
)


#: Environment variable: ``1`` lets a trainer of this package pass a ``-pretrained_weights`` file to
#: nnU-Net's loader without the weights-only check (for a *trusted* legacy file; see
#: :func:`check_pretrained_weights_file`). Prefer converting the file once with
#: ``nnUNetv2_petct_adapt_checkpoint FILE --import-trusted -o SAFE.pth``.
TRUST_CHECKPOINT_ENV = "NNUNETV2_PETCT_TRUST_CHECKPOINT"


class IncompatibleCheckpointError(ValueError):
    """A checkpoint cannot be loaded into a network; the message lists the differing tensors and the fix."""


class UnsafeCheckpointError(IncompatibleCheckpointError):
    """Loading the file would unpickle Python objects (which can run code); refused. The message says how to
    convert a trusted file; ``reason`` is what was found (e.g. "it references numpy.dtype")."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message


class CorruptCheckpointError(IncompatibleCheckpointError):
    """The file is empty, truncated, text or otherwise not a PyTorch checkpoint; the message names it."""


def _convert_hint(path: Path) -> str:
    out = path.with_name(path.stem + "_safe.pth")
    return (f"If you trust where the file comes from, convert it once into a weights-only file: "
            f"`nnUNetv2_petct_adapt_checkpoint {path} --import-trusted -o {out}` and use that file (or set "
            f"{TRUST_CHECKPOINT_ENV}=1 to let nnU-Net load it as it is).")


def check_checkpoint_file(path: str | os.PathLike) -> Path:
    """The checks before any ``torch.load`` (nothing is unpickled): the file exists, is not a folder, not
    empty, and is a complete ``torch.save`` zip archive or starts like a pickle. Returns the path.

    Raises:
        FileNotFoundError: no such file.
        CorruptCheckpointError: a folder, an empty file, a truncated zip archive, a text file or unknown bytes.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CorruptCheckpointError(f"{path} is a folder, not a checkpoint file")
    size = path.stat().st_size
    if size == 0:
        raise CorruptCheckpointError(f"{path} is empty (0 bytes): not a checkpoint (an interrupted copy or save?)")
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                z.infolist()
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise CorruptCheckpointError(f"{path} is truncated or corrupt: the zip archive torch.save writes is "
                                         f"incomplete ({e}); copy or save it again") from None
    elif not head.startswith(b"\x80"):
        printable = sum(chr(b) in string.printable for b in head) / max(1, len(head))
        kind = "a text file" if printable > 0.95 else "in an unknown format"
        raise CorruptCheckpointError(f"{path} is not a PyTorch checkpoint: it is {kind} ({size} bytes; a "
                                     f"torch.save file is a zip archive or a pickle)")
    return path


def read_checkpoint_safely(path: str | os.PathLike, map_location: Any = "cpu",
                           allow_numpy_scalars: bool = False) -> Any:
    """``torch.load(path, weights_only=True)``, with one message naming the file for each way it fails.

    Never runs code stored in the file. ``allow_numpy_scalars`` additionally accepts numpy scalars and
    dtypes (what nnU-Net's own training checkpoints of older versions hold; rebuilding them runs no
    code of the file).

    Raises:
        FileNotFoundError: no such file.
        CorruptCheckpointError: a folder, an empty file, a truncated/corrupt ``torch.save`` zip archive, a
            text file, or bytes of an unknown format.
        UnsafeCheckpointError: a pickle that references Python classes or functions outside torch's
            allow-list (the offending global is named) or a legacy pickle the safe loader cannot read;
            the message says how to convert a trusted file.
    """
    import torch

    path = check_checkpoint_file(path)
    try:
        if allow_numpy_scalars:
            import numpy as np

            core = np._core if hasattr(np, "_core") else np.core  # numpy 2 / 1
            allowed = [np.dtype, core.multiarray.scalar] + [type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDG"]
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location=map_location, weights_only=True)
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        m = re.search(r"Unsupported global: GLOBAL (\S+)|load unsupported GLOBAL (\S+)", text)
        if m:
            what = f"it references {m.group(1) or m.group(2)}"
        elif "Weights only load failed" in text:
            op = re.search(r"Unsupported operand (\d+)", text)
            what = ("it is a legacy pickle the safe loader cannot read" + (f" (pickle operand {op.group(1)})" if op
                                                                             else ""))
        else:
            raise CorruptCheckpointError(f"{path} is not a readable PyTorch checkpoint ({text.splitlines()[0][:200]})"
                                         ) from None
        raise UnsafeCheckpointError(
            f"{path} is not a weights-only checkpoint: {what}. Loading it would unpickle Python objects, which "
            f"can run arbitrary code, so it is refused. {_convert_hint(path)}", reason=what) from None
    except (RuntimeError, EOFError, ValueError, KeyError, OSError, IndexError) as e:
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise CorruptCheckpointError(f"{path} is truncated or corrupt ({first}); copy or save it again") from None


# ------------------------------------------------------------------------------------------- access
def is_output_key(key: str) -> bool:
    """True for keys nnU-Net's ``-pretrained_weights`` loader skips (``.seg_layers.``)."""
    return any(m in key for m in OUTPUT_LAYER_MARKERS)


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in WRAPPER_PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def state_dict_of(obj) -> dict[str, torch.Tensor]:
    """The state dict held by ``obj`` with DDP/compile prefixes removed.

    ``obj``: an ``nn.Module``, a checkpoint dict with ``network_weights``, or a plain state dict.

    Raises:
        TypeError: anything else (e.g. a checkpoint dict without tensors).
    """
    if isinstance(obj, torch.nn.Module):
        sd = obj.state_dict()
    elif isinstance(obj, Mapping) and "network_weights" in obj:
        sd = obj["network_weights"]
    elif isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd = obj
    else:
        raise TypeError(
            "expected an nn.Module, a checkpoint dict with 'network_weights', or a state dict of tensors; "
            f"got {type(obj).__name__}" + (f" with keys {sorted(obj)[:8]}" if isinstance(obj, Mapping) else "")
        )
    return {_strip_prefixes(k): v for k, v in sd.items()}


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> dict:
    """Load a checkpoint with ``torch.load(weights_only=True)`` (no arbitrary code runs;
    :func:`read_checkpoint_safely`).

    A bare state dict is wrapped as ``{"network_weights": state_dict}``.

    Raises:
        FileNotFoundError: no such file.
        IncompatibleCheckpointError: the file is not a checkpoint / state dict
            (:class:`CorruptCheckpointError` when empty, truncated or not a checkpoint), or needs unsafe
            unpickling (:class:`UnsafeCheckpointError`, with how to convert a trusted file); the message
            names the file.
    """
    path = Path(path)
    obj = read_checkpoint_safely(path, map_location)
    if not isinstance(obj, dict):
        raise IncompatibleCheckpointError(f"{path}: not a checkpoint dict (got {type(obj).__name__})")
    if "network_weights" not in obj:
        try:
            sd = state_dict_of(obj)
        except TypeError as e:
            raise IncompatibleCheckpointError(f"{path}: no 'network_weights' and not a state dict") from e
        obj = {"network_weights": sd}
    return obj


def import_trusted_checkpoint(path: str | os.PathLike) -> dict:
    """Load a *trusted* legacy checkpoint (``torch.load(weights_only=False)``: code in the file runs) and
    return it in weights-only form: a bare state dict is wrapped as ``network_weights``, numpy values
    become Python numbers/lists, tuples lists, and any other object its ``str`` (recorded in
    ``petct_metadata["imported_from"]``). Only for files whose origin you trust.

    Raises:
        FileNotFoundError, CorruptCheckpointError: no such file; empty, truncated or not a checkpoint.
        IncompatibleCheckpointError: the file holds no state dict.
    """
    import torch

    path = check_checkpoint_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any reader error of a legacy file
        raise CorruptCheckpointError(f"{path} cannot be read ({type(e).__name__}: {str(e)[:200]})") from None
    if isinstance(obj, torch.nn.Module):
        obj = {"network_weights": obj.state_dict()}
    if not isinstance(obj, Mapping):
        raise IncompatibleCheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    if "network_weights" not in obj:
        try:
            obj = {"network_weights": state_dict_of(obj)}
        except TypeError:
            raise IncompatibleCheckpointError(f"{path}: no 'network_weights' and not a state dict") from None
    from nnunetv2_petct.transfer.foundation import to_weights_only_safe

    out = {k: (v if k == "network_weights" else to_weights_only_safe(v, k, unknown="str")) for k, v in obj.items()}
    out["network_weights"] = {str(k): v.detach().cpu() for k, v in obj["network_weights"].items()
                              if isinstance(v, torch.Tensor)}
    meta = dict(out.get("petct_metadata") or {}) if isinstance(out.get("petct_metadata"), Mapping) else {}
    meta["imported_from"] = {"file": str(path.resolve()), "how": "import_trusted_checkpoint (weights_only=False)"}
    out["petct_metadata"] = meta
    return out


def check_pretrained_weights_file(path: str | os.PathLike, network) -> MismatchReport:
    """What a trainer of this package checks before nnU-Net's ``-pretrained_weights`` loader reads ``path``
    (that loader uses ``torch.load(weights_only=False)``, which runs code stored in the file).

    The file must load with ``weights_only=True`` (:func:`read_checkpoint_safely`), hold
    ``network_weights`` (nnU-Net's loader needs that key), and fit ``network`` as nnU-Net's loader
    demands (every non-output tensor present with its shape).

    Returns:
        The compatibility report (ok).

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError, CorruptCheckpointError: see :func:`read_checkpoint_safely`.
        IncompatibleCheckpointError: no ``network_weights``, or another architecture: the first differing
            tensors (5 of each kind) and the fix.
    """
    path = Path(path)
    obj = read_checkpoint_safely(path)
    if not isinstance(obj, Mapping) or "network_weights" not in obj:
        what = "a bare state dict" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
        raise IncompatibleCheckpointError(
            f"{path} is {what} without 'network_weights', which nnU-Net's -pretrained_weights needs; wrap it with "
            f"`nnUNetv2_petct_adapt_checkpoint {path} --import-trusted -o "
            f"{path.with_name(path.stem + '_nnunet.pth')}`")
    rep_ = compare_state_dicts(obj, network, _plan_in_proj_names(obj))
    if not rep_.ok:
        raise IncompatibleCheckpointError(f"{path} does not fit the network of this training. " + rep_.message(5))
    return rep_


def save_checkpoint(checkpoint: dict, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically and verified (:func:`nnunetv2_petct.io.atomic_write`). Returns the path."""
    path = Path(path)
    with atomic_write(path) as tmp:
        torch.save(checkpoint, tmp)
    return path


def tensor_digest(obj, skip_output: bool = True) -> str:
    """SHA-1 over the names, shapes, dtypes and bytes of every tensor (sorted by key).

    ``skip_output`` leaves out the output layers (:func:`is_output_key`), i.e. exactly the tensors
    ``-pretrained_weights`` transfers. Used to tell whether weights changed (e.g. whether pretrained
    weights were loaded after a network was built).
    """
    sd = state_dict_of(obj)
    h = hashlib.sha1()
    for k in sorted(sd):
        if skip_output and is_output_key(k):
            continue
        t = sd[k].detach().to("cpu").contiguous()
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def differing_tensors(a, b, skip_output: bool = True) -> list[str]:
    """Keys whose tensors are not bit-identical between ``a`` and ``b`` (missing on one side counts).

    Bitwise comparison (``torch.equal`` on identical dtypes; NaN == NaN only when the bits agree).
    """
    sa, sb = state_dict_of(a), state_dict_of(b)
    out = []
    for k in sorted(set(sa) | set(sb)):
        if skip_output and is_output_key(k):
            continue
        if k not in sa or k not in sb:
            out.append(k)
            continue
        ta, tb = sa[k].detach().cpu(), sb[k].detach().cpu()
        if ta.shape != tb.shape or ta.dtype != tb.dtype:
            out.append(k)
        elif ta.numel() and not torch.equal(ta.contiguous().view(torch.uint8), tb.contiguous().view(torch.uint8)):
            out.append(k)
    return out


# -------------------------------------------------------------------------------- input projection
def find_input_projection_keys(obj, module_names: Sequence[str] | None = None) -> list[str]:
    """Keys of every weight tensor that reads the network's input channels (dimension 1).

    ``module_names``: module paths (e.g. nnssl's ``keys_to_in_proj``,
    ``("encoder.stages.0.0.convs.0.conv", "encoder.stages.0.0.convs.0.all_modules.0")``); a key matches
    when it is ``name + ".weight"`` or ends with ``"." + name + ".weight"`` (the decoder alias
    ``decoder.encoder.*``). Without names, the first convolution weight in state-dict order
    (a tensor with >= 3 dimensions) is the input projection and every other key holding an equal
    tensor of the same shape is an alias of it.

    Returns the keys sorted; an empty list when the state dict has no convolution.
    """
    sd = state_dict_of(obj)
    if module_names:
        wanted = [str(n).removesuffix(".weight") + ".weight" for n in module_names]
        keys = [k for k in sd if any(k == w or k.endswith("." + w) for w in wanted)]
        if keys:
            return sorted(keys)
        logger.warning("none of the input-projection names %s is in the state dict; guessing", list(module_names))
    first = next((k for k, v in sd.items() if v.ndim >= 3 and not is_output_key(k)), None)
    if first is None:
        return []
    ref = sd[first]
    keys = [k for k, v in sd.items()
            if v.shape == ref.shape and v.dtype == ref.dtype and (v is ref or torch.equal(v, ref))]
    return sorted(keys)


def input_channel_count(obj, module_names: Sequence[str] | None = None) -> int | None:
    """Number of input channels of the network (dimension 1 of the input projection), or None."""
    keys = find_input_projection_keys(obj, module_names)
    if not keys:
        return None
    return int(state_dict_of(obj)[keys[0]].shape[1])


def _plan_in_proj_names(checkpoint) -> list[str] | None:
    if isinstance(checkpoint, Mapping):
        plan = checkpoint.get("nnssl_adaptation_plan")
        if isinstance(plan, Mapping) and plan.get("keys_to_in_proj"):
            return list(plan["keys_to_in_proj"])
    return None


# ------------------------------------------------------------------------------------- compatibility
@dataclass
class MismatchReport:
    """Result of comparing a checkpoint with a target network, in nnU-Net loader terms.

    ``missing``: keys the target needs (non-output) that the checkpoint lacks; ``shape_mismatches``:
    ``(key, checkpoint_shape, target_shape)``; ``unexpected``: checkpoint keys the target does not have
    (ignored by the loader, listed for information); ``in_proj_keys``: the target's input projection.
    """

    missing: list[str] = field(default_factory=list)
    shape_mismatches: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    n_transferred: int = 0
    in_proj_keys: list[str] = field(default_factory=list)
    checkpoint_in_channels: int | None = None
    target_in_channels: int | None = None

    @property
    def ok(self) -> bool:
        """True when nnU-Net's ``-pretrained_weights`` would accept the checkpoint."""
        return not self.missing and not self.shape_mismatches

    @property
    def only_input_channels_differ(self) -> bool:
        """True when the only problem is dimension 1 of the input projection (fixable by adaptation)."""
        if self.ok or self.missing:
            return False
        in_proj = set(self.in_proj_keys)
        for key, a, b in self.shape_mismatches:
            if key not in in_proj or len(a) != len(b) or a[0] != b[0] or tuple(a[2:]) != tuple(b[2:]):
                return False
        return True

    def message(self, max_items: int = 20) -> str:
        """Human-readable explanation: the differing tensors (up to ``max_items`` of each kind) and the fix."""
        if self.ok:
            return (f"compatible: {self.n_transferred} tensors would be transferred "
                    f"(output layers '{OUTPUT_LAYER_MARKERS[0].strip('.')}' are not).")
        lines = ["The checkpoint does not fit the network (nnU-Net's -pretrained_weights would refuse it)."]
        if self.checkpoint_in_channels is not None and self.target_in_channels is not None \
                and self.checkpoint_in_channels != self.target_in_channels:
            lines.append(f"Input channels: checkpoint {self.checkpoint_in_channels}, network "
                         f"{self.target_in_channels}.")
        if self.shape_mismatches:
            lines.append(f"{len(self.shape_mismatches)} tensor(s) differ in shape (checkpoint vs network):")
            lines += [f"  {k}: {tuple(a)} vs {tuple(b)}" for k, a, b in self.shape_mismatches[:max_items]]
            if len(self.shape_mismatches) > max_items:
                lines.append(f"  ... and {len(self.shape_mismatches) - max_items} more")
        if self.missing:
            lines.append(f"{len(self.missing)} tensor(s) of the network are missing from the checkpoint:")
            lines += [f"  {k}" for k in self.missing[:max_items]]
            if len(self.missing) > max_items:
                lines.append(f"  ... and {len(self.missing) - max_items} more")
        if self.unexpected:
            lines.append(f"({len(self.unexpected)} checkpoint tensor(s) have no counterpart in the network, e.g. "
                         f"{self.unexpected[0]}; these would be ignored.)")
        lines.append(ADAPT_FIX if self.only_input_channels_differ else MOVE_PLANS_FIX)
        return "\n".join(lines)


def compare_state_dicts(pretrained, target, in_proj_names: Sequence[str] | None = None) -> MismatchReport:
    """Compare like nnU-Net's loader: every non-output key of ``target`` must exist in ``pretrained``
    with the same shape. Both arguments: anything :func:`state_dict_of` accepts."""
    sp, st = state_dict_of(pretrained), state_dict_of(target)
    rep = MismatchReport()
    for k, v in st.items():
        if is_output_key(k):
            continue
        if k not in sp:
            rep.missing.append(k)
        elif tuple(sp[k].shape) != tuple(v.shape):
            rep.shape_mismatches.append((k, tuple(sp[k].shape), tuple(v.shape)))
        else:
            rep.n_transferred += 1
    rep.unexpected = sorted(k for k in sp if k not in st and not is_output_key(k))
    rep.in_proj_keys = find_input_projection_keys(st, in_proj_names)
    rep.target_in_channels = input_channel_count(st, in_proj_names)
    rep.checkpoint_in_channels = input_channel_count(sp, in_proj_names)
    return rep


def check_compatibility(checkpoint, network_or_state_dict) -> MismatchReport:
    """Would ``nnUNetv2_train ... -pretrained_weights CHECKPOINT`` accept ``checkpoint`` for this network?

    Args:
        checkpoint: a path, a checkpoint dict (``network_weights`` [+ ``nnssl_adaptation_plan``]) or a
            state dict.
        network_or_state_dict: the target ``nn.Module`` (e.g. from ``build_network_architecture``), a
            state dict or a checkpoint dict.

    Returns:
        A :class:`MismatchReport`; ``report.ok`` says whether the load would succeed and
        ``report.message()`` lists the differing tensors and the fix (adapt the channels, or transfer the
        plans with ``nnUNetv2_move_plans_between_datasets``).
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = load_checkpoint(checkpoint)
    return compare_state_dicts(checkpoint, network_or_state_dict, _plan_in_proj_names(checkpoint))


def require_compatible(checkpoint, network_or_state_dict) -> MismatchReport:
    """:func:`check_compatibility`, raising :class:`IncompatibleCheckpointError` (with the message) if not ok."""
    rep = check_compatibility(checkpoint, network_or_state_dict)
    if not rep.ok:
        raise IncompatibleCheckpointError(rep.message())
    return rep


# ------------------------------------------------------------------------------ channel adaptation
# Per-channel entries of plans/metadata that follow the channel selection (lists of one item per
# channel, or dicts keyed "0", "1", ...).
_PER_CHANNEL_LIST_KEYS = ("normalization_schemes", "use_mask_for_norm", "normalization", "channel_names",
                          "channels", "channel_order", "input_channels")
_PER_CHANNEL_DICT_KEYS = ("foreground_intensity_properties_per_channel", "channel_names")


def _adapt_per_channel(obj, n_old: int, pick):
    """Recursively rewrite per-channel lists/dicts (length ``n_old``) with ``pick(list_of_items)``."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k in _PER_CHANNEL_DICT_KEYS and isinstance(v, dict) and sorted(v) == [str(i) for i in range(n_old)]:
                items = pick([v[str(i)] for i in range(n_old)])
                out[k] = {str(i): x for i, x in enumerate(items)}
            elif k in _PER_CHANNEL_LIST_KEYS and isinstance(v, (list, tuple)) and len(v) == n_old:
                out[k] = type(v)(pick(list(v)))
            else:
                out[k] = _adapt_per_channel(v, n_old, pick)
        return out
    if isinstance(obj, list):
        return [_adapt_per_channel(v, n_old, pick) for v in obj]
    return obj


def _channel_names_of(checkpoint: Mapping, n: int) -> list[str]:
    """Channel names stored in the checkpoint metadata, else the project's CT, PET order."""
    for holder in (checkpoint.get("petct_metadata"), checkpoint.get("nnssl_adaptation_plan")):
        if isinstance(holder, Mapping):
            names = holder.get("channel_names")
            if isinstance(names, Mapping) and sorted(names) == [str(i) for i in range(n)]:
                return [str(names[str(i)]) for i in range(n)]
            if isinstance(names, (list, tuple)) and len(names) == n:
                return [str(x) for x in names]
    if n <= len(DEFAULT_CHANNEL_NAMES):
        return list(DEFAULT_CHANNEL_NAMES[:n])
    return [str(i) for i in range(n)]


def resolve_channels(checkpoint: Mapping, keep: Sequence[int | str]) -> list[int]:
    """Channel indices from indices or names (case-insensitive, e.g. ``"PET"``) of ``checkpoint``.

    Raises:
        ValueError: unknown name, index out of range, duplicates or nothing to keep.
    """
    n = input_channel_count(checkpoint, _plan_in_proj_names(checkpoint))
    if n is None:
        raise ValueError("the checkpoint has no convolution weights (no input projection found)")
    names = _channel_names_of(checkpoint, n)
    out = []
    for item in keep:
        if isinstance(item, int) or (isinstance(item, str) and item.strip().isdigit()):
            idx = int(item)
        else:
            low = [x.lower() for x in names]
            if str(item).lower() not in low:
                raise ValueError(f"channel {item!r} not in the checkpoint's channels {names}")
            idx = low.index(str(item).lower())
        if not 0 <= idx < n:
            raise ValueError(f"channel index {idx} out of range: the checkpoint has {n} input channel(s) {names}")
        out.append(idx)
    if not out or len(set(out)) != len(out):
        raise ValueError(f"need distinct channels to keep, got {list(keep)}")
    return out


def select_input_channels(checkpoint: Mapping, keep: Sequence[int | str]) -> dict:
    """A copy of ``checkpoint`` whose network reads only the input channels ``keep`` (indices or names).

    Rule: the input projection's weight is sliced along dimension 1 (``w[:, keep]``); every other tensor
    is unchanged. Exact for a network that saw only the kept channels' contribution in its first
    convolution: the removed channels' contribution (``w[:, dropped] * x_dropped``) is simply gone, so the
    first layer's pre-normalization response changes; the instance normalization that follows absorbs
    its scale, but not the missing information. Fine-tuning is expected to adapt.

    Metadata: ``nnssl_adaptation_plan["pretrain_num_input_channels"]`` becomes ``len(keep)``; per-channel
    lists/dicts in the plan (normalization schemes, intensity properties, channel names) follow the
    selection; ``petct_metadata["adaptation"]`` records what was done. Output layers (``.seg_layers.``,
    never transferred by ``-pretrained_weights``) are kept as they are.

    Raises:
        ValueError: bad ``keep`` (see :func:`resolve_channels`).
    """
    idx = resolve_channels(checkpoint, keep)
    names_in = _plan_in_proj_names(checkpoint)
    sd = state_dict_of(checkpoint)
    n_old = input_channel_count(sd, names_in)
    old_names = _channel_names_of(checkpoint, n_old)
    in_proj = set(find_input_projection_keys(sd, names_in))
    index = torch.tensor(idx, dtype=torch.long)
    new_sd = {}
    for k, v in sd.items():
        new_sd[k] = v.index_select(1, index).clone() if k in in_proj else v.clone()
    out = _copy_meta(checkpoint)
    out["network_weights"] = new_sd
    pick = (lambda items: [items[i] for i in idx])  # noqa: E731
    _update_meta(out, n_old, len(idx), pick, {
        "operation": "select_input_channels",
        "kept_channels": idx,
        "kept_channel_names": [old_names[i] for i in idx],
        "source_channel_names": old_names,
        "input_projection_keys": sorted(in_proj),
    }, [old_names[i] for i in idx])
    _validate_if_foundation(out)
    return out


MERGE_RULES = ("first", "second")
"""First-conv-only merge rules: the input projections of both networks are combined, every other tensor comes
from ONE source network (``first`` = checkpoint 1, ``second`` = checkpoint 2). There is deliberately no
averaging rule: see :func:`merge_single_channel_checkpoints`."""


def merge_single_channel_checkpoints(checkpoints: Sequence[Mapping], rule: str,
                                     channel_names: Sequence[str] = DEFAULT_CHANNEL_NAMES) -> dict:
    """One N-channel checkpoint from N single-channel checkpoints of the same architecture — **only to
    initialise fine-tuning**, never to probe.

    Typical use: a CT-only and a PET-only ("separated-modality") foundation model as the starting point of
    a 2-channel (CT, PET) fine-tuning run, in that order.

    Rule ("first-conv only"): the single-channel input projections are concatenated along dimension 1 in
    the given order (each channel keeps its own network's first-layer filters); every other tensor comes
    unchanged from one source network, ``rule="first"`` (checkpoint 1) or ``"second"`` (checkpoint 2).
    The other modality therefore enters, through its own first-layer filters, features that were never
    trained on it; fine-tuning is expected to adapt.

    Why no averaging rule: independently trained networks are not aligned unit by unit (feature
    permutation symmetry), so the element-wise average of two networks computes neither network's
    features. Only the first convolution, which reads disjoint input channels, can be combined
    meaningfully. To *evaluate* separated-modality pretraining (e.g. by linear probing), keep the two
    networks intact: :mod:`nnunetv2_petct.transfer.late_fusion` and ``nnUNetTrainerPETCTLateFusionProbe``.

    Output layers (never transferred by ``-pretrained_weights``) are concatenated along their output
    dimension when they have one output channel each, else taken from the base checkpoint. Non-floating
    tensors (counters) come from the base checkpoint. ``petct_metadata.intended_use`` says
    "initialising fine-tuning only"; ``pretraining_data`` lists every source's pretraining cases.

    Raises:
        ValueError: fewer than 2 checkpoints, a checkpoint with more than 1 input channel, differing
            architectures (the message lists the differing tensors), or an unknown rule (e.g. the removed
            ``"average"``).
    """
    if rule not in MERGE_RULES:
        extra = (" (averaging two independently trained networks computes neither network's features; it was "
                 "removed)" if rule == "average" else "")
        raise ValueError(f"unknown merge rule {rule!r}{extra}; choose one of {MERGE_RULES}")
    if len(checkpoints) < 2:
        raise ValueError("need at least 2 single-channel checkpoints to merge")
    if rule == "second" and len(checkpoints) != 2:
        raise ValueError("rule 'second' needs exactly 2 checkpoints")
    if len(channel_names) != len(checkpoints):
        raise ValueError(f"{len(checkpoints)} checkpoints but channel names {list(channel_names)}")
    n = len(checkpoints)
    names_in = _plan_in_proj_names(checkpoints[0])
    sds = [state_dict_of(c) for c in checkpoints]
    for i, sd in enumerate(sds):
        c = input_channel_count(sd, names_in)
        if c != 1:
            raise ValueError(f"checkpoint {i + 1} ({channel_names[i]}) has {c} input channels; merging needs "
                             "single-channel checkpoints")
    for i in range(1, n):
        rep = compare_state_dicts(sds[i], sds[0], names_in)
        if not rep.ok or rep.unexpected:
            raise ValueError(f"checkpoint {i + 1} ({channel_names[i]}) has a different architecture than "
                             f"checkpoint 1 ({channel_names[0]}):\n" + rep.message())
    in_proj = set(find_input_projection_keys(sds[0], names_in))
    base = {"first": 0, "second": 1}[rule]
    merged = {}
    for k, v0 in sds[0].items():
        tensors = [sd[k] for sd in sds]
        if k in in_proj:
            merged[k] = torch.cat([t.clone() for t in tensors], dim=1)
        elif is_output_key(k):
            if all(t.ndim >= 1 and t.shape[0] == 1 for t in tensors):
                merged[k] = torch.cat([t.clone() for t in tensors], dim=0)
            else:
                merged[k] = v0.clone()
        elif not torch.is_floating_point(v0):
            merged[k] = sds[base][k].clone()
        else:
            merged[k] = tensors[base].clone()
    out = _copy_meta(checkpoints[base])
    out["network_weights"] = merged
    _update_meta(out, 1, n, lambda items: items, {
        "operation": "merge_single_channel_checkpoints",
        "rule": f"first-conv only: input projections concatenated, every other tensor from checkpoint "
                f"{base + 1} ({channel_names[base]}) ({rule})",
        "intended_use": "initialising fine-tuning only (not for probing)",
        "channel_names": list(channel_names),
        "input_projection_keys": sorted(in_proj),
        "sources": [
            (c.get("petct_metadata") or {}).get("source_file") if isinstance(c.get("petct_metadata"), Mapping)
            else None for c in checkpoints
        ],
    }, list(channel_names))
    # single-channel entries (channel names, normalization of the network's input, ...) of the merged
    # metadata are the sources' entries in channel order; dataset-level entries (length 2) stay as they are
    for key in ("nnssl_adaptation_plan", "petct_metadata"):
        srcs = [c.get(key) for c in checkpoints]
        if isinstance(out.get(key), dict) and all(isinstance(x, Mapping) for x in srcs):
            _merge_per_channel_from_sources(out[key], srcs)
    out["petct_metadata"]["channel_names"] = {str(i): name for i, name in enumerate(channel_names)}
    out["petct_metadata"]["intended_use"] = "initialising fine-tuning only (a merged network is not a model to probe)"
    sources_data = [(c.get("petct_metadata") or {}).get("pretraining_data") if isinstance(c.get("petct_metadata"),
                    Mapping) else None for c in checkpoints]
    out["petct_metadata"]["pretraining_data"] = (
        [d for data in sources_data for d in data] if all(isinstance(d, list) for d in sources_data) else None)
    _validate_if_foundation(out)
    return out


def _merge_per_channel_from_sources(plan: dict, sources: list) -> None:
    """Where every source plan has a 1-item per-channel entry, concatenate the sources' items."""
    def walk(dst, srcs):
        if not isinstance(dst, dict):
            return
        for k in list(dst):
            vals = [s.get(k) if isinstance(s, Mapping) else None for s in srcs]
            if k in _PER_CHANNEL_LIST_KEYS and all(isinstance(v, (list, tuple)) and len(v) == 1 for v in vals):
                dst[k] = [v[0] for v in vals]
            elif k in _PER_CHANNEL_DICT_KEYS and all(isinstance(v, Mapping) and list(v) == ["0"] for v in vals):
                dst[k] = {str(i): v["0"] for i, v in enumerate(vals)}
            elif isinstance(dst[k], dict):
                walk(dst[k], vals)
    walk(plan, sources)


def _validate_if_foundation(checkpoint: Mapping) -> None:
    """Run the foundation-format validator on checkpoints that declare that format (consistency of
    ``keys_to_in_proj`` with ``pretrain_num_input_channels`` after surgery)."""
    if checkpoint.get("format") == "nnunetv2_petct.transfer.foundation":
        from nnunetv2_petct.transfer.foundation import validate_foundation_checkpoint

        validate_foundation_checkpoint(checkpoint)


def _copy_meta(checkpoint: Mapping) -> dict:
    return {k: copy.deepcopy(v) for k, v in checkpoint.items() if k != "network_weights"}


def _update_meta(out: dict, n_old: int, n_new: int, pick, record: dict, channel_names: list[str]) -> None:
    plan = out.get("nnssl_adaptation_plan")
    if isinstance(plan, dict):
        plan = _adapt_per_channel(plan, n_old, pick)
        plan["pretrain_num_input_channels"] = n_new
        out["nnssl_adaptation_plan"] = plan
    meta = out.get("petct_metadata")
    meta = dict(meta) if isinstance(meta, Mapping) else {}
    meta = _adapt_per_channel(meta, n_old, pick)
    meta["channel_names"] = {str(i): name for i, name in enumerate(channel_names)}
    meta["num_input_channels"] = n_new
    meta.setdefault("adaptations", [])
    meta["adaptations"] = list(meta["adaptations"]) + [record]
    out["petct_metadata"] = meta
