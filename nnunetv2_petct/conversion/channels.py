"""Channel conventions of a PET/CT nnU-Net dataset: ``_0000`` = CT (HU), ``_0001`` = PET (SUV).

Pure module (no nnunetv2 import). nnU-Net picks the normalization of a channel from its *name*
(``"CT"`` -> dataset-wide clip + z-score, most other names -> per-image z-score), so the names in
``dataset.json`` carry meaning and are checked before any training starts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

CT_NAMES = ("ct",)
PET_KEYWORDS = ("pet", "suv", "fdg", "pt")
DEFAULT_CHANNEL_NAMES = {"0": "CT", "1": "PET"}

#: The named normalization choices of a CT+PET dataset and nnU-Net's scheme per channel (CT, PET); the same
#: names are used by ``nnUNetv2_petct_convert --normalization`` and ``nnUNetv2_petct_paper_plans``:
#:
#: - ``nnunet``: nnU-Net's defaults by channel name: CT dataset-wide percentile clip + z-score, PET z-scored
#:   per image (this package's default);
#: - ``pet-global``: CT-style dataset-wide clip + z-score for PET too (keeps the SUV scale);
#: - ``zscore-both``: both channels z-scored per image, no CT clipping: the authors of the paper (Liu et al.
#:   2026) and upstream nnU-Net's nnssl fine-tuning route.
NORMALIZATION_SCHEMES: dict[str, tuple[str, str]] = {
    "nnunet": ("CTNormalization", "ZScoreNormalization"),
    "pet-global": ("CTNormalization", "CTNormalization"),
    "zscore-both": ("ZScoreNormalization", "ZScoreNormalization"),
}


def normalization_choice(schemes: Sequence[str]) -> str | None:
    """The name in :data:`NORMALIZATION_SCHEMES` of a plans' ``normalization_schemes`` (CT, PET), else None.

    Only the scheme names are compared (nnU-Net's ``use_mask_for_norm`` is a separate setting).
    """
    schemes = tuple(str(s) for s in schemes)
    for name, want in NORMALIZATION_SCHEMES.items():
        if schemes == want:
            return name
    return None


class ChannelOrderError(ValueError):
    """The dataset's channels are not the CT/PET channels a trainer expects."""


def channel_kind(name: str) -> str:
    """``"CT"``, ``"PET"`` or ``"unknown"`` for a ``dataset.json`` channel name (case-insensitive).

    Names count as CT when they are ``CT`` or start with ``CT`` (``CT_HU``); as PET when they contain
    ``PET``, ``SUV``, ``FDG`` or are ``PT``. A name like ``"noNorm"`` is ``"unknown"``.
    """
    n = name.strip().casefold()
    if n in CT_NAMES or n.startswith("ct"):
        return "CT"
    if n == "pt" or any(k in n for k in PET_KEYWORDS if k != "pt"):
        return "PET"
    return "unknown"


def pet_normalized_globally(dataset_json: Mapping) -> bool:
    """True when the converter wrote PET as a second ``"ct"``-named channel on purpose.

    ``nnUNetv2_petct_convert --pet-normalization global`` names the channels ``{"0": "CT", "1": "ct"}``
    (nnU-Net 2.8 gives dataset-wide normalization only to channels named "ct") and records
    ``dataset.json["petct_normalization"]["pet"] == "global"``.
    """
    record = dataset_json.get("petct_normalization") or {}
    return isinstance(record, Mapping) and record.get("pet") == "global"


def check_channels(channel_names: Mapping[str, str], expected: Sequence[str] = ("CT", "PET"),
                   pet_global: bool = False) -> None:
    """Raise :class:`ChannelOrderError` unless the channels are exactly ``expected``, in order.

    ``channel_names`` is ``dataset.json["channel_names"]`` (keys ``"0"``, ``"1"``, ...). The message
    names what was found and how to fix it (the converters write ``{"0": "CT", "1": "PET"}``).
    With ``pet_global`` (see :func:`pet_normalized_globally`) a CT-named channel counts as PET where
    PET is expected.
    """
    try:
        ordered = [channel_names[str(i)] for i in range(len(channel_names))]
    except KeyError as e:
        raise ChannelOrderError(f"dataset.json channel_names must have keys '0'..'{len(channel_names) - 1}', got {dict(channel_names)}") from e
    kinds = [channel_kind(n) for n in ordered]
    if pet_global:
        kinds = ["PET" if (k == "CT" and e == "PET") else k for k, e in zip(kinds, expected)]
    if len(ordered) != len(expected) or kinds != list(expected):
        wanted = ", ".join(f"_{i:04d} = {k}" for i, k in enumerate(expected))
        found = ", ".join(f"_{i:04d} = {n!r} ({k})" for i, (n, k) in enumerate(zip(ordered, kinds)))
        raise ChannelOrderError(
            f"this trainer expects {len(expected)} channel(s) in the order {wanted}; the dataset has {found}. "
            f"Convert the data with nnUNetv2_petct_convert (it writes CT as _0000 and PET as _0001), or fix "
            f"'channel_names' in dataset.json (e.g. {DEFAULT_CHANNEL_NAMES})."
        )
