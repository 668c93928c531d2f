"""The autoPET IV click format: ``{"tumor": [[x, y, z], ...], "background": [[x, y, z], ...]}``.

Clicks are voxel indices of the PET image in (x, y, z) order, as the challenge gives them (x varies fastest
in the file; a numpy array read by SimpleITK is indexed ``[z, y, x]``). Up to 10 of each kind in the
challenge; any number here unless ``max_per_kind`` is given.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

KINDS = ("tumor", "background")
Point = tuple[int, int, int]


class ClickFileError(ValueError):
    """A click file or click that cannot be used; the message names the file and the click."""


def _point(value, kind: str, index: int, source: str) -> Point:
    where = f"{source}: {kind} click {index} {json.dumps(value) if _jsonable(value) else repr(value)}"
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise ClickFileError(f"{where}: a click is a list of three voxel indices [x, y, z]")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ClickFileError(f"{where}: voxel indices must be non-negative integers")
        if isinstance(v, float) and not (math.isfinite(v) and v.is_integer()):
            raise ClickFileError(f"{where}: voxel indices must be non-negative integers (got {v})")
        if v < 0:
            raise ClickFileError(f"{where}: voxel indices must be non-negative integers (got {v})")
        out.append(int(v))
    return (out[0], out[1], out[2])


def _jsonable(v) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False


def _from_multiple_points(obj: Mapping, source: str) -> dict:
    """grand-challenge's "Multiple points" object (the autoPET IV container's ``lesion-clicks.json``:
    ``{"points": [{"name": "tumor"|"background", "point": [x, y, z]}, ...]}``) as the plain object."""
    plain: dict[str, list] = {kind: [] for kind in KINDS}
    points = obj["points"]
    if not isinstance(points, list):
        raise ClickFileError(f"{source}: 'points' must be a list, got {type(points).__name__}")
    for i, p in enumerate(points, 1):
        if not isinstance(p, Mapping) or "name" not in p or "point" not in p:
            raise ClickFileError(f"{source}: point {i} ({p!r}): needs 'name' (tumor or background) and 'point'")
        name = str(p["name"]).strip().lower()
        if name not in plain:
            raise ClickFileError(f"{source}: point {i}: name {p['name']!r} is neither 'tumor' nor 'background'")
        plain[name].append(p["point"])
    return plain


@dataclass(frozen=True)
class Clicks:
    """Tumor and background clicks, voxel indices (x, y, z) of the PET image, in the order given."""

    tumor: tuple[Point, ...] = ()
    background: tuple[Point, ...] = ()

    @property
    def n_tumor(self) -> int:
        return len(self.tumor)

    @property
    def n_background(self) -> int:
        return len(self.background)

    @property
    def is_empty(self) -> bool:
        return not self.tumor and not self.background

    def first(self, k: int) -> Clicks:
        """The first ``k`` clicks of each kind (autoPET IV: prediction k sees k tumor and k background clicks)."""
        k = max(int(k), 0)
        return Clicks(self.tumor[:k], self.background[:k])

    def add(self, kind: str, xyz: Sequence[int]) -> Clicks:
        """A new :class:`Clicks` with one more click of ``kind`` ('tumor' or 'background').

        Raises:
            ClickFileError: unknown kind or not three non-negative integers.
        """
        if kind not in KINDS:
            raise ClickFileError(f"click kind must be 'tumor' or 'background', got {kind!r}")
        p = _point([int(v) if isinstance(v, np.integer) else v for v in xyz], kind,
                   len(getattr(self, kind)) + 1, "click")
        if kind == "tumor":
            return Clicks(self.tumor + (p,), self.background)
        return Clicks(self.tumor, self.background + (p,))

    def to_json(self) -> dict:
        return {"tumor": [list(p) for p in self.tumor], "background": [list(p) for p in self.background]}

    @classmethod
    def from_json(cls, obj, source: str = "clicks") -> Clicks:
        """Validate the autoPET IV object (a missing kind = no click of it), or grand-challenge's "Multiple
        points" object of the challenge container (``{"points": [{"name", "point"}, ...]}``).

        Raises:
            ClickFileError: not an object, other keys, a kind that is not a list, a click that is not three
                non-negative integers (integral floats such as ``3.0`` are accepted; ``3.5``, ``-1``, ``true``
                are not). The message names the click (kind and 1-based position).
        """
        if not isinstance(obj, Mapping):
            raise ClickFileError(f"{source}: expected an object {{\"tumor\": [...], \"background\": [...]}}, "
                                 f"got {type(obj).__name__}")
        if "points" in obj:
            obj = _from_multiple_points(obj, source)
        other = sorted(set(obj) - set(KINDS))
        if other:
            raise ClickFileError(f"{source}: unknown key(s) {', '.join(map(repr, other))}; a click file has "
                                 "only 'tumor' and 'background'")
        kinds = {}
        for kind in KINDS:
            values = obj.get(kind, [])
            if values is None:
                values = []
            if not isinstance(values, list):
                raise ClickFileError(f"{source}: {kind!r} must be a list of [x, y, z], got {type(values).__name__}")
            kinds[kind] = tuple(_point(v, kind, i, source) for i, v in enumerate(values, 1))
        return cls(kinds["tumor"], kinds["background"])

    def tumor_zyx(self) -> np.ndarray:
        """Tumor clicks as an (n, 3) int64 array in numpy (z, y, x) order."""
        return np.asarray([p[::-1] for p in self.tumor], dtype=np.int64).reshape(-1, 3)

    def background_zyx(self) -> np.ndarray:
        """Background clicks as an (n, 3) int64 array in numpy (z, y, x) order."""
        return np.asarray([p[::-1] for p in self.background], dtype=np.int64).reshape(-1, 3)


def check_clicks_in_image(clicks: Clicks, shape_zyx: Sequence[int], source: str = "clicks") -> None:
    """Raise :class:`ClickFileError` naming the first click outside an image of ``shape_zyx`` (numpy order).

    The message gives the image size in the click order (x, y, z)."""
    size_xyz = tuple(int(s) for s in shape_zyx)[::-1]
    for kind in KINDS:
        for i, p in enumerate(getattr(clicks, kind), 1):
            if any(not (0 <= v < s) for v, s in zip(p, size_xyz)):
                raise ClickFileError(f"{source}: {kind} click {i} {list(p)} is outside the PET image "
                                     f"(size x, y, z = {list(size_xyz)}; indices 0 .. size-1)")


def read_clicks(path: str | os.PathLike, shape_zyx: Sequence[int] | None = None,
                max_per_kind: int | None = None) -> Clicks:
    """Read a click file.

    Raises:
        ClickFileError: unreadable file, malformed JSON (position named), a bad click (named), more than
            ``max_per_kind`` clicks of a kind, or (with ``shape_zyx``) a click outside the image.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ClickFileError(f"{path}: cannot read the click file ({e})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ClickFileError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    clicks = Clicks.from_json(obj, source=str(path))
    if max_per_kind is not None:
        for kind in KINDS:
            n = len(getattr(clicks, kind))
            if n > max_per_kind:
                raise ClickFileError(f"{path}: {n} {kind} clicks, at most {max_per_kind} allowed")
    if shape_zyx is not None:
        check_clicks_in_image(clicks, shape_zyx, source=str(path))
    return clicks


def write_clicks(path: str | os.PathLike, clicks: Clicks) -> Path:
    """Write ``clicks`` as autoPET IV JSON, atomically (:func:`nnunetv2_petct.io.write_json_atomic`)."""
    from nnunetv2_petct.io import write_json_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json_atomic(clicks.to_json(), path, indent=None)


def read_click_folder(folder: str | os.PathLike, case_ids: Sequence[str]) -> dict[str, Clicks]:
    """``<case>.json`` for every case of ``case_ids`` in ``folder``.

    Raises:
        ClickFileError: no such folder, cases without a file (listed; an empty click list is written
            ``{"tumor": [], "background": []}``), ``.json`` files that match no case (listed: a typo in a name
            would otherwise silently give no clicks), or a bad file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ClickFileError(f"{folder}: no such click folder")
    files = {p.name[: -len(".json")]: p for p in folder.glob("*.json")}
    cases = [str(c) for c in case_ids]
    missing = [c for c in cases if c not in files]
    extra = sorted(set(files) - set(cases))
    if missing:
        raise ClickFileError(f"{folder}: no click file for {len(missing)} case(s): "
                             f"{', '.join(m + '.json' for m in missing[:5])}{' ...' if len(missing) > 5 else ''} "
                             "(no clicks: write {\"tumor\": [], \"background\": []})")
    if extra:
        raise ClickFileError(f"{folder}: click file(s) for no case of the run: "
                             f"{', '.join(e + '.json' for e in extra[:5])}{' ...' if len(extra) > 5 else ''} "
                             f"(cases: {', '.join(cases[:5])}{' ...' if len(cases) > 5 else ''})")
    return {c: read_clicks(files[c]) for c in cases}


__all__ = ["KINDS", "ClickFileError", "Clicks", "check_clicks_in_image", "read_click_folder", "read_clicks",
           "write_clicks"]
