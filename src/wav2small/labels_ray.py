"""Teacher labelling on a Ray cluster (Ray Data): same table, same shards, same resume as local.

The pipeline (``wav2small label --engine ray``):

1. the driver reads the manifest, probes the headers, drops every segment already in ``<out>``
   or its shards (resume), and groups the rest into length-sorted batches of at most
   ``batch_seconds`` of padded audio, exactly like :func:`wav2small.labels.label`;
2. **decode** — Ray tasks (``num_cpus=decode_cpus`` each) read, mix down and resample one batch
   each (:func:`wav2small.audio.read_audio`); unreadable segments are passed on as errors;
3. **teacher** — a fixed pool of ``workers`` Ray actors (``map_batches`` with
   ``concurrency=workers``, ``num_gpus=num_gpus_per_worker``) each load the teacher *once* and
   label the decoded batches;
4. the driver consumes the stream of result rows (a few bytes per segment; audio never reaches
   it) and writes them as atomic Parquet shards ``<out>.parts/part-NNNNN.parquet`` as they
   arrive, then merges them into ``<out>`` in manifest order without duplicates.

A killed or failed run leaves only whole shards; the next run (with either engine) skips every
segment they hold. The output is identical in schema and (up to float rounding, ≤ 1e-5) in values
to the local engine's.

On a multi-node cluster the audio paths (and a teacher given by path) must be readable at the same
path on every node (shared file system), and wav2small must be installed on every node; a teacher
given as a loaded module is shipped to the actors through the object store.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wav2small import LABELS
from wav2small.errors import UserError
from wav2small.inputs import check_any_good, output_lock, write_skipped
from wav2small.labels import (
    DEFAULT_BATCH_SECONDS,
    DEFAULT_SHARD_ROWS,
    ON_ERROR,
    LabelResult,
    Segment,
    _key,
    _merge,
    _read_existing,
    _ShardWriter,
    batches,
    parts_dir,
    probe,
    read_manifest,
    report,
    shortest_input,
    start_job,
    teacher_fingerprint,
)

logger = logging.getLogger(__name__)

#: CPUs reserved by each decode task (fractional: decoding is light next to the teacher).
DEFAULT_DECODE_CPUS = 0.5
#: CPUs reserved by each teacher actor (also its torch thread count, at least 1).
DEFAULT_CPUS_PER_WORKER = 1.0
#: Columns of the result stream, besides the labels.
_STREAM_COLUMNS = ("file", "start", "end", "error")


# --- pipeline stages (module level so Ray workers import them by reference) ---------------------
def _group_row(group: Sequence[Segment]) -> dict[str, Any]:
    """One dataset row per teacher batch."""
    return {
        "file": [s.file for s in group],
        "path": [s.path for s in group],
        "start": [float(s.start) for s in group],
        "end": [float(s.end or 0.0) for s in group],
    }


def decode_group(row: dict[str, Any]) -> dict[str, Any]:
    """Ray task: read one batch of segments as 16 kHz mono float32 (errors are kept, not raised).

    Returns:
        The segments (``file``, ``start``, ``end``, ``error``: "" when read) and the audio of the
        readable ones concatenated in ``wave`` with their sample counts in ``lengths``.
    """
    from wav2small.audio import AudioError, read_audio

    waves, lengths, errors = [], [], []
    for path, start, end in zip(row["path"], row["start"], row["end"], strict=True):
        try:
            wave = read_audio(str(path), offset=float(start), duration=float(end) - float(start))
            waves.append(wave)
            lengths.append(len(wave))
            errors.append("")
        except AudioError as e:
            errors.append(str(e) or f"{path}: unreadable")
    return {
        "file": list(row["file"]),
        "start": [float(x) for x in row["start"]],
        "end": [float(x) for x in row["end"]],
        "error": errors,
        "wave": np.concatenate(waves) if waves else np.zeros(0, np.float32),
        "lengths": np.asarray(lengths, dtype=np.int64),
    }


class TeacherWorker:
    """Ray actor: loads the teacher once, then labels decoded batches.

    Args:
        teacher: name/folder for :func:`~wav2small.teachers.load_teacher`, or a dict
            ``{relative path: bytes}`` of a saved teacher folder (shipped by the driver).
        clip: clip ensemble outputs to [0, 1].
        threads: torch threads of this actor.
        use_gpu: run on the GPU Ray assigned to this actor.
    """

    def __init__(
        self, teacher: str | dict[str, bytes], *, clip: bool, threads: int, use_gpu: bool
    ) -> None:
        import torch

        from wav2small.teachers import load_teacher

        torch.set_num_threads(max(1, threads))
        device = "cuda" if use_gpu else "cpu"
        if isinstance(teacher, dict):
            self._tmp = tempfile.TemporaryDirectory(prefix="wav2small-teacher-")
            folder = Path(self._tmp.name) / "teacher"
            for rel, data in teacher.items():
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                (folder / rel).write_bytes(data)
            teacher = str(folder)
        self.teacher = load_teacher(teacher, device=device, clip=clip)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from wav2small.backends import teacher_predict

        out: dict[str, list] = {k: [] for k in (*_STREAM_COLUMNS, *LABELS)}
        for i in range(len(batch["file"])):
            lengths = np.asarray(batch["lengths"][i], dtype=np.int64)
            wave = np.array(batch["wave"][i], dtype=np.float32).reshape(-1)  # writable copy
            waves = np.split(wave, np.cumsum(lengths)[:-1]) if len(lengths) else []
            names = [f for f, e in zip(batch["file"][i], batch["error"][i], strict=True) if not e]
            preds = iter(teacher_predict(self.teacher, waves, names=names))
            for file, start, end, error in zip(
                batch["file"][i],
                batch["start"][i],
                batch["end"][i],
                batch["error"][i],
                strict=True,
            ):
                values = next(preds) if not error else np.full(len(LABELS), np.nan)
                for k, v in zip(
                    ("file", "start", "end", "error"), (file, start, end, error), strict=True
                ):
                    out[k].append(v)
                for k, v in zip(LABELS, values, strict=True):
                    out[k].append(float(v))
        return {
            "file": np.asarray(out["file"], dtype=object),
            "start": np.asarray(out["start"], dtype=np.float64),
            "end": np.asarray(out["end"], dtype=np.float64),
            "error": np.asarray(out["error"], dtype=object),
            **{k: np.asarray(out[k], dtype=np.float64) for k in LABELS},
        }


# --- driver -----------------------------------------------------------------------------------
def _teacher_payload(teacher) -> tuple[str | dict[str, bytes], str]:
    """What the actors load (a name/path, or the files of a saved module) and the default name."""
    if isinstance(teacher, str | os.PathLike):
        return os.fspath(teacher), os.fspath(teacher)
    from wav2small.teachers import save_teacher

    with tempfile.TemporaryDirectory(prefix="wav2small-teacher-") as tmp:
        folder = save_teacher(teacher, Path(tmp) / "teacher")
        files = {
            str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()
        }
    return files, getattr(teacher, "name", type(teacher).__name__)


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "the Ray engine needs Ray Data: pip install 'wav2small[scale]' (ray[data])"
        ) from e
    return ray


def _init_ray(address: str | None) -> bool:
    """Connect to (or start) Ray; True when this call started it (and must shut it down)."""
    ray = _import_ray()

    if ray.is_initialized():
        if address:
            logger.info("Ray is already initialised; ignoring address %s", address)
        return False
    kwargs: dict[str, Any] = {"address": address, "log_to_driver": True}
    if not address and not os.environ.get("RAY_ADDRESS"):
        kwargs["include_dashboard"] = False
    ray.init(**kwargs)
    return True


def _check_resources(workers: int, cpus_per_worker: float, gpus: float, decode_cpus: float):
    import ray

    total = ray.cluster_resources()
    cpus, have_gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
    if workers * gpus > have_gpus:
        raise ValueError(
            f"{workers} workers × {gpus:g} GPUs need {workers * gpus:g} GPUs; the Ray cluster "
            f"has {have_gpus:g}"
        )
    if workers * cpus_per_worker + decode_cpus > cpus:
        raise ValueError(
            f"{workers} workers × {cpus_per_worker:g} CPUs + {decode_cpus:g} for decoding need "
            f"{workers * cpus_per_worker + decode_cpus:g} CPUs; the Ray cluster has {cpus:g} "
            "(lower --workers or --cpus-per-worker)"
        )


def _dataset(groups, payload, *, workers, cpus_per_worker, gpus, decode_cpus, clip, threads):
    import ray
    from ray.data import ActorPoolStrategy

    ds = ray.data.from_items([_group_row(g) for g in groups], override_num_blocks=len(groups))
    ds = ds.map(decode_group, num_cpus=decode_cpus)
    return ds.map_batches(
        TeacherWorker,
        fn_constructor_kwargs={
            "teacher": payload,
            "clip": clip,
            "threads": threads or max(1, int(cpus_per_worker)),
            "use_gpu": gpus > 0,
        },
        batch_size=1,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=workers),  # = concurrency=workers (deprecated in 2.51)
        num_cpus=cpus_per_worker,
        num_gpus=gpus or None,
    )


def _configure_ray_data(progress: bool) -> None:
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # the driver shows one bar in audio seconds
    ctx.print_on_execution_start = progress
    ctx.enable_auto_log_stats = False


def label_ray(
    teacher,
    audio: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    workers: int = 1,
    num_gpus_per_worker: float = 0.0,
    cpus_per_worker: float = DEFAULT_CPUS_PER_WORKER,
    decode_cpus: float = DEFAULT_DECODE_CPUS,
    address: str | None = None,
    batch_seconds: float = DEFAULT_BATCH_SECONDS,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    on_error: str = "raise",
    teacher_name: str | None = None,
    clip: bool = False,
    threads: int = 0,
    progress: bool = True,
    embeddings: bool = False,
) -> LabelResult:
    """Label audio with a teacher on Ray Data into a Parquet file (resumable, sharded, atomic).

    Same output, shards and resume as :func:`wav2small.labels.label` (the two engines can resume
    each other's runs); the work runs on a Ray cluster: decoding in CPU tasks, the teacher in a
    pool of ``workers`` actors that each load it once.

    Args:
        teacher: a teacher name or folder (loaded by every actor; on a multi-node cluster it must
            resolve on every node) or a loaded teacher module (saved and shipped to the actors).
        audio: folder, CSV manifest, audio file, or list of files (see
            :func:`wav2small.labels.read_manifest`); paths must be readable by every Ray node.
        out: output ``.parquet`` path (written by the driver).
        workers: teacher actors (fixed pool).
        num_gpus_per_worker: GPUs per actor (0: CPU; fractions share a GPU between actors).
        cpus_per_worker: CPUs reserved per actor; also its torch threads unless ``threads``.
        decode_cpus: CPUs reserved per decode task.
        address: Ray address (``auto``, ``ray://host:10001``, ...); default: ``RAY_ADDRESS`` or a
            new local Ray. Ignored when Ray is already initialised in this process.
        batch_seconds: most padded audio per teacher call.
        shard_rows: rows per shard file.
        on_error: ``"raise"`` (stop at the first unreadable file; finished shards are kept) or
            ``"skip"`` (list it and go on).
        teacher_name: value of the ``teacher`` column (default: the name or path given, or the
            module's ``name``).
        clip: clip ensemble outputs to [0, 1] (teachers given by name).
        threads: torch threads per actor (0: ``max(1, int(cpus_per_worker))``).
        progress: show a progress bar in audio seconds.
        embeddings: not supported by this engine (the ``embedding`` column of
            :func:`wav2small.labels.label`); True raises.

    Returns:
        A :class:`wav2small.labels.LabelResult`.

    Raises:
        AudioError: an unreadable file with ``on_error="raise"`` (the message names it).
        ValueError: bad arguments, an empty manifest, or more resources than the cluster has.
        UserError: ``embeddings=True`` (use the local engine).
    """
    if embeddings:
        raise UserError(
            "--embeddings is not supported by --engine ray; label with --engine local "
            "(the default) to store the teacher's embeddings"
        )
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    if batch_seconds <= 0 or shard_rows < 1:
        raise ValueError("batch_seconds must be > 0 and shard_rows ≥ 1")
    if workers < 1 or num_gpus_per_worker < 0 or cpus_per_worker < 0 or decode_cpus <= 0:
        raise ValueError(
            "workers must be ≥ 1, num_gpus_per_worker and cpus_per_worker ≥ 0, decode_cpus > 0"
        )
    t0 = time.perf_counter()
    _import_ray()
    out = Path(out)
    with output_lock(out):  # a second writer of this output fails at once
        return _label_ray_locked(
            teacher,
            audio,
            out,
            t0=t0,
            workers=workers,
            num_gpus_per_worker=num_gpus_per_worker,
            cpus_per_worker=cpus_per_worker,
            decode_cpus=decode_cpus,
            address=address,
            batch_seconds=batch_seconds,
            shard_rows=shard_rows,
            on_error=on_error,
            teacher_name=teacher_name,
            clip=clip,
            threads=threads,
            progress=progress,
        )


def _label_ray_locked(
    teacher,
    audio,
    out: Path,
    *,
    t0,
    workers,
    num_gpus_per_worker,
    cpus_per_worker,
    decode_cpus,
    address,
    batch_seconds,
    shard_rows,
    on_error,
    teacher_name,
    clip,
    threads,
    progress,
) -> LabelResult:
    from wav2small.teachers import teacher_min_samples

    named = isinstance(teacher, str | os.PathLike)
    job = {
        "teacher": teacher_name or (os.fspath(teacher) if named else getattr(teacher, "name", "")),
        "clip": bool(clip if named else getattr(teacher, "clip", False)),
        "fingerprint": None if named else teacher_fingerprint(teacher),
    }
    start_job(out, job)
    segments, skipped = probe(
        read_manifest(audio),
        on_error=on_error,
        shortest=teacher_min_samples(teacher) if named else shortest_input(teacher),
    )
    done = {
        _key(f, s, e)
        for table in _read_existing(out)
        for f, s, e in zip(table["file"], table["start"], table["end"], strict=True)
    }
    todo = [s for s in segments if s.key() not in done]
    payload, default_name = _teacher_payload(teacher)
    name = teacher_name or default_name
    labelled, seconds = 0, 0.0
    if todo:
        started = _init_ray(address)
        try:
            _check_resources(workers, cpus_per_worker, num_gpus_per_worker, decode_cpus)
            _configure_ray_data(progress)
            ds = _dataset(
                list(batches(todo, batch_seconds)),
                payload,
                workers=workers,
                cpus_per_worker=cpus_per_worker,
                gpus=num_gpus_per_worker,
                decode_cpus=decode_cpus,
                clip=clip,
                threads=threads,
            )
            labelled, seconds = _consume(
                ds,
                out,
                name=name,
                total=sum(s.duration for s in todo),
                shard_rows=shard_rows,
                on_error=on_error,
                skipped=skipped,
                progress=progress,
            )
        finally:
            if started:
                import ray

                ray.shutdown()
    write_skipped(out, skipped)
    for file, reason in skipped:
        logger.warning("skipped %s: %s", file, reason)
    check_any_good(labelled + len(done), skipped)  # --on-error skip with nothing good: error
    rows = _merge(out, segments)
    return LabelResult(out, rows, labelled, skipped, seconds, time.perf_counter() - t0)


def _consume(ds, out: Path, *, name, total, shard_rows, on_error, skipped, progress):
    """Write the result stream to shards; (segments labelled, audio seconds labelled)."""
    from tqdm.auto import tqdm

    from wav2small.audio import AudioError

    writer = _ShardWriter(parts_dir(out), shard_rows)
    labelled, seconds = 0, 0.0
    with tqdm(
        total=round(total, 2),
        unit="audio-s",
        desc="label (ray)",
        disable=not progress,
        dynamic_ncols=True,
    ) as bar:
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="pandas"):
                ok, bad = _split(batch)
                for file, reason in zip(bad["file"], bad["error"], strict=True):
                    if on_error == "raise":
                        raise AudioError(reason)
                    skipped.append((str(file), str(reason)))
                writer.add(_rows(ok, name))
                labelled += len(ok)
                seconds += float((ok["end"] - ok["start"]).sum())
                bar.update(round(float((batch["end"] - batch["start"]).sum()), 2))
        finally:
            writer.flush()  # whatever finished is kept for the next run
    return labelled, seconds


def _split(batch: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    failed = batch["error"].astype(str) != ""
    return batch[~failed], batch[failed]


def _rows(table: pd.DataFrame, name: str) -> list[dict]:
    return [
        {
            "file": str(file),
            "start": float(start),
            "end": float(end),
            **{k: float(v) for k, v in zip(LABELS, values, strict=True)},
            "teacher": name,
        }
        for file, start, end, *values in zip(
            table["file"], table["start"], table["end"], *(table[k] for k in LABELS), strict=True
        )
    ]


def label_ray_cli(args) -> int:
    """``wav2small label --engine ray`` entry point."""
    if getattr(args, "device", "cpu") != "cpu" and not args.num_gpus_per_worker:
        logger.warning("--device is ignored by the Ray engine; GPUs: --num-gpus-per-worker")
    result = label_ray(
        args.teacher,
        args.audio,
        args.out,
        workers=args.workers,
        num_gpus_per_worker=args.num_gpus_per_worker,
        cpus_per_worker=args.cpus_per_worker,
        address=args.address,
        batch_seconds=args.batch_seconds,
        shard_rows=args.shard_rows,
        on_error=args.on_error,
        clip=args.clip,
        threads=args.threads or 0,
        progress=getattr(args, "progress", True),
        embeddings=getattr(args, "embeddings", False),
    )
    return report(result)


__all__ = ["TeacherWorker", "decode_group", "label_ray", "label_ray_cli"]
