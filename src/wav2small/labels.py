"""Teacher labelling: audio files (or segments of them) → a Parquet table of A/D/V.

Rows are ``(file, start, end, arousal, dominance, valence, teacher)``; times in seconds, ``file``
as it appears in the input (a folder listing or the CSV's ``file`` column). With
``embeddings=True`` (``wav2small label --embeddings``) a last column ``embedding`` holds the
teacher's pooled embedding (the vector its head reads; ``forward(..., embedding=True)`` of
:class:`wav2small.teachers.Teacher`) as a Parquet list of float32 per row.

How it runs:

* the manifest's headers are probed first (duration of each file; unreadable files are skipped
  or raise, see ``on_error``), then segments are sorted by length and grouped into batches of at
  most ``batch_seconds`` of padded audio (the teacher's outputs do not depend on padding);
* results go to shards ``<out>.parts/part-NNNNN.parquet``, each written under a temporary name
  and renamed, so a killed run leaves only whole shards; a rerun skips every segment already in
  a shard (or in an existing ``<out>``), labels the rest and merges everything, in manifest
  order and without duplicates, into ``<out>`` (again temp name, then rename) before removing
  the shards;
* skipped segments are listed in the result and in ``<out stem>.skipped.csv``; they are retried
  on the next run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from wav2small import LABELS
from wav2small.config import ON_ERROR, LabelOptions
from wav2small.inputs import (
    MissingInputError,
    ResumeError,
    atomic_write,
    check_any_good,
    list_audio,
    output_lock,
    skipped_path,
    write_skipped,
    write_text,
)
from wav2small.inputs import read_manifest as read_csv_manifest

logger = logging.getLogger(__name__)

#: Output columns, in order.
COLUMNS = ("file", "start", "end", *LABELS, "teacher")
#: Extra last column with ``embeddings=True``: the teacher's pooled embedding (list of float32).
EMBEDDING_COLUMN = "embedding"
#: Most padded audio (seconds) per teacher call; rows per shard; bad-input policies.
DEFAULT_BATCH_SECONDS, DEFAULT_SHARD_ROWS = LabelOptions.batch_seconds, LabelOptions.shard_rows
PARTS_SUFFIX = ".parts"
#: Suffix of the file that records which teacher and settings started a labelling job.
JOB_SUFFIX = ".job.json"
#: Job facts that must match for a run to resume an output.
JOB_KEYS = ("teacher", "clip", "fingerprint", "embeddings")
#: Value of a job fact that a record written before the fact existed lacks.
_JOB_DEFAULTS = {"embeddings": False}
#: Times are compared at this resolution (seconds) when matching rows to segments.
_TIME_DECIMALS = 6


@dataclass(frozen=True)
class Segment:
    """One thing to label: ``file`` (as reported), ``path`` (as read), ``start``/``end`` seconds."""

    file: str
    path: str
    start: float = 0.0
    end: float | None = None

    @property
    def duration(self) -> float:
        return float(self.end or 0.0) - self.start

    def key(self) -> tuple[str, float, float]:
        return _key(self.file, self.start, float(self.end or 0.0))


def _key(file: str, start: float, end: float) -> tuple[str, float, float]:
    return (str(file), round(float(start), _TIME_DECIMALS), round(float(end), _TIME_DECIMALS))


@dataclass
class LabelResult:
    """What a labelling run did.

    Attributes:
        out: the Parquet file.
        rows: rows in it.
        labelled: segments labelled by this run (the others were already done).
        skipped: (file, reason) for every segment that could not be labelled.
        audio_seconds: seconds of audio labelled by this run.
        wall_seconds: wall time of this run.
    """

    out: Path
    rows: int
    labelled: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0

    @property
    def speed(self) -> float:
        """Audio seconds labelled per wall second."""
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else float("nan")


# --- manifest ---------------------------------------------------------------------------------
def read_manifest(audio: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Segment]:
    """Segments to label from a folder (recursive), a CSV, one audio file, or a list of files.

    A CSV needs a ``file`` column and may have ``start``/``end`` columns in seconds (empty =
    whole file). Relative ``file`` paths are resolved against the CSV's folder, never the working
    directory (the path rule of :func:`wav2small.inputs.read_manifest`).

    Raises:
        MissingInputError: no such folder/CSV/file (a FileNotFoundError).
        InputError: a CSV without a ``file`` column, or no audio found (a ValueError).
    """
    if not isinstance(audio, str | os.PathLike):
        return [Segment(os.fspath(p), os.fspath(p)) for p in audio]
    path = Path(audio)
    if path.is_dir():
        return [Segment(str(p), str(p)) for p in list_audio(path)]
    if path.suffix.lower() == ".csv":
        return _csv_manifest(path)
    if not path.exists():
        raise MissingInputError(f"{path}: no such file or folder")
    return [Segment(str(path), str(path))]


def _csv_manifest(path: Path) -> list[Segment]:
    table = read_csv_manifest(path)
    starts = table["start"] if "start" in table else pd.Series(0.0, index=table.index)
    ends = table["end"] if "end" in table else pd.Series(np.nan, index=table.index)
    out = []
    for file, read, start, end in zip(table["file"], table["path"], starts, ends, strict=True):
        start = 0.0 if pd.isna(start) else float(start)
        out.append(Segment(file, read, start, None if pd.isna(end) else float(end)))
    return out


def shortest_input(teacher) -> int:
    """Fewest samples (16 kHz) a teacher labels: its ``min_samples`` (one analysis window or
    the backbone's receptive field; an ensemble's largest member's), at least 1.

    A shorter clip would only be labelled as the zero padding the teacher adds to it, so
    :func:`label` rejects it (or skips it) by name, as ``predict`` and ``evaluate`` do with
    clips too short for a student.
    """
    own = int(getattr(teacher, "min_samples", 1) or 1)
    members = getattr(teacher, "members", None) or []
    return max([own, *(shortest_input(m) for m in members)])


def probe(
    segments: Sequence[Segment], *, on_error: str = "raise", shortest: int = 1
) -> tuple[list[Segment], list[tuple[str, str]]]:
    """Fill in each segment's end from the file header (whole files) and check the times.

    Args:
        segments: what to label.
        on_error: ``"raise"`` at the first bad segment, or ``"skip"`` it.
        shortest: fewest samples (at 16 kHz) a segment may have (:func:`shortest_input`).

    Returns:
        (segments with ends, skipped (file, reason)).

    Raises:
        AudioError: an unreadable file, a segment outside its file or shorter than
            ``shortest`` (with ``on_error="raise"``; the message names the file).
    """
    from wav2small import SAMPLE_RATE
    from wav2small.audio import AudioError, audio_info

    durations: dict[str, float] = {}
    done, skipped = [], []
    for seg in segments:
        try:
            if seg.path not in durations:
                durations[seg.path] = audio_info(seg.path).duration
            total = durations[seg.path]
            end = total if seg.end is None else min(seg.end, total)
            if not 0 <= seg.start < end:
                raise AudioError(
                    f"{seg.path}: segment {seg.start:g}–{seg.end if seg.end is not None else ''}"
                    f" s is outside the file ({total:.3f} s)"
                )
            n = round((end - seg.start) * SAMPLE_RATE)
            if n < shortest:
                raise AudioError(
                    f"{seg.path}: too short: {n} samples at {SAMPLE_RATE} Hz, the teacher needs "
                    f"at least {shortest} ({1000 * shortest / SAMPLE_RATE:g} ms)"
                )
            done.append(Segment(seg.file, seg.path, seg.start, end))
        except AudioError as e:
            if on_error == "raise":
                raise
            skipped.append((seg.file, str(e)))
    return done, skipped


def batches(segments: Sequence[Segment], batch_seconds: float) -> Iterator[list[Segment]]:
    """Length-sorted batches whose padded size (longest × count) stays within ``batch_seconds``."""
    group: list[Segment] = []
    for seg in sorted(segments, key=lambda s: (s.duration, s.file, s.start)):
        if group and seg.duration * (len(group) + 1) > batch_seconds:
            yield group
            group = []
        group.append(seg)
    if group:
        yield group


# --- shards ------------------------------------------------------------------------------------
def parts_dir(out: Path) -> Path:
    """Folder of the shards of ``out``."""
    return out.with_name(out.name + PARTS_SUFFIX)


def job_path(out: Path) -> Path:
    """Where the teacher and settings that started the labelling of ``out`` are recorded."""
    return out.with_name(out.name + JOB_SUFFIX)


def teacher_fingerprint(teacher) -> str | None:
    """A short hash of a teacher module's weights (names, shapes and a sample of values).

    Cheap even for large teachers (at most 4096 values per tensor are hashed); None for a
    teacher given by name or a module without a ``state_dict``.
    """
    if not hasattr(teacher, "state_dict"):
        return None
    digest = hashlib.sha256()
    for key, value in sorted(teacher.state_dict().items()):
        flat = value.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        digest.update(f"{key}{tuple(value.shape)}{value.dtype}".encode())
        digest.update(flat[::step][:4096].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def output_columns(embeddings: bool = False) -> list[str]:
    """Columns of a label table: :data:`COLUMNS`, plus :data:`EMBEDDING_COLUMN` when asked."""
    return [*COLUMNS, EMBEDDING_COLUMN] if embeddings else list(COLUMNS)


def start_job(out: Path, job: dict) -> None:
    """Record ``job`` (:data:`JOB_KEYS`) for ``out``, or check it against a resumed job.

    A run resumes when ``out`` or its shards exist; it must then use the teacher and settings
    that started the job (a fingerprint is compared only when both runs have one: the Ray engine
    given a teacher by name has none). Outputs without a job record are checked by their
    ``teacher`` column and whether they have an ``embedding`` column.

    Raises:
        ResumeError: the resumed job was started with another teacher or settings.
    """
    path = job_path(out)
    resuming = out.is_file() or any(parts_dir(out).glob("part-*.parquet"))
    if resuming and path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        changed = [
            f"{key} {_job_fact(old, key)!r} → {_job_fact(job, key)!r}"
            for key in JOB_KEYS
            if _job_fact(old, key) != _job_fact(job, key)
            and not (key == "fingerprint" and None in (old.get(key), job.get(key)))
        ]
        if changed:
            raise ResumeError(
                f"{out}: this job was started with another teacher or settings "
                f"({'; '.join(changed)}); rerun with the same --teacher/--clip/--embeddings "
                "to resume it, or write to another --out"
            )
    elif resuming:
        tables = _read_existing(out)
        names = {str(n) for t in tables for n in t["teacher"].dropna().unique()}
        if names - {job["teacher"]}:
            raise ResumeError(
                f"{out}: holds labels of teacher(s) {sorted(names)}, not {job['teacher']!r}; "
                "rerun with the same --teacher to resume it, or write to another --out"
            )
        wanted = bool(_job_fact(job, "embeddings"))
        if any((EMBEDDING_COLUMN in t.columns) != wanted for t in tables):
            raise ResumeError(
                f"{out}: holds labels {'without' if wanted else 'with'} an '{EMBEDDING_COLUMN}' "
                f"column; rerun {'without' if not wanted else 'with'} --embeddings to resume it, "
                "or write to another --out"
            )
    if not (resuming and path.is_file()) or job.get("fingerprint"):
        write_text(path, json.dumps({**job}, indent=1, sort_keys=True) + "\n")


def _job_fact(job: dict, key: str):
    """A job fact of a record, with the default of a record written before the fact existed."""
    return job.get(key, _JOB_DEFAULTS.get(key))


def _write_parquet(table: pd.DataFrame, path: Path) -> None:
    with atomic_write(path) as tmp:
        if EMBEDDING_COLUMN not in table.columns:
            table.to_parquet(tmp, index=False)
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        rest = pa.Table.from_pandas(table.drop(columns=[EMBEDDING_COLUMN]), preserve_index=False)
        values = [np.asarray(v, dtype=np.float32) for v in table[EMBEDDING_COLUMN]]
        column = pa.array(values, type=pa.list_(pa.float32()))
        pq.write_table(rest.append_column(EMBEDDING_COLUMN, column), tmp)


def _read_existing(out: Path) -> list[pd.DataFrame]:
    tables = []
    for path in ([out] if out.is_file() else []) + sorted(parts_dir(out).glob("part-*.parquet")):
        try:
            tables.append(pd.read_parquet(path))
        except Exception as e:  # a shard is renamed only when complete, so this is real damage
            raise RuntimeError(f"{path}: unreadable label shard ({e}); delete it and rerun") from e
    return tables


def _next_part(folder: Path) -> int:
    numbers = [int(p.stem.split("-")[1]) for p in folder.glob("part-*.parquet")]
    return max(numbers, default=-1) + 1


class _ShardWriter:
    def __init__(self, folder: Path, rows_per_shard: int, *, embeddings: bool = False) -> None:
        self.folder, self.rows_per_shard = folder, rows_per_shard
        self.columns = output_columns(embeddings)
        self.rows: list[dict] = []
        self.index = None

    def add(self, rows: list[dict]) -> None:
        self.rows.extend(rows)
        if len(self.rows) >= self.rows_per_shard:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self.index = _next_part(self.folder) if self.index is None else self.index + 1
        table = pd.DataFrame(self.rows, columns=self.columns)
        _write_parquet(table, self.folder / f"part-{self.index:05d}.parquet")
        self.rows = []


# --- labelling ------------------------------------------------------------------------------------
def _streamed(
    teacher,
    batch: list[Segment],
    on_error: str,
    skipped: list[tuple[str, str]],
    embeddings: bool = False,
):
    """Label the whole-file segments of ``batch`` longer than the teacher's window by streaming
    them from disk (:func:`wav2small.backends.teacher_predict_files`: the same equal pieces the
    teacher cuts, bounded memory whatever the length).

    Returns:
        (the other segments, the streamed segments, their predictions: (3,) A/D/V each, or
        (A/D/V, embedding) pairs with ``embeddings``).
    """
    from wav2small.audio import AudioError, audio_info
    from wav2small.backends import teacher_predict_files

    window = getattr(teacher, "window_seconds", None)
    rest, kept, preds = [], [], []
    for seg in batch:
        if not window or seg.start != 0 or seg.duration <= window:
            rest.append(seg)
            continue
        try:
            if seg.end < audio_info(seg.path).duration:  # a part of a file: read as a clip
                rest.append(seg)
                continue
            got = teacher_predict_files(teacher, [seg.path], embedding=embeddings)
            preds.append((got[0][0], got[1][0]) if embeddings else got[0])
            kept.append(seg)
        except AudioError as e:
            if on_error == "raise":
                raise
            skipped.append((seg.file, str(e)))
    return rest, kept, preds


def _read(batch: list[Segment], on_error: str, skipped: list[tuple[str, str]]):
    from wav2small.audio import AudioError, read_audio

    kept, waves = [], []
    for seg in batch:
        try:
            waves.append(read_audio(seg.path, offset=seg.start, duration=seg.duration))
            kept.append(seg)
        except AudioError as e:
            if on_error == "raise":
                raise
            skipped.append((seg.file, str(e)))
    return kept, waves


def label(
    teacher,
    audio: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    batch_seconds: float = DEFAULT_BATCH_SECONDS,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    on_error: str = "raise",
    teacher_name: str | None = None,
    progress: bool = True,
    embeddings: bool = False,
) -> LabelResult:
    """Label audio with a teacher into a Parquet file (resumable, sharded, atomic).

    Args:
        teacher: a loaded teacher (see :func:`wav2small.models.teacher.load_teacher`) or any
            module mapping ``(wave, lengths)`` to (batch, 3) A/D/V.
        audio: folder, CSV manifest, audio file, or list of files (see :func:`read_manifest`).
        out: output ``.parquet`` path.
        batch_seconds: most padded audio per teacher call.
        shard_rows: rows per shard file.
        on_error: ``"raise"`` (stop at the first unreadable file; finished shards are kept) or
            ``"skip"`` (list it and go on).
        teacher_name: value of the ``teacher`` column (default: ``teacher.name``).
        progress: show a progress bar in audio seconds per second.
        embeddings: add the column ``embedding``: the teacher's pooled embedding per row
            (``teacher(..., embedding=True)``), a list of float32.

    Returns:
        A :class:`LabelResult`.

    Raises:
        AudioError: an unreadable file with ``on_error="raise"`` (the message names it).
        ValueError: bad arguments or an empty manifest.
        LockedError: another process is writing ``out``.
        ResumeError: ``out`` was started with another teacher or settings (``embeddings``
            included).
        InputError: ``on_error="skip"`` skipped every segment (nothing is written).
        UserError: ``embeddings=True`` for a teacher that gives no embedding.
        NonFiniteError: NaN/Inf A/D/V or embeddings (the clip is named).
    """
    with output_lock(out):  # a second writer of this output fails at once
        return _label_job(
            teacher,
            audio,
            Path(out),
            batch_seconds=batch_seconds,
            shard_rows=shard_rows,
            on_error=on_error,
            teacher_name=teacher_name,
            progress=progress,
            embeddings=embeddings,
        )


def _label_job(
    teacher,
    audio,
    out: Path,
    *,
    batch_seconds: float,
    shard_rows: int,
    on_error: str,
    teacher_name: str | None,
    progress: bool,
    embeddings: bool = False,
) -> LabelResult:
    """:func:`label` once the caller holds the output lock: check the job, then label."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    if batch_seconds <= 0 or shard_rows < 1:
        raise ValueError("batch_seconds must be > 0 and shard_rows ≥ 1")
    if embeddings:
        from wav2small.backends import teacher_embedding_dim

        teacher_embedding_dim(teacher)  # a teacher without one: its one-line error, now
    t0 = time.perf_counter()
    name = teacher_name or getattr(teacher, "name", type(teacher).__name__)
    job = {
        "teacher": name,
        "clip": bool(getattr(teacher, "clip", False)),
        "fingerprint": teacher_fingerprint(teacher),
        "embeddings": bool(embeddings),
    }
    start_job(out, job)
    return _label_locked(
        teacher, audio, out, name, batch_seconds, shard_rows, on_error, progress, t0, embeddings
    )


def _label_locked(
    teacher,
    audio,
    out: Path,
    name: str,
    batch_seconds,
    shard_rows,
    on_error,
    progress,
    t0,
    embeddings: bool = False,
) -> LabelResult:
    from tqdm.auto import tqdm

    from wav2small.backends import teacher_predict

    segments, skipped = probe(
        read_manifest(audio), on_error=on_error, shortest=shortest_input(teacher)
    )
    done = {
        _key(f, s, e)
        for table in _read_existing(out)
        for f, s, e in zip(table["file"], table["start"], table["end"], strict=True)
    }
    todo = [s for s in segments if s.key() not in done]
    seconds = sum(s.duration for s in todo)
    writer = _ShardWriter(parts_dir(out), shard_rows, embeddings=embeddings)
    labelled, labelled_seconds = 0, 0.0
    with tqdm(
        total=seconds,
        unit="audio-s",
        desc="label",
        bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s [{elapsed}<{remaining}, {rate_fmt}]",
        disable=not progress,
        dynamic_ncols=True,
    ) as bar:
        for batch in batches(todo, batch_seconds):
            rest, kept, preds = _streamed(teacher, batch, on_error, skipped, embeddings)
            read, waves = _read(rest, on_error, skipped)
            if read:
                kept += read
                got = teacher_predict(
                    teacher, waves, names=[s.file for s in read], embedding=embeddings
                )
                preds += list(zip(*got, strict=True)) if embeddings else list(got)
            if kept:
                writer.add([_row(s, p, name, embeddings) for s, p in zip(kept, preds, strict=True)])
                labelled += len(kept)
                labelled_seconds += sum(s.duration for s in kept)
            bar.update(min(sum(s.duration for s in batch), bar.total - bar.n))
    writer.flush()
    write_skipped(out, skipped)
    for file, reason in skipped:
        logger.warning("skipped %s: %s", file, reason)
    check_any_good(labelled + len(done), skipped)  # --on-error skip with nothing good: error
    rows = _merge(out, segments, embeddings=embeddings)
    return LabelResult(out, rows, labelled, skipped, labelled_seconds, time.perf_counter() - t0)


def _row(seg: Segment, pred, name: str, embeddings: bool) -> dict:
    """One output row: ``pred`` is (3,) A/D/V, or the pair (A/D/V, embedding)."""
    adv, emb = pred if embeddings else (pred, None)
    row = {
        "file": seg.file,
        "start": seg.start,
        "end": seg.end,
        **dict(zip(LABELS, map(float, adv), strict=True)),
        "teacher": name,
    }
    if embeddings:
        row[EMBEDDING_COLUMN] = np.asarray(emb, dtype=np.float32)
    return row


def _merge(out: Path, segments: Sequence[Segment], *, embeddings: bool = False) -> int:
    """Shards + existing output → ``out`` in manifest order, deduplicated; shards removed."""
    columns = output_columns(embeddings)
    tables = _read_existing(out)
    if not tables:
        table = pd.DataFrame(columns=columns)
    else:
        table = pd.concat(tables, ignore_index=True)
    keys = [
        _key(f, s, e) for f, s, e in zip(table["file"], table["start"], table["end"], strict=True)
    ]
    rank = {seg.key(): i for i, seg in enumerate(segments)}
    table = table.assign(_key=keys, _rank=[rank.get(k, len(rank)) for k in keys])
    table = table.drop_duplicates("_key", keep="first").sort_values("_rank", kind="stable")
    table = table.drop(columns=["_key", "_rank"]).reset_index(drop=True)
    _write_parquet(table[columns], out)
    folder = parts_dir(out)
    if folder.is_dir():
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
    return len(table)


def _load_cli_teacher(args):
    """The teacher ``--teacher`` names: an audonnx/ONNX folder (ONNX Runtime) or a torch one."""
    from wav2small.teachers.onnx import OnnxTeacher, is_onnx_teacher

    if is_onnx_teacher(args.teacher):  # audonnx/ONNX folder: ONNX Runtime, no torch
        return OnnxTeacher(args.teacher, threads=args.threads or None)
    import torch

    from wav2small.teachers import load_teacher

    if args.threads:
        torch.set_num_threads(args.threads)
    return load_teacher(args.teacher, device=args.device, clip=args.clip)


def report(result: LabelResult) -> int:
    """Print a label job's summary (rows, speed, skipped files) for the CLI; returns exit 0."""
    print(
        f"{result.out}: {result.rows} rows ({result.labelled} labelled now, "
        f"{result.audio_seconds:.1f} s of audio at {result.speed:.1f} audio-s/s)"
    )
    if result.skipped:  # each reason was logged once as a warning
        print(f"skipped {len(result.skipped)}, listed in {skipped_path(result.out)}")
    return 0


def label_cli(args) -> int:
    """``wav2small label`` entry point."""
    with output_lock(args.out):  # held from before the teacher loads: a second writer fails fast
        teacher = _load_cli_teacher(args)
        result = _label_job(
            teacher,
            args.audio,
            Path(args.out),
            batch_seconds=args.batch_seconds,
            shard_rows=args.shard_rows,
            on_error=args.on_error,
            teacher_name=None,
            progress=getattr(args, "progress", True),
            embeddings=getattr(args, "embeddings", False),
        )
    return report(result)


__all__ = [
    "COLUMNS",
    "EMBEDDING_COLUMN",
    "LabelResult",
    "Segment",
    "batches",
    "job_path",
    "label",
    "output_columns",
    "probe",
    "read_manifest",
    "shortest_input",
    "start_job",
    "teacher_fingerprint",
]
