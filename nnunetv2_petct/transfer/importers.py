"""Import pretrained weights from other formats into our foundation-checkpoint format (pure; no nnunetv2).

A small registry of *source formats* (:data:`FORMATS`). Each format knows how to recognise a loaded file
(``detect``) and how to turn it into a foundation checkpoint (``convert``;
:mod:`nnunetv2_petct.transfer.foundation`): nnU-Net key names under ``network_weights``, channel order
``_0000`` = CT, ``_0001`` = PET, an ``nnssl_adaptation_plan`` that stock ``-pretrained_weights`` and upstream
nnU-Net's nnssl route both read, and ``petct_metadata["import"]`` with the provenance (source file name and
SHA-256, format, every change made). Adding a format (e.g. nnssl / OpenMind checkpoints) = one
:class:`SourceFormat` passed to :func:`register_format`.

Formats today
``liu2026``
    The released MAE weights of Liu et al. 2026 (``nnunet_v2_mim_best.pth``, liu-xiaofeng/MAE-for-PET-CT):
    ``{epoch, model_state_dict, optimizer_state_dict, scaler_state_dict, scheduler_state_dict, best_loss}``;
    the U-Net is the attribute ``nnunet`` of a wrapper, so keys start with ``nnunet.`` (``module.nnunet.``
    when saved from DataParallel); :data:`~nnunetv2_petct.transfer.architecture.PAPER_ARCHITECTURE` with 2
    inputs and 2 outputs; **channel 0 = PET, channel 1 = CT**; each channel z-scored per volume (no CT
    clipping) at 3 x 2 x 2 mm. Conversion: prefix stripped; optimizer, scaler and scheduler state dropped;
    the input channels of the first convolution swapped to (CT, PET) in *every* key that holds that tensor
    (``encoder.stages.0.0.convs.0.conv``, ``...convs.0.all_modules.0`` and their ``decoder.encoder.*``
    copies; loading a state dict assigns each key in turn, so one missed alias would silently undo the swap);
    the output channels of the reconstruction heads (``decoder.seg_layers.*``, 2 = PET, CT) swapped to (CT,
    PET) as well, so the file is a consistent CT+PET reconstruction network (nnU-Net's ``-pretrained_weights``
    never loads ``.seg_layers.``, so no head reaches a segmentation network); every other tensor unchanged.
    A file whose state dict does not match the declared architecture (missing, extra or differently shaped
    tensors) is refused with the list of differences.
``petct-foundation``
    Our own foundation checkpoints, any version: rewritten with the current adaptation plan (version 1 files
    listed every plans configuration and hard-coded module keys, which upstream's route could not read).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from nnunetv2_petct.pretraining.mae import PAPER_BLOCK_SIZE
from nnunetv2_petct.transfer.architecture import (
    PAPER_BATCH_SIZE_PRETRAINING,
    PAPER_PATCH_SIZE,
    PAPER_PLANS_NAME,
    PAPER_SPACING_MM,
    aliases_of,
    build_network,
    compare_with_architecture,
    network_keys,
    paper_architecture,
    permute_channels,
)
from nnunetv2_petct.transfer.foundation import (
    FORMAT,
    FORMAT_VERSION,
    build_foundation_checkpoint,
    save_foundation_checkpoint,
)
from nnunetv2_petct.transfer.weights import (
    CorruptCheckpointError,
    UnsafeCheckpointError,
    check_checkpoint_file,
    read_checkpoint_safely,
)

logger = logging.getLogger(__name__)

TARGET_CHANNELS: tuple[str, ...] = ("CT", "PET")


class WeightsImportError(ValueError):
    """A file cannot be imported (unknown format, wrong architecture, unreadable); the message says why."""


@dataclass(frozen=True)
class SourceFormat:
    """One importable format: ``detect(obj) -> bool`` on the loaded file, ``convert(obj, source) -> checkpoint``
    (a foundation-checkpoint dict; ``source`` describes the file: path, SHA-256, size)."""

    name: str
    description: str
    detect: Callable[[Any], bool]
    convert: Callable[[Any, Mapping[str, Any]], dict]


FORMATS: dict[str, SourceFormat] = {}


def register_format(fmt: SourceFormat) -> SourceFormat:
    """Add ``fmt`` to :data:`FORMATS` (a name used twice raises ValueError)."""
    if fmt.name in FORMATS:
        raise ValueError(f"import format {fmt.name!r} is already registered")
    FORMATS[fmt.name] = fmt
    return fmt


# ------------------------------------------------------------------------------------------------ reading
def sha256_of(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


def load_source(path: str | os.PathLike, trust_pickle: bool = False) -> Any:
    """``torch.load`` of a file to import, on the CPU, with ``weights_only=True`` unless ``trust_pickle``.

    Raises FileNotFoundError, or WeightsImportError when the file needs full unpickling (it could run code:
    pass ``trust_pickle`` only for files from a source you trust) or is not a torch file.
    """
    if not trust_pickle:
        try:
            return read_checkpoint_safely(path)
        except UnsafeCheckpointError as e:
            raise WeightsImportError(
                f"{path} holds objects that torch.load(weights_only=True) refuses ({e.reason}). If you trust the file's "
                f"source, import it with --trust-pickle (full unpickling can run code)") from e
        except CorruptCheckpointError as e:
            raise WeightsImportError(f"{e}; is the download complete?") from e
    try:
        path = check_checkpoint_file(path)
        return torch.load(path, map_location="cpu", weights_only=False)
    except CorruptCheckpointError as e:
        raise WeightsImportError(f"{e}; is the download complete?") from e
    except Exception as e:  # noqa: BLE001 - not a torch file, truncated download, ...
        raise WeightsImportError(f"{path} cannot be read by torch.load ({type(e).__name__}: {e}); is the download "
                                 f"complete?") from e


def detect_format(obj: Any) -> str:
    """The name of the one registered format that recognises ``obj``; WeightsImportError if none or several."""
    hits = [name for name, fmt in FORMATS.items() if fmt.detect(obj)]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise WeightsImportError(f"the file matches several formats {hits}: choose one with --format")
    keys = sorted(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
    hint = ""
    if isinstance(obj, Mapping) and "nnssl_adaptation_plan" in obj:
        hint = (" It looks like an nnssl checkpoint: no importer for it yet; fine-tune it with upstream nnU-Net's "
                "route (README) or add a SourceFormat for it.")
    raise WeightsImportError(f"the file matches none of the known formats ({', '.join(FORMATS)}); top-level "
                             f"keys: {keys}.{hint}")


def import_checkpoint(path: str | os.PathLike, fmt: str = "auto", trust_pickle: bool = False) -> dict:
    """Read ``path``, detect or check its format, and return the foundation checkpoint (not yet written).

    Raises FileNotFoundError, WeightsImportError (unknown/mismatching format, wrong architecture, unreadable).
    """
    path = Path(path)
    obj = load_source(path, trust_pickle=trust_pickle)
    if fmt == "auto":
        fmt = detect_format(obj)
    if fmt not in FORMATS:
        raise WeightsImportError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)} (or auto)")
    if not FORMATS[fmt].detect(obj):
        raise WeightsImportError(f"{path.name} is not a {fmt} file: {FORMATS[fmt].description}. Top-level keys: "
                                 f"{sorted(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__}")
    source = {"file_name": path.name, "path": str(path.resolve()), "sha256": sha256_of(path),
              "size_bytes": path.stat().st_size, "format": fmt, "loaded_with_weights_only": not trust_pickle}
    return FORMATS[fmt].convert(obj, source)


def import_weights(src: str | os.PathLike, output: str | os.PathLike, fmt: str = "auto", overwrite: bool = False,
                   trust_pickle: bool = False) -> tuple[Path, dict]:
    """:func:`import_checkpoint` and write the result atomically to ``output``; returns ``(path, checkpoint)``.

    Raises FileExistsError for an existing ``output`` without ``overwrite`` (before reading anything), plus
    everything :func:`import_checkpoint` and ``save_foundation_checkpoint`` raise.
    """
    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists (use --force to replace it)")
    if output.resolve() == Path(src).resolve():
        raise WeightsImportError("the output would replace the file being imported; choose another -o")
    ckpt = import_checkpoint(src, fmt, trust_pickle=trust_pickle)
    return save_foundation_checkpoint(ckpt, output), ckpt


def _provenance(source: Mapping[str, Any], changes: list[str], **extra: Any) -> dict:
    import nnunetv2_petct

    return {**dict(source), "changes": list(changes), **extra,
            "imported_with": f"nnunetv2_petct {nnunetv2_petct.__version__}",
            "imported_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}


# ---------------------------------------------------------------------------------------------- liu2026
LIU2026_WRAPPER_PREFIXES: tuple[str, ...] = ("module.nnunet.", "nnunet.")
LIU2026_TRAINING_STATE: tuple[str, ...] = ("optimizer_state_dict", "scaler_state_dict", "scheduler_state_dict")
LIU2026_SOURCE_CHANNELS: tuple[str, ...] = ("PET", "CT")
LIU2026_CITATION = {
    "type": "pretrained weights",
    "name": "Liu et al. 2026 whole-body FDG PET/CT MAE foundation model (liu-xiaofeng/MAE-for-PET-CT)",
    "apa_citations": ["Liu et al. (2026). An Open Multi-Center Whole-Body FDG PET/CT Foundation Model for Tumor "
                      "Segmentation. arXiv:2605.21835."],
}


def _liu2026_detect(obj: Any) -> bool:
    if not isinstance(obj, Mapping) or not isinstance(obj.get("model_state_dict"), Mapping):
        return False
    keys = list(obj["model_state_dict"])
    return bool(keys) and all(k.startswith(LIU2026_WRAPPER_PREFIXES) for k in keys)


def _strip_liu_prefix(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    prefixes = {next(p for p in LIU2026_WRAPPER_PREFIXES if k.startswith(p)) for k in state_dict}
    if len(prefixes) != 1:
        raise WeightsImportError(f"liu2026: keys mix the prefixes {sorted(prefixes)}")
    prefix = prefixes.pop()
    return {k[len(prefix):]: v for k, v in state_dict.items()}, prefix


def paper_pretrain_plans() -> dict:
    """The pretraining plans of the paper's weights, as far as known (for the adaptation plan): one
    ``3d_fullres`` configuration, the paper's U-Net at 3 x 2 x 2 mm (z, y, x; identity axis order), patch
    96 x 128 x 128, batch 16, both channels z-scored per image over the whole volume (CT, PET order)."""
    return {
        "dataset_name": "Liu2026_FDG_PETCT_pretraining",
        "plans_name": PAPER_PLANS_NAME,
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "image_reader_writer": "SimpleITKIO",
        "configurations": {"3d_fullres": {
            "data_identifier": f"{PAPER_PLANS_NAME}_3d_fullres",
            "preprocessor_name": "DefaultPreprocessor",
            "batch_size": PAPER_BATCH_SIZE_PRETRAINING,
            "patch_size": list(PAPER_PATCH_SIZE),
            "spacing": list(PAPER_SPACING_MM),
            "normalization_schemes": ["ZScoreNormalization", "ZScoreNormalization"],
            "use_mask_for_norm": [False, False],
            "architecture": paper_architecture(),
        }},
    }


def _liu2026_convert(obj: Mapping[str, Any], source: Mapping[str, Any]) -> dict:
    sd, prefix = _strip_liu_prefix(obj["model_state_dict"])
    arch = paper_architecture()
    diffs = compare_with_architecture(sd, arch, 2, 2)
    if diffs:
        shown = "; ".join(diffs[:6]) + (f"; ... ({len(diffs)} differences)" if len(diffs) > 6 else "")
        raise WeightsImportError(
            "liu2026: the state dict is not the declared architecture (PlainConvUNet, 6 stages, features "
            f"32-64-128-256-320-320, 2 input and 2 output channels): {shown}. The file is not the authors' released "
            "checkpoint, or was trained with another configuration")
    keys = network_keys(build_network(arch, 2, 2))
    first = f"{keys['keys_to_in_proj'][0]}.weight"
    in_proj = aliases_of(sd, first)
    by_name = sorted(k for k in sd if any(k == f"{m}.weight" or k.endswith(f".{m}.weight")
                                          for m in keys["keys_to_in_proj"]))
    if sorted(in_proj) != by_name:
        raise WeightsImportError(f"liu2026: the keys holding the first convolution {sorted(in_proj)} are not its "
                                 f"expected aliases {by_name}: the file's tensors were modified")
    order = [LIU2026_SOURCE_CHANNELS.index(c) for c in TARGET_CHANNELS]  # (CT, PET) from (PET, CT): [1, 0]
    heads = [k for k in sd if ".seg_layers." in k]
    # one swapped tensor shared by every alias (as in a live network's state dict: saved once); unchanged
    # tensors keep their storage, so the decoder's copies of the encoder are not duplicated in the file either
    swapped = permute_channels(sd[first], order, dim=1)
    weights = {}
    for k, v in sd.items():
        if k in in_proj:
            weights[k] = swapped
        elif k in heads:
            weights[k] = permute_channels(v, order, dim=0)
        else:
            weights[k] = v
    dropped = [k for k in obj if k != "model_state_dict"]
    changes = [
        f"removed the key prefix {prefix!r}",
        f"dropped {dropped} (training state and bookkeeping)",
        f"input channels of the first convolution reordered from {list(LIU2026_SOURCE_CHANNELS)} to "
        f"{list(TARGET_CHANNELS)} (dimension 1) in every key holding it: {sorted(in_proj)}",
        f"output channels of the reconstruction heads reordered from {list(LIU2026_SOURCE_CHANNELS)} to "
        f"{list(TARGET_CHANNELS)} (dimension 0): {heads} (nnU-Net's -pretrained_weights never loads .seg_layers.)",
        f"{len(sd) - len(in_proj) - len(heads)} other tensors unchanged",
    ]
    metadata = {
        "channel_order": list(TARGET_CHANNELS),
        "source_channel_order": list(LIU2026_SOURCE_CHANNELS),
        "normalization": "zscore-both",
        "masking": {"block_size": list(PAPER_BLOCK_SIZE), "mask_ratio": 0.5, "per_channel": True, "visible_weight": 0.2,
                    "imputation": "zero (mean of z-scored intensities)", "patch_size": list(PAPER_PATCH_SIZE)},
        "preprocessing_of_source": "resampled to 3 x 2 x 2 mm (z, y, x), cropped to the largest CT > -500 HU "
                                   "component + 3 voxels, each channel z-scored over the cropped volume",
        "trainer_name": None,
        "epoch": _plain_number(obj.get("epoch")),
        "best_loss": _plain_number(obj.get("best_loss")),
        "import": _provenance(source, changes, source_key_prefix=prefix,
                              input_projection_keys=sorted(in_proj), reordered_head_keys=heads),
    }
    ckpt = build_foundation_checkpoint(weights, paper_pretrain_plans(), "3d_fullres", 2, metadata,
                                       list(TARGET_CHANNELS))
    ckpt["citations"] = [dict(LIU2026_CITATION)]
    return ckpt


def _plain_number(x: Any) -> int | float | None:
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return x.item() if x.numel() == 1 else None
    try:
        return x.item() if hasattr(x, "item") else (int(x) if isinstance(x, int) else float(x))
    except (TypeError, ValueError):
        return None


register_format(SourceFormat(
    name="liu2026",
    description="the released MAE weights of Liu et al. 2026 (nnunet_v2_mim_best.pth): a dict with "
                "'model_state_dict' whose keys start with 'nnunet.' or 'module.nnunet.'",
    detect=_liu2026_detect,
    convert=_liu2026_convert,
))


# ------------------------------------------------------------------------------------- petct-foundation
def _ours_detect(obj: Any) -> bool:
    return isinstance(obj, Mapping) and obj.get("format") == FORMAT and "network_weights" in obj


def _ours_convert(obj: Mapping[str, Any], source: Mapping[str, Any]) -> dict:
    plan = obj.get("nnssl_adaptation_plan") or {}
    plans = plan.get("pretrain_plan")
    configuration = plan.get("configuration")
    if not isinstance(plans, Mapping) or configuration not in (plans.get("configurations") or {}):
        raise WeightsImportError("petct-foundation: the adaptation plan lacks the pretraining plans or the trained "
                                 "configuration; the file cannot be rewritten")
    metadata = dict(obj.get("petct_metadata") or {})
    old = obj.get("format_version")
    changes = [f"adaptation plan rebuilt (format version {old} -> {FORMAT_VERSION}): only the trained "
               f"configuration, module keys from the built network"]
    history = list(metadata.get("import_history") or [])
    if "import" in metadata:
        history.append(metadata["import"])
    metadata["import_history"] = history
    metadata["import"] = _provenance(source, changes, source_format_version=old)
    ckpt = build_foundation_checkpoint(obj["network_weights"], plans, configuration,
                                       int(plan.get("pretrain_num_input_channels")), metadata,
                                       plan.get("channel_names"))
    if obj.get("citations"):
        ckpt["citations"] = obj["citations"]
    return ckpt


register_format(SourceFormat(
    name="petct-foundation",
    description=f"a foundation checkpoint of this package (format {FORMAT!r}, any version)",
    detect=_ours_detect,
    convert=_ours_convert,
))
