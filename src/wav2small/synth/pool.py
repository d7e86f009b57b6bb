"""The process pool: every clip rendered in a fresh forked child; :func:`render`."""

from __future__ import annotations

import gc
import json
import os
import tempfile
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wav2small.synth.constants import SPLITS
from wav2small.synth.labels import RaterPanel
from wav2small.synth.plan import ClipPlan, _row, plan_clip
from wav2small.synth.render import _atomic_write, _wav_bytes, render_plan, samples_hash


@dataclass(frozen=True)
class _ClipJob:
    """A clip of :func:`generate`: planned inside the worker, written to ``out_dir/split``."""

    split: str
    index: int
    seed: int
    clean: bool
    raters: RaterPanel
    out_dir: str


def _render_task(plan: ClipPlan, job: _ClipJob | None, data_dir: str) -> bytes:
    """Render one clip: raw int16 bytes, or (for a job) write its WAV and return its CSV row."""
    samples = render_plan(plan, data_dir)
    if job is None:
        return samples.tobytes()
    _atomic_write(Path(job.out_dir) / plan.split / plan.name, _wav_bytes(samples))
    meta = {"hash": samples_hash(samples), "samples": int(samples.size)}
    return json.dumps(_row(plan, meta)).encode()


# --- process pool: every clip in a fresh forked process -------------------------------------
def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _in_fresh_process(task: tuple[ClipPlan | _ClipJob, str]) -> bytes:
    """Run :func:`_render_task` in a forked child of this (never-synthesising) pool worker."""
    job, data_dir = task
    if isinstance(job, ClipPlan):
        plan, job = job, None
    else:  # planned here: cheaper in this long-lived process than in the fresh child
        plan = plan_clip(job.split, job.index, seed=job.seed, clean=job.clean, raters=job.raters)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: render, report, exit without running any cleanup of the parent
        gc.disable()  # short-lived: collection would only copy shared pages
        code = 0
        try:
            os.close(read_fd)
            payload = b"K" + _render_task(plan, job, data_dir)
        except OSError as e:  # a full disk, a permission: the parent re-raises it (exit 2)
            payload = b"O" + json.dumps([e.errno, e.strerror or str(e), e.filename]).encode()
            code = 1
        except BaseException:  # noqa: BLE001 - everything is reported to the parent
            payload, code = b"E" + traceback.format_exc().encode(), 1
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(write_fd, view) :]
        finally:
            os._exit(code)
    os.close(write_fd)
    try:
        data = _read_all(read_fd)
    finally:
        os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    if data.startswith(b"O"):
        errno, strerror, filename = json.loads(data[1:])
        raise OSError(errno, strerror, filename)
    if status != 0 or not data.startswith(b"K"):
        detail = data[1:].decode(errors="replace") or f"exit status {status}"
        raise RuntimeError(f"rendering {plan.split} clip {plan.index} failed:\n{detail}")
    return data[1:]


def _warm_worker() -> None:
    """Pool initialiser: import and cache everything a clip needs, so forked children start
    fast.  The eSpeak library is only mapped (dlopen), never initialised: children stay fresh."""
    import soxr  # noqa: F401

    from wav2small.synth import espeak

    espeak.preload()
    for split in SPLITS:  # fills the caches (voices, lexicons) and numpy's first-call state
        plan_clip(split, 0)
    gc.freeze()  # the children never scan (and so never copy) the objects made so far


def _pool_map(tasks: list, jobs: int, *, desc: str, progress: bool) -> Iterator[bytes]:
    """Results of :func:`_in_fresh_process` in task order, from ``jobs`` spawned workers."""
    import multiprocessing

    from tqdm import tqdm

    if not tasks:
        return
    ctx = multiprocessing.get_context("spawn")  # light workers: numpy only; they never synthesise
    with ctx.Pool(min(jobs, len(tasks)), initializer=_warm_worker) as pool:
        results = pool.imap(_in_fresh_process, tasks, chunksize=1)
        yield from tqdm(results, total=len(tasks), desc=desc, unit="clip", disable=not progress)


def _check_jobs(jobs: int) -> None:
    if os.name != "posix":
        raise RuntimeError("the corpus generator needs os.fork (Linux or macOS)")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")


def render(plans: Iterable[ClipPlan], *, jobs: int = 1, progress: bool = False) -> list[np.ndarray]:
    """Render planned clips to int16 arrays (16 kHz), each in a fresh process.

    Args:
        plans: from :func:`plan_clip`.
        jobs: worker processes.
        progress: show a progress bar.
    """
    from wav2small.synth.espeak import make_data_dir

    _check_jobs(jobs)
    plans = list(plans)
    with tempfile.TemporaryDirectory(prefix="w2s-espeak-") as tmp:
        data_dir = str(make_data_dir(tmp))
        tasks = [(p, data_dir) for p in plans]
        return [
            np.frombuffer(b, dtype=np.int16).copy()
            for b in _pool_map(tasks, jobs, desc="synth", progress=progress)
        ]
