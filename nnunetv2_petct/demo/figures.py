"""The demo report's training-curve figure: validation pseudo-Dice against training iteration, per method.

nnU-Net logs, once per epoch, the mean foreground pseudo-Dice of its validation batches
(``mean_fg_dice``) and its exponential moving average (``ema_fg_dice``, factor 0.9); both are in the
``logging`` entry of every checkpoint it writes. For a short run this is the most telling curve: it
shows how soon each method leaves the all-background state (pseudo-Dice 0) where nnU-Net's Dice+CE loss
starts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

METHOD_COLORS = {"pretrained": "tab:red", "scratch": "tab:blue", "nnunet_default": "tab:orange",
                 "probe": "tab:green"}


def read_training_log(checkpoint: str | os.PathLike) -> dict[str, list[float]]:
    """The per-epoch ``logging`` dict nnU-Net stores in a checkpoint (``mean_fg_dice``, ``ema_fg_dice``,
    ``train_losses``, ``val_losses``, ``lrs``, timestamps), as lists of floats.

    Raises:
        FileNotFoundError: no such checkpoint.
        KeyError: the checkpoint has no ``logging`` entry (not written by an nnU-Net trainer).
    """
    from nnunetv2_petct.transfer.weights import read_checkpoint_safely

    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = read_checkpoint_safely(path, allow_numpy_scalars=True)  # never unpickles code
    log = ckpt["logging"]
    out = {}
    for key, values in log.items():
        try:
            out[key] = [float(v) for v in values]
        except (TypeError, ValueError):
            continue  # e.g. dice_per_class_or_region: one list per epoch
    return out


def iterations_axis(n_epochs: int, iterations_per_epoch: int) -> list[int]:
    """Training iterations done at the end of each epoch: ``[k, 2k, ..., n*k]`` (the pseudo-Dice of an
    epoch is measured after its ``k`` iterations)."""
    return [(e + 1) * int(iterations_per_epoch) for e in range(int(n_epochs))]


def first_iteration_above(iterations: Sequence[int], values: Sequence[float], threshold: float) -> int | None:
    """The first iteration whose value exceeds ``threshold`` (e.g. when the EMA pseudo-Dice leaves 0), or None."""
    for it, v in zip(iterations, values):
        if v > threshold:
            return int(it)
    return None


def plot_pseudo_dice_curves(curves: Mapping[str, Mapping[str, Sequence[float]]], out_png: str | os.PathLike,
                            title: str = "Validation pseudo-Dice during training", subtitle: str = "") -> Path:
    """One line per method: the EMA pseudo-Dice (bold) over the per-epoch value (thin), against iteration.

    ``curves``: ``{label: {"iterations", "mean_fg_dice", "ema_fg_dice"}}`` (equal lengths; a method named
    in :data:`METHOD_COLORS` keeps its colour). Returns the PNG path.

    Raises:
        ValueError: no curve, or a curve whose lists differ in length.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not curves:
        raise ValueError("no curve to plot")
    fig = Figure(figsize=(7.5, 4.6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    others = iter(["tab:purple", "tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan"])
    top = 0.0
    for label, c in curves.items():
        its, raw, ema = list(c["iterations"]), list(c["mean_fg_dice"]), list(c["ema_fg_dice"])
        if not (len(its) == len(raw) == len(ema)):
            raise ValueError(f"curve {label!r}: {len(its)} iterations, {len(raw)} values, {len(ema)} EMA values")
        color = METHOD_COLORS.get(str(c.get("method", label)), None) or next(others)
        ax.plot(its, raw, color=color, alpha=0.3, linewidth=1)
        ax.plot(its, ema, color=color, linewidth=2.2, label=label)
        top = max([top, *[v for v in raw + ema if v == v]])
    ax.set_xlabel("training iteration")
    ax.set_ylabel("validation pseudo-Dice")
    ax.set_ylim(-0.02, max(0.2, min(1.0, top * 1.15)))
    ax.set_xlim(left=0)
    ax.grid(True, alpha=0.3)
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.legend(loc="upper left", fontsize=9, frameon=False)
    ax.set_title(title + (f"\n{subtitle}" if subtitle else ""), fontsize=10)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
