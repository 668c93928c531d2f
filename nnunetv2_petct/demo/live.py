"""Run the demo's commands as subprocesses with live progress: ``epoch x/N`` of each training run, the
latest validation pseudo-Dice and the elapsed time, on one status line (a terminal) or as periodic lines
(a log or a pipe). Several commands can run side by side (the demo's independent training runs).

Progress is read from the commands' own output: nnU-Net's trainers print ``<timestamp>: Epoch N`` at
the start of each epoch and ``<timestamp>: Pseudo dice [...]`` after each validation.
"""

from __future__ import annotations

import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

EPOCH_RE = re.compile(r": Epoch (\d+)\s*$")
PSEUDO_DICE_RE = re.compile(r": Pseudo dice \[(.*)\]\s*$")
MASKED_R2_RE = re.compile(r": masked R2 vs zero imputation \{(.*)\}\s*$")
_FLOAT_RE = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


@dataclass
class Job:
    """One command: ``cmd`` is what runs, ``label`` what the status line calls it, ``total_epochs`` the
    trainer's number of epochs (None: not a training run)."""

    cmd: list[str]
    label: str
    log_file: Path
    total_epochs: int | None = None
    env: dict[str, str] | None = None
    # filled while running
    epoch: int | None = None
    metric: str = ""
    returncode: int | None = None
    started: float = field(default=0.0)
    finished: float | None = None


def parse_progress(line: str) -> tuple[int | None, str | None]:
    """``(epoch, metric)`` from one line of nnU-Net training output; None where the line has neither.

    ``Epoch N`` (0-based in nnU-Net's output) gives ``N``; ``Pseudo dice [np.float32(0.31), ...]`` gives
    ``"pseudo-Dice 0.31"`` (the mean of the values); the MAE trainer's ``masked R2 vs zero imputation
    {'CT': 0.88, 'PET': 0.79}`` gives ``"masked R² CT 0.88, PET 0.79"``.
    """
    m = EPOCH_RE.search(line)
    if m:
        return int(m.group(1)), None
    m = PSEUDO_DICE_RE.search(line)
    if m:
        values = [float(v) for v in _FLOAT_RE.findall(m.group(1).replace("float32", ""))]
        if values:
            return None, f"pseudo-Dice {sum(values) / len(values):.2f}"
    m = MASKED_R2_RE.search(line)
    if m:
        parts = re.findall(r"'([^']+)':\s*(" + _FLOAT_RE.pattern + ")", m.group(1))
        if parts:
            return None, "masked R² " + ", ".join(f"{k} {float(v):.2f}" for k, v in parts)
    return None, None


def format_seconds(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def job_status(job: Job, now: float) -> str:
    """``scratch: epoch 12/40, pseudo-Dice 0.31`` (or ``done``/``failed``/``starting``)."""
    if job.returncode is not None:
        took = format_seconds((job.finished or now) - job.started)
        return f"{job.label}: {'done' if job.returncode == 0 else 'FAILED'} ({took})"
    if job.total_epochs is None or job.epoch is None:
        return f"{job.label}: running" if job.started else f"{job.label}: waiting"
    text = f"{job.label}: epoch {job.epoch + 1}/{job.total_epochs}"
    return f"{text}, {job.metric}" if job.metric else text


class StatusPrinter:
    """One status line rewritten in place on a terminal; elsewhere a line every ``every_s`` seconds."""

    def __init__(self, prefix: str, enabled: bool = True, stream=None, every_s: float = 30.0):
        self.prefix = prefix
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_s = every_s
        self._last_plain = time.monotonic()  # elsewhere than a terminal, the first line comes after every_s
        self._shown = False

    def update(self, text: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r\x1b[K" + self.prefix + text)
            self.stream.flush()
            self._shown = True
        elif force or now - self._last_plain >= self.every_s:
            self.stream.write(self.prefix + text + "\n")
            self.stream.flush()
            self._last_plain = now

    def line(self, text: str) -> None:
        """A permanent line (e.g. a run that finished); the status line continues below it."""
        if not self.enabled:
            return
        self.stream.write(("\r\x1b[K" if self.tty and self._shown else "") + self.prefix + text + "\n")
        self.stream.flush()
        self._shown = False

    def close(self) -> None:
        if self.enabled and self.tty and self._shown:
            self.stream.write("\n")
            self.stream.flush()
        self._shown = False


def _reader(index: int, proc: subprocess.Popen, log, lines: queue.Queue) -> None:
    for line in proc.stdout:
        log.write(line)
        log.flush()
        lines.put((index, line))
    lines.put((index, None))


def run_jobs(jobs: Sequence[Job], max_parallel: int = 1, status: StatusPrinter | None = None,
             timeout_s: float = 7200, on_finish: Callable[[Job], None] | None = None,
             clock_start: float | None = None) -> list[Job]:
    """Run ``jobs`` (at most ``max_parallel`` at a time, in order), each one's output appended to its
    ``log_file``; keep ``status`` current (job states and the time elapsed since ``clock_start``, a
    ``time.monotonic()`` value, default now). Returns the jobs with their return codes; stops starting
    new jobs after a failure and waits for the running ones.

    Raises:
        TimeoutError: the whole set ran longer than ``timeout_s`` (running processes are killed).
    """
    t0 = time.monotonic()
    shown_t0 = clock_start if clock_start is not None else t0
    lines: queue.Queue = queue.Queue()
    running: dict[int, tuple[subprocess.Popen, object, threading.Thread]] = {}
    next_job = 0
    failed = False

    def show(force: bool = False) -> None:
        if status is None:
            return
        now = time.monotonic()
        active = [job_status(j, now) for j in jobs if j.started and j.returncode is None]
        waiting = sum(1 for j in jobs if not j.started)
        text = " | ".join(active) if active else "finishing"
        if waiting and len(jobs) > 1:
            text += f" | {waiting} waiting"
        status.update(f"{text} | step {format_seconds(now - shown_t0)}", force=force)

    try:
        while True:
            while not failed and next_job < len(jobs) and len(running) < max(1, max_parallel):
                job = jobs[next_job]
                job.log_file.parent.mkdir(parents=True, exist_ok=True)
                log = open(job.log_file, "a")
                log.write("$ " + " ".join(job.cmd) + "\n")
                log.flush()
                proc = subprocess.Popen(job.cmd, env=job.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, bufsize=1, errors="replace")
                job.started = time.monotonic()
                thread = threading.Thread(target=_reader, args=(next_job, proc, log, lines), daemon=True)
                thread.start()
                running[next_job] = (proc, log, thread)
                next_job += 1
                show()
            if not running:
                break
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError(f"commands still running after {format_seconds(timeout_s)}")
            try:
                index, line = lines.get(timeout=1.0)
            except queue.Empty:
                show()
                continue
            job = jobs[index]
            if line is None:  # output closed: the process is ending
                proc, log, thread = running.pop(index)
                job.returncode = proc.wait()
                job.finished = time.monotonic()
                log.close()
                failed = failed or job.returncode != 0
                if on_finish is not None:
                    on_finish(job)
                if status is not None and len(jobs) > 1:  # a line per finished run
                    status.line(job_status(job, time.monotonic()))
                show()
                continue
            epoch, metric = parse_progress(line)
            if epoch is not None:
                job.epoch = epoch
                at_quarter = job.total_epochs and (epoch + 1) % max(1, job.total_epochs // 4) == 0
                show(force=bool(at_quarter))
            elif metric is not None:
                job.metric = metric
    finally:
        for proc, log, _ in running.values():
            proc.kill()
            proc.wait()
            log.close()
        if status is not None:
            status.close()
    return list(jobs)
