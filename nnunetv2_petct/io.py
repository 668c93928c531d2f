"""The helpers every part of the package shares: verified atomic writes, JSON, case lists, one process pool.

Pure library (no nnunetv2 or torch import).

Atomic writes
-------------
:func:`atomic_write` is the one way this package commits a file: the content goes to a temporary file
on the same file system, is flushed to disk and **verified** (it exists, is not empty, and — by file
type — a ``.nii.gz`` has a complete gzip stream of the size its header implies, a ``.json`` parses), and
only then replaces the final path with :func:`os.replace`. A failed or short write (disk full, quota,
a library that returns without error after a failed write) raises :class:`WriteError` naming the file;
the final path is never touched then, and the temporary file is removed. :func:`atomic_directory` does the same
for a whole folder of results (staged, every file verified, then one rename).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import gzip
import io
import json
import logging
import math
import multiprocessing
import os
import struct
import sys
import threading
import time
import traceback
import uuid
import zipfile
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from multiprocessing.connection import wait as wait_connections
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class WriteError(OSError):
    """A file could not be written completely (the final path was left untouched).

    ``errno`` is the operating system's error number when the cause was a failed system call (e.g.
    ``errno.ENOSPC``), None when the written file failed verification (truncated, empty, corrupt).
    """


class IncompleteFileError(ValueError):
    """A file on disk is truncated, empty or corrupt (named in the message)."""


class CaseListError(ValueError):
    """A case-list file is missing, empty or malformed."""


# ---------------------------------------------------------------------------------------- verification
def nifti_gz_expected_size(head: bytes) -> int | None:
    """Uncompressed size (bytes) a NIfTI-1/2 header implies: ``vox_offset`` + voxels x bytes per voxel.

    ``head`` holds the first 540+ uncompressed bytes. Returns None when they are not a NIfTI header.
    """
    for endian in "<>":
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348:  # NIfTI-1
            dims = struct.unpack(endian + "8h", head[40:56])
            bitpix = struct.unpack(endian + "h", head[72:74])[0]
            vox_offset = struct.unpack(endian + "f", head[108:112])[0]
        elif len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540:  # NIfTI-2
            dims = struct.unpack(endian + "8q", head[16:80])
            bitpix = struct.unpack(endian + "h", head[14:16])[0]
            vox_offset = struct.unpack(endian + "q", head[168:176])[0]
        else:
            continue
        n = 1
        for d in dims[1:1 + max(0, min(int(dims[0]), 7))]:
            n *= max(int(d), 1)
        return int(vox_offset) + n * max(int(bitpix), 8) // 8
    return None


def check_nifti_gz_complete(path: str | os.PathLike, what: str | None = None) -> None:
    """Raise :class:`IncompleteFileError` if a ``.nii.gz`` file is empty, truncated or its gzip is corrupt.

    ITK's NIfTI reader accepts a truncated ``.nii.gz`` without error (the missing voxels come back as
    zeros), the usual result of an interrupted download or a write on a full disk. Cheap check first:
    the gzip trailer (uncompressed size mod 2**32) must equal the size the NIfTI header implies; only
    when it does not (e.g. a multi-member gzip) is the whole stream decompressed to be sure. Files whose
    start is not a NIfTI-1/2 header are only checked to be readable gzip.

    Args:
        path: the file.
        what: how to name the file in the message (default: its path).
    """
    path = Path(path)
    name = what or str(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise IncompleteFileError(f"cannot read {name}: {e.strerror or e}") from None
    if size == 0:
        raise IncompleteFileError(f"cannot read {name}: the file is empty (0 bytes)")
    try:
        with gzip.open(path, "rb") as f:
            head = f.read(544)
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            isize = struct.unpack("<I", f.read(4))[0]
    except (OSError, EOFError, zlib.error, struct.error) as e:
        raise IncompleteFileError(f"cannot read {name}: not a complete gzip file ({e})") from None
    expected = nifti_gz_expected_size(head)
    if expected is not None and isize == expected % 2**32:
        return
    total = 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                total += len(chunk)
    except (OSError, EOFError, zlib.error) as e:
        raise IncompleteFileError(f"cannot read {name}: truncated or corrupt gzip ({e})") from None
    if expected is not None and total < expected:
        raise IncompleteFileError(f"cannot read {name}: truncated ({total} of {expected} bytes)")


def _check_json(path: Path, what: str) -> None:
    try:
        with open(path, encoding="utf-8") as f:
            json.load(f)
    except (OSError, ValueError) as e:
        raise IncompleteFileError(f"{what}: not complete JSON ({e})") from None


_NEVER_EMPTY = (".pth", ".pt", ".png", ".pdf", ".dcm", ".b2nd", ".npy", ".npz", ".pkl")
_ZIP_CONTAINERS = (".pth", ".pt", ".npz")


def verify_written(path: str | os.PathLike, what: str | None = None) -> None:
    """The default check of :func:`atomic_write`: ``path`` exists; ``.gz`` files are complete gzip (NIfTI:
    of the size the header implies, :func:`check_nifti_gz_complete`), ``.json`` files parse, binary
    formats that are never empty (``.pth``, ``.png``, ``.dcm``, ...) are not empty, and ``.pth``/``.pt``/
    ``.npz`` files in zip format (``torch.save``) have a readable zip central directory. Text files may
    be empty.

    Raises:
        IncompleteFileError: naming ``what`` (default: the path).
    """
    path = Path(path)
    name = what or str(path)
    try:
        size = path.stat().st_size
    except OSError:
        raise IncompleteFileError(f"{name} was not written") from None
    low = path.name.lower()
    if low.endswith(".gz"):
        check_nifti_gz_complete(path, name)
    elif low.endswith(".json"):
        _check_json(path, name)
    elif low.endswith(_NEVER_EMPTY) and size == 0:
        raise IncompleteFileError(f"{name} is empty after writing")
    elif low.endswith(_ZIP_CONTAINERS):
        _check_zip_if_zip(path, name)


def _check_zip_if_zip(path: Path, what: str) -> None:
    """A file that starts like a zip archive (torch.save's format, ``.npz``) must have its central
    directory (written last, so a short write loses it); files in other formats (legacy pickles) pass."""
    with open(path, "rb") as f:
        start = f.read(4)
    if start != b"PK\x03\x04":
        return
    try:
        with zipfile.ZipFile(path) as z:
            z.infolist()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise IncompleteFileError(f"{what} is not a complete zip archive ({e})") from None


def _fsync_file(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ----------------------------------------------------------------------------------- output folders
_ERRNO_HINTS = {
    errno.ENOSPC: "disk full, or no free inodes",
    errno.EDQUOT: "your disk quota is used up",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EMFILE: "raise the limit with `ulimit -n`",
}

#: errno values that concern the whole output folder (every further write would fail the same way).
FATAL_WRITE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
                                errno.ENOTDIR, errno.EMFILE, errno.ENFILE})


def describe_os_error(e: OSError | int) -> str:
    """A short reason for an ``OSError`` (or an errno) in words, without a traceback: the system's
    message plus a hint for the common output-folder problems (``"No space left on device (disk full,
    or no free inodes)"``)."""
    code = e if isinstance(e, int) else e.errno
    text = os.strerror(code) if isinstance(e, int) else str(e.strerror or e)
    hint = _ERRNO_HINTS.get(code)
    return f"{text} ({hint})" if hint else text


def _write_error(message: str, cause: BaseException | None = None) -> WriteError:
    err = WriteError(message)
    err.errno = getattr(cause, "errno", None)
    return err


def disk_space_problem(folder: str | os.PathLike, min_free_bytes: int = 1 << 20) -> str | None:
    """Why nothing can be written to the file system of ``folder`` (its nearest existing parent), or None.

    Uses ``os.statvfs``: fewer than ``min_free_bytes`` available to this user -> "disk full"; no free
    inode (on file systems that count inodes) -> "no free inodes". Not a guarantee in the other
    direction (quotas, a disk filling meanwhile): writes are still verified.
    """
    p = Path(folder)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except (OSError, AttributeError):
        return None
    if st.f_files > 0 and st.f_favail == 0:
        return f"no free inodes on the file system of {p} (no new file can be created)"
    if st.f_bavail * st.f_frsize < min_free_bytes:
        return f"the disk of {p} is full ({st.f_bavail * st.f_frsize} bytes available)"
    return None


def probe_writable_dir(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Make sure files can be written into ``folder`` (created if needed); returns it.

    Checks, once and up front, what would otherwise fail on every file: the path (or a parent) is a
    file, missing permission, a read-only file system, a full disk or no free inodes
    (:func:`disk_space_problem`), too many open files. A small probe file is written atomically and
    removed again.

    Raises:
        WriteError: one line naming ``folder`` and the reason (``errno`` set where the system gave one).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        err = _write_error(f"cannot write to the {what} {folder}: it is a file, not a folder")
        err.errno = errno.ENOTDIR
        raise err
    problem = disk_space_problem(folder)
    if problem:
        err = _write_error(f"cannot write to the {what} {folder}: {problem}")
        err.errno = errno.ENOSPC
        raise err
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError as e:  # a parent is a file
        raise _write_error(f"cannot create the {what} {folder}: a part of the path is a file, not a folder",
                           e) from None
    except OSError as e:
        raise _write_error(f"cannot create the {what} {folder}: {describe_os_error(e)}", e) from None
    probe = folder / f".nnunetv2_petct_write_probe_{os.getpid()}"
    try:
        with atomic_write(probe, verify=None) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"probe")
    except WriteError as e:
        reason = describe_os_error(e.errno) if e.errno else str(e)
        raise _write_error(f"cannot write to the {what} {folder}: {reason}", e) from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return folder


# ------------------------------------------------------------------------------------------- machine
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`), "" when unknown."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or ""


def machine_facts() -> dict:
    """What decides the numbers of a seeded run besides the seed: the same seed on another CPU (or another
    thread count, torch version or GPU) runs other kernels and gives other floating-point results.

    Returns ``platform``, ``python``, ``cpu_model``, ``logical_cores``, ``torch`` (version), ``torch_threads``
    (this process), ``omp_num_threads`` (the environment's ``OMP_NUM_THREADS``, None when unset) and ``gpu``
    (CUDA device name or None). Missing torch leaves its fields None.
    """
    import platform

    facts: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                             "cpu_model": cpu_model(), "logical_cores": os.cpu_count(), "torch": None,
                             "torch_threads": None, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                             "gpu": None}
    try:
        import torch
    except ImportError:
        return facts
    facts.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    with contextlib.suppress(Exception):
        if torch.cuda.is_available():
            facts["gpu"] = torch.cuda.get_device_name(0)
    return facts


# ------------------------------------------------------------------------------------------- writing
def temporary_path(final: str | os.PathLike, tmp_dir: str | os.PathLike | None = None) -> Path:
    """A unique temporary path for ``final``: hidden, next to it, or inside ``tmp_dir`` (which must be on
    the same file system so that :func:`os.replace` is atomic). The file name keeps ``final``'s suffixes
    (libraries choose the format by them, e.g. SimpleITK's ``.nii.gz``)."""
    final = Path(final)
    tag = f"{os.getpid()}_{uuid.uuid4().hex[:8]}"
    if tmp_dir is not None:
        Path(tmp_dir).mkdir(parents=True, exist_ok=True)
        return Path(tmp_dir) / f"{tag}_{final.name}"
    return final.parent / f".tmp_{tag}_{final.name}"


@contextlib.contextmanager
def atomic_write_many(paths: Sequence[str | os.PathLike], *, tmp_dir: str | os.PathLike | None = None,
                      verify: Callable[[Path], None] | None = verify_written) -> Iterator[list[Path]]:
    """Context manager: yields one temporary path per final path; on a clean exit verifies every file, then
    moves them into place in the given order (:func:`os.replace` each). Nothing is moved unless every file
    was written and verified. See :func:`atomic_write` for the arguments and errors."""
    finals = [Path(p) for p in paths]
    tmps: list[Path] = []
    try:
        for final in finals:
            final.parent.mkdir(parents=True, exist_ok=True)
            tmps.append(temporary_path(final, tmp_dir))
    except OSError as e:
        raise _write_error(f"cannot write {finals[len(tmps)]}: {describe_os_error(e)}", e) from None
    try:
        try:
            yield list(tmps)
        except WriteError:
            raise
        except OSError as e:
            raise _write_error(f"cannot write {', '.join(map(str, finals))}: {describe_os_error(e)}", e) from e
        current = finals[0]
        try:
            for tmp, final in zip(tmps, finals):
                current = final
                _fsync_file(tmp)
                if verify is not None:
                    verify(tmp)
            for tmp, final in zip(tmps, finals):
                current = final
                os.replace(tmp, final)
        except IncompleteFileError as e:
            raise WriteError(f"writing {current} failed: {e} (disk full?)") from None
        except OSError as e:
            raise _write_error(f"cannot write {current}: {describe_os_error(e)}", e) from None
    finally:
        for tmp in tmps:
            with contextlib.suppress(OSError):
                if tmp.exists():
                    tmp.unlink()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, tmp_dir: str | os.PathLike | None = None,
                 verify: Callable[[Path], None] | None = verify_written) -> Iterator[Path]:
    """Context manager: yields a temporary path to write to; on a clean exit verifies it and moves it to ``path``.

    Example::

        with atomic_write(out / "case_0000.nii.gz", tmp_dir=out / ".partial") as tmp:
            sitk.WriteImage(image, str(tmp), True)

    Args:
        path: the final file; its folder is created.
        tmp_dir: where the temporary file lives (default: hidden, next to ``path``); same file system.
        verify: ``verify(tmp)`` raises if the written file is not complete (default :func:`verify_written`);
            None skips verification.

    Raises:
        WriteError: the body or the verification failed for a reason of the file system (disk full,
            permission, no inodes) or the written file is incomplete; ``path`` is left as it was.
        Other exceptions of the body propagate unchanged; the temporary file is removed in every case.
    """
    with atomic_write_many([path], tmp_dir=tmp_dir, verify=verify) as (tmp,):
        yield tmp


#: The file that marks a folder as this tool's staging or work folder: written first into every staging
#: folder of :func:`atomic_directory` (removed just before the folder is renamed into place) and into work
#: folders. Leftovers of a killed run are recognised by this marker and the writer's process id in it,
#: never by a folder name (a DICOM PatientID can produce any name, e.g. ``.tmp_99999``).
STAGING_MARKER = ".nnunetv2_petct_staging"


def mark_staging(folder: str | os.PathLike) -> Path:
    """Write :data:`STAGING_MARKER` (holding this process's id) into ``folder``; returns the marker path."""
    marker = Path(folder) / STAGING_MARKER
    marker.write_text(f"{os.getpid()}\n")
    return marker


def staging_owner_pid(folder: str | os.PathLike) -> int | None:
    """The process id in ``folder``'s :data:`STAGING_MARKER`, or None when ``folder`` has no readable marker
    (then it is not ours to remove: a result folder, whatever its name)."""
    try:
        text = (Path(folder) / STAGING_MARKER).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, overwrite: bool = False, tmp_dir: str | os.PathLike | None = None,
                     verify: Callable[[Path], None] | None = verify_written) -> Iterator[Path]:
    """Context manager: yields an empty staging folder; on a clean exit verifies every file in it, then
    renames the folder to ``path`` (one :func:`os.rename`: a reader sees either no folder or all of it).

    Example::

        with atomic_directory(out / "study_1", overwrite=True) as stage:
            (stage / "report.json").write_text("{}")
            sitk.WriteImage(mask, str(stage / "mask.nii.gz"), True)

    Args:
        path: the final folder; its parent is created.
        overwrite: replace an existing ``path``: the old folder is renamed aside, the new one renamed in,
            then the old one removed (if the process dies in between, the old results stay under a hidden
            ``.old_*`` name next to ``path``; they are never half-replaced). Without it an existing
            ``path`` raises :class:`FileExistsError` before anything is written.
        tmp_dir: parent of the staging folder (default: ``path``'s parent, hidden ``.tmp_*`` name); must be on
            the same file system. The staging folder holds :data:`STAGING_MARKER` until it is renamed.
        verify: called on every file in the staging folder (default :func:`verify_written`); None skips it.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        WriteError: the file system refused (disk full, permission) or a staged file is incomplete;
            ``path`` is left as it was.
        Other exceptions of the body propagate unchanged. The staging folder is removed in every case.
    """
    import shutil

    final = Path(path)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists (overwrite not requested)")
    tag = f"{os.getpid()}_{uuid.uuid4().hex[:8]}"
    parent = Path(tmp_dir) if tmp_dir is not None else final.parent
    stage = parent / f".tmp_{tag}_{final.name}"
    try:
        stage.mkdir(parents=True)
        mark_staging(stage)
    except OSError as e:
        raise _write_error(f"cannot write {final}: {describe_os_error(e)}", e) from None
    try:
        try:
            yield stage
        except WriteError:
            raise  # already names its file and keeps its errno
        except OSError as e:
            raise _write_error(f"cannot write {final}: {describe_os_error(e)}", e) from e
        current = stage
        try:
            (stage / STAGING_MARKER).unlink(missing_ok=True)
            for f in sorted(p for p in stage.rglob("*") if p.is_file()):
                current = f
                _fsync_file(f)
                if verify is not None:
                    verify(f)
            old = None
            if final.exists():
                old = final.parent / f".old_{tag}_{final.name}"
                os.rename(final, old)
            current = final
            try:
                os.rename(stage, final)
            except OSError:
                if old is not None:  # put the old results back
                    with contextlib.suppress(OSError):
                        os.rename(old, final)
                raise
            _fsync_file(final.parent)
        except IncompleteFileError as e:
            raise WriteError(f"writing {final} failed: {e} (disk full?)") from None
        except OSError as e:
            raise _write_error(f"cannot write {current}: {describe_os_error(e)}", e) from None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def csv_text(rows: Sequence[Mapping], columns: Sequence[str], cell: Callable[[Any], Any] | None = None) -> str:
    """CSV text of ``rows`` in ``columns`` order, with a header line and ``\n`` line ends. A missing key or
    None is an empty cell; ``cell`` converts every other value (default: written as is)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        values = (r.get(c) for c in columns)
        w.writerow(["" if v is None else (cell(v) if cell is not None else v) for v in values])
    return buf.getvalue()


def write_text_atomic(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and verified (see :func:`atomic_write`)."""
    path = Path(path)
    with atomic_write(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    return path


def write_bytes_atomic(data: bytes, path: str | os.PathLike) -> Path:
    """Write ``data`` to ``path`` atomically and verified (see :func:`atomic_write`)."""
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)
    return path


def describe_itk_error(e: BaseException) -> str:
    """The reason in a SimpleITK/ITK exception in words, without ITK's source-file paths and line numbers
    (``"not an image file ITK can read (unknown format, or the file is corrupt)"``)."""
    import re

    text = str(e)
    if "Unable to determine ImageIO reader" in text:
        return "not an image file ITK can read (unknown format, or the file is corrupt)"
    text = re.sub(r"\S+\.(?:cxx|cpp|hxx|txx|h):\d+:?", "", text)
    text = re.sub(r"Exception thrown in SimpleITK \w+:", "", text)
    text = re.sub(r"(?:sitk|itk)::ERROR:|ITK ERROR:", "", text)
    text = " ".join(text.split())
    return text[:200] or type(e).__name__


# ---------------------------------------------------------------------------------------------- JSON
def jsonable(obj: Any, *, nan_as_null: bool = False) -> Any:
    """``obj`` with every value JSON-serializable: numpy scalars become Python numbers, tuples lists,
    paths and unknown types their ``str``; with ``nan_as_null`` non-finite floats become None (strict JSON)."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v, nan_as_null=nan_as_null) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v, nan_as_null=nan_as_null) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "shape", None) == ():
        obj = obj.item()  # numpy / torch scalars
        if isinstance(obj, (bool, int, str)):
            return obj
    if isinstance(obj, float):
        return None if nan_as_null and not math.isfinite(obj) else float(obj)
    return str(obj)


def write_json_atomic(obj: Any, path: str | os.PathLike, *, indent: int | None = 2,
                      nan_as_null: bool = False) -> Path:
    """Write ``obj`` as JSON (made :func:`jsonable`) to ``path`` atomically and verified.

    With ``nan_as_null`` NaN/inf are written as ``null`` (strict JSON); otherwise as ``NaN``/``Infinity``
    (Python's JSON extension, which ``json.load`` reads back).
    """
    text = json.dumps(jsonable(obj, nan_as_null=nan_as_null), indent=indent, allow_nan=not nan_as_null)
    return write_text_atomic(text + "\n", path)


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """``json.load`` with an :class:`IncompleteFileError` naming the file when it is missing or corrupt."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise IncompleteFileError(f"{what} {path} not found") from None
    except (OSError, ValueError) as e:
        raise IncompleteFileError(f"{what} {path} cannot be read: {e}") from None


# ----------------------------------------------------------------------------------------- case lists
def read_case_list(path: str | os.PathLike) -> list[str]:
    """Case ids from a file: text (one per line; blank lines and ``#`` comments ignored), a JSON list, or
    a CSV with a ``case_id`` column. File endings ``.nii.gz`` and channel suffixes ``_0000``/``_0001``
    are removed, so a list of image file names works too.

    Returns:
        The distinct ids, sorted.

    Raises:
        CaseListError: the file is missing, holds no id, or is a CSV without ``case_id``.
    """
    p = Path(path)
    if not p.is_file():
        raise CaseListError(f"case list {p} not found")
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".json":
        try:
            items = json.loads(text)
        except ValueError as e:
            raise CaseListError(f"{p}: not valid JSON ({e})") from None
        if not isinstance(items, list):
            raise CaseListError(f"{p}: a JSON case list must be a list of ids")
    elif p.suffix.lower() == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        if not rows or "case_id" not in rows[0]:
            raise CaseListError(f"{p}: a CSV case list needs a 'case_id' column")
        items = [r["case_id"] for r in rows]
    else:
        items = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    out = set()
    for it in items:
        it = str(it).strip().removesuffix(".nii.gz")
        if it.endswith(("_0000", "_0001")):
            it = it[:-5]
        if it:
            out.add(it)
    if not out:
        raise CaseListError(f"{p}: no case ids")
    return sorted(out)


# ------------------------------------------------------------------------------------------ formatting
def fmt_number(v: Any, digits: int = 3, style: str = "f") -> str:
    """A table cell: ``n/a`` for None, empty strings and non-finite numbers; floats with ``digits``
    (``style`` ``"f"``: fixed decimals, ``"g"``: significant digits); anything else as ``str``."""
    if v is None or v == "":
        return "n/a"
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            return v
    if isinstance(v, bool) or (isinstance(v, int) and style == "g"):
        return str(v)
    try:
        x = float(v)
    except (TypeError, ValueError):
        return str(v)
    if not math.isfinite(x):
        return "n/a"
    if isinstance(v, int):
        return str(v)
    return f"{x:.{digits}{style}}"


# ---------------------------------------------------------------------------------------- process pool
class WorkerCrashed(RuntimeError):
    """The worker process running a task died (out of memory, segfault, killed) before returning."""


class TaskError(RuntimeError):
    """A task raised in a worker process; ``remote_traceback`` holds the worker's traceback text."""

    def __init__(self, message: str, remote_traceback: str = ""):
        super().__init__(message)
        self.remote_traceback = remote_traceback


_PARENT_POLL_S = 0.5


def _watch_parent(parent_pid: int) -> None:
    """Worker thread: end the worker as soon as its parent is gone (kill -9 of the parent included)."""
    while True:
        if os.getppid() != parent_pid:
            os._exit(3)
        time.sleep(_PARENT_POLL_S)


def _worker_main(conn, parent_pid: int) -> None:
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        index, func, args = msg
        try:
            reply = (index, True, func(*args))
        except BaseException as e:  # noqa: BLE001 - reported to the parent, which decides
            reply = (index, False, (f"{type(e).__name__}: {e}", traceback.format_exc(), e))
        try:
            conn.send(reply)
        except Exception as e:  # noqa: BLE001 - the result or the exception did not pickle
            detail = reply[2][1] if not reply[1] else ""
            conn.send((index, False, (f"result of the task could not be sent back: {type(e).__name__}: {e}",
                                      detail, None)))


class _Worker:
    def __init__(self, ctx):
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child, os.getpid()), daemon=True)
        self.proc.start()
        child.close()
        self.task: int | None = None

    def stop(self, timeout: float = 5.0) -> None:
        with contextlib.suppress(Exception):
            self.conn.send(None)
        self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(1.0)
        with contextlib.suppress(Exception):
            self.conn.close()


def run_parallel(func: Callable, tasks: Sequence[tuple], num_processes: int = 1, desc: str = "",
                 quiet: bool = False, on_crash: Callable[[tuple, BaseException], Any] | None = None,
                 unit: str = "case") -> Iterator:
    """Yield ``func(*task)`` for each task, in completion order, with a tqdm progress bar on stderr.

    ``num_processes > 1`` runs the tasks in that many ``spawn`` worker processes, one task at a time
    each (``func`` must be importable at module level; tasks and results picklable). The pool is built
    so that it cannot hurt the other tasks or outlive its parent:

    - a worker that dies (out of memory, segfault, kill) fails only the task it held, with
      :class:`WorkerCrashed`; a new worker takes over and every other task still runs;
    - an exception raised by ``func`` fails only its task, as :class:`TaskError` (with the worker's
      traceback);
    - workers end when the parent process is gone, even after ``kill -9`` of the parent (each polls
      its parent id); closing the generator early terminates them.

    ``on_crash(task, exc)`` turns such a failure into a result; when it is None the failure is raised
    (in-process runs re-raise the original exception).
    """
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), desc=desc, disable=quiet, file=sys.stderr, unit=unit, dynamic_ncols=True)
    try:
        if num_processes <= 1 or len(tasks) <= 1:
            for task in tasks:
                try:
                    result = func(*task)
                except Exception as e:  # noqa: BLE001 - on_crash decides
                    if on_crash is None:
                        raise
                    result = on_crash(task, e)
                yield result
                bar.update(1)
            return
        yield from _run_pool(func, tasks, min(num_processes, len(tasks)), on_crash, bar)
    finally:
        bar.close()


def _run_pool(func: Callable, tasks: Sequence[tuple], n_workers: int, on_crash, bar) -> Iterator:
    ctx = multiprocessing.get_context("spawn")
    pending = deque(range(len(tasks)))
    workers: list[_Worker] = []

    def fail(index: int, exc: BaseException):
        if on_crash is None:
            raise exc
        return on_crash(tasks[index], exc)

    try:
        workers = [_Worker(ctx) for _ in range(n_workers)]
        while pending or any(w.task is not None for w in workers):
            for w in workers:
                while w.task is None and pending:
                    index = pending.popleft()
                    try:
                        w.conn.send((index, func, tasks[index]))
                        w.task = index
                    except (BrokenPipeError, EOFError, OSError):  # the idle worker is gone: replace it
                        pending.appendleft(index)
                        w.stop(0.1)
                        workers[workers.index(w)] = w = _Worker(ctx)
                    except Exception as e:  # noqa: BLE001 - the task cannot be pickled
                        yield fail(index, e)
                        bar.update(1)
            busy = [w for w in workers if w.task is not None]
            if not busy:
                continue
            ready = wait_connections([w.conn for w in busy] + [w.proc.sentinel for w in busy])
            for w in busy:
                if w.task is None:
                    continue
                got = None
                if w.conn in ready or w.proc.sentinel in ready:
                    with contextlib.suppress(EOFError, OSError):
                        if w.conn.poll():
                            got = w.conn.recv()
                if got is not None:
                    index, ok, payload = got
                    w.task = None
                    if ok:
                        yield payload
                    else:
                        message, tb, original = payload
                        exc = TaskError(message, tb)
                        if original is not None:
                            exc.__cause__ = original
                        yield fail(index, exc)
                    bar.update(1)
                elif w.conn in ready or w.proc.sentinel in ready:  # EOF on the pipe or the process ended
                    index, w.task = w.task, None
                    w.proc.join(2.0)
                    code = w.proc.exitcode
                    logger.warning("worker process %s died (exit code %s) while running task %d",
                                   w.proc.pid, code, index)
                    w.stop(0.1)
                    workers[workers.index(w)] = _Worker(ctx)
                    yield fail(index, WorkerCrashed(f"the worker process died (exit code {code}) while "
                                                    f"running this task; the other tasks were not affected"))
                    bar.update(1)
    finally:
        for w in workers:
            if w.task is not None:  # closed early: do not wait for running tasks
                w.proc.kill()
            w.stop(1.0)
