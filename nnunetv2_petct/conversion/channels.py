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


#: Environment variable: ``1`` turns a failed channel *content* check into a logged warning (for unusual
#: data the rules of :func:`channel_content_problems` misjudge).
CHANNEL_CONTENT_OVERRIDE_ENV = "NNUNETV2_PETCT_SKIP_CHANNEL_CONTENT_CHECK"
#: HU below this occur in fat (-100), lung (-800) and air (-1000); PET (SUV, Bq/ml, counts) is
#: non-negative up to reconstruction noise and never reaches it.
PET_MIN_PLAUSIBLE_P00_5 = -100.0
#: A PET minimum below this is tissue HU (fat), not noise around 0.
PET_MIN_PLAUSIBLE_MIN = -50.0


def channel_content_problems(properties: Mapping[str, Mapping], expected: Sequence[str] = ("CT", "PET")
                             ) -> tuple[list[str], list[str]]:
    """Does each channel's *content* match its role? ``(problems, notes)`` from nnU-Net's dataset
    fingerprint, ``dataset_fingerprint.json["foreground_intensity_properties_per_channel"]`` (per channel:
    ``min``, ``max``, ``percentile_00_5``, ``percentile_99_5`` ... over foreground voxels).

    The foreground is whatever the labels mark: lesions (lesion datasets) or the body (pretraining
    sets), so the rules must hold for lesion voxels alone, which can be entirely soft tissue in CT
    (0-100 HU, contrast-enhanced higher) and anything non-negative in PET:

    1. A PET channel must not be HU-like: its 0.5th percentile must be >= -100 (fat, lung and air are
       below; PET values are >= 0 up to noise).
    2. The CT channel must not be the non-negative one of the pair: a CT channel without any negative
       value (min >= 0) next to a "PET" channel reaching below -50 (fat, not reconstruction noise, which
       stays within a few SUV/counts of 0) means the two are swapped.

    A CT channel without negative values next to a non-negative PET (e.g. only contrast-enhanced
    lesions, or a CT stored with an offset) cannot be judged from these statistics: that gives a note,
    not a problem. Channels without statistics are skipped.
    """
    problems: list[str] = []
    notes: list[str] = []

    def stat(i: int, key: str) -> float | None:
        props = properties.get(str(i)) or {}
        v = props.get(key)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    ct = [i for i, k in enumerate(expected) if k == "CT"]
    pet = [i for i, k in enumerate(expected) if k == "PET"]
    for i in pet:
        p005, lo = stat(i, "percentile_00_5"), stat(i, "min")
        if p005 is not None and p005 < PET_MIN_PLAUSIBLE_P00_5:
            problems.append(f"channel {i} (_{i:04d}, PET) has HU-like values: 0.5 % of its foreground voxels are "
                            f"below {p005:g} (min {lo:g}); PET (SUV, Bq/ml, counts) is never below "
                            f"{PET_MIN_PLAUSIBLE_P00_5:g}")
    for c in ct:
        lo_c, hi_c = stat(c, "min"), stat(c, "max")
        if lo_c is None or lo_c < 0:
            continue
        negative_pet = [i for i in pet if (stat(i, "min") or 0.0) < PET_MIN_PLAUSIBLE_MIN]
        if negative_pet:
            i = negative_pet[0]
            problems.append(f"channel {c} (_{c:04d}, CT) has no negative value in the foreground (range {lo_c:g}.."
                            f"{hi_c:g}) while channel {i} (_{i:04d}, PET) has (min {stat(i, 'min'):g}): "
                            f"the two look swapped")
        else:
            notes.append(f"channel {c} (_{c:04d}, CT) has no negative value in the foreground (range {lo_c:g}.."
                         f"{hi_c:g}): fine for contrast-enhanced lesions, but check that _{c:04d} is CT in HU")
    return problems, notes


def channel_content_message(problems: Sequence[str], fingerprint_file: str) -> str:
    """The fix-it message of a failed content check."""
    return (
        "the dataset's channel contents do not match their names (from " + fingerprint_file + "):\n  - "
        + "\n  - ".join(problems)
        + "\nThe trainers expect _0000 = CT in HU and _0001 = PET (SUV or counts). Reconvert the data with "
        "nnUNetv2_petct_convert (it writes CT as _0000 and PET as _0001), or rename the image files so the "
        "channel numbers match, then rerun nnUNetv2_plan_and_preprocess. If the data really are like this, "
        f"set {CHANNEL_CONTENT_OVERRIDE_ENV}=1 (the check is then logged, not enforced)."
    )
