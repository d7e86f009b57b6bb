"""Prediction: a :class:`Predictor` over files, folders and in-memory signals → a pandas table.

``Predictor(model)`` runs a torch checkpoint (``.safetensors``/``.ckpt``, or a preset name for
untrained plumbing runs) or an ONNX file (fp32 or int8) with ONNX Runtime. The ONNX path imports
no torch (and no scipy): it needs only numpy, pandas, onnxruntime, soundfile and soxr, the
``wav2small[runtime]`` set.

Every result is a DataFrame indexed by ``(file, start, end)`` (times in seconds, float, rounded
to the microsecond — the convention of ``labels.parquet``) with the columns ``arousal``,
``dominance``, ``valence``, always in that order (a model whose metadata lists its outputs in
another order is reordered).

Modes:

* **one row per file** (default). A Wav2Small ONNX export (token stages, see
  :mod:`wav2small.tokens`) is run in one exact pass in bounded memory: the file is read in 1 s
  blocks, the trunk runs on 1 s chunks overlapping by its receptive field, the attention pooling
  is accumulated online and the head runs once; an utterance-normalised model first reads the
  file once for its mean and RMS. The row equals one pass over the whole file (up to float
  rounding) and the working set does not grow with the file's length. Other models (torch,
  MobileNets) run files up to ``max_seconds`` (20 s) in one piece; a longer file is cut into
  ``ceil(duration / max_seconds)`` equal pieces streamed from disk, and the row is the
  length-weighted mean of the pieces' outputs (the mean emotion of ~20 s stretches).
* **one row per window** (``win``/``hop``): windows start at ``0, hop, 2·hop, …`` and are
  streamed from disk (:func:`wav2small.audio.iter_windows`); the last window is cut at the end of
  the file. A tail shorter than one analysis frame (64 samples = 4 ms) is dropped. Each window is
  an independent input (its own normalisation and edges).
* **timeline** (:meth:`Predictor.timeline`, :meth:`Predictor.stream`): rows
  ``(max(0, t − context), t)`` for ``t = step, 2·step, …`` plus a final row ending at the end of
  the audio; Wav2Small's 250 tokens/s make 4 ms the finest step. With a Wav2Small ONNX export
  whose normalisation is local (``norm`` metadata ``"local"``) every token is computed once, in
  the context of the whole input, and each row pools the tokens inside its window and runs the
  head (:class:`TokenTimelineStream`): a 4 ms step costs about one offline pass plus one head
  per row, and a stream equals the timeline. With utterance normalisation a row is the model run
  on the isolated window (its own statistics), so each window is re-run (:class:`TimelineStream`,
  as the browser page does); ``stream(norm=...)`` with known statistics reuses tokens instead.
  Other models re-run each window.

Bad input raises :class:`wav2small.audio.AudioError` naming the file and the problem; with
``on_error="skip"`` the file gets one row ``(file, NaN, NaN)`` of NaN values, the reasons are in
``frame.attrs["skipped"]`` (``{file: reason}``) and the other files' results are complete.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from wav2small import LABELS, SAMPLE_RATE
from wav2small.audio import (
    AudioError,
    audio_info,
    iter_blocks,
    iter_windows,
    read_audio,
    to_mono_16k,
    validate,
)
from wav2small.backends import (  # noqa: F401  (public names, also importable from here)
    BACKENDS,
    DEFAULT_THREADS,
    Backend,
    OnnxBackend,
    TorchBackend,
    make_backend,
)
from wav2small.config import TimelineOptions
from wav2small.inputs import (  # noqa: F401 (AUDIO_EXTENSIONS, skipped_path: public here too)
    AUDIO_EXTENSIONS,
    atomic_write,
    list_audio,
    output_lock,
    skipped_path,
    write_skipped,
)
from wav2small.tokens import (
    OnlinePool,
    StagedModel,
    TokenRunner,
    WindowPool,
    signal_stats,
)

logger = logging.getLogger(__name__)

#: Index levels of every result table.
INDEX = ("file", "start", "end")
ON_ERROR = ("raise", "skip")
TORCH_SUFFIXES = (".safetensors", ".ckpt", ".pt")
#: Longest piece run in one pass in one-row-per-file mode (longer files are averaged over pieces).
MAX_SECONDS = 20.0
#: Most audio (seconds) stacked into one batch of equal-length windows.
BATCH_SECONDS = 10.0
#: Most windows per batch.
BATCH_SIZE = 16
#: Shortest input the model takes: one analysis frame (n_fft = 64 samples = 4 ms).
MIN_SAMPLES = 64
#: Samples per output token of Wav2Small (hop 32, then a stride-2 pool): 250 tokens/s.
TOKEN_SAMPLES = 64
#: Timeline defaults (seconds).
DEFAULT_STEP = TimelineOptions.step
DEFAULT_CONTEXT = TimelineOptions.context
#: Seconds of audio read from disk at a time for a file's timeline.
TIMELINE_BLOCK_SECONDS = 10.0
#: Seconds of audio read from disk at a time by the chunked (token-level) paths.
READ_BLOCK_SECONDS = 1.0
#: Fewest tokens computed per trunk call in a live stream by default, and at least
#: STREAM_FIELD_MULTIPLE × the model's receptive field (TokenTimelineStream.default_chunk_tokens).
STREAM_CHUNK_TOKENS = 50
#: A live stream's trunk call is by default this many receptive fields long (a file's: 4,
#: ``tokens.OVERLAP_FACTOR``): each call recomputes one field as overlap, and the stream's fixed
#: costs per call (the overlap, a WindowPool compaction every few calls) fall with the calls.
#: Latency vs CPU (TokenTimelineStream.latency; bench_predict.py prints the trade-off):
#: wav2small-paper (341-token field), 60 s at a 4 ms step in 20 ms pushes, stream ÷ one
#: whole-file pass, medians of interleaved rounds while other jobs loaded both cores (load
#: 3.5–4.5, five runs): 4 fields (1364 tokens, latency 6.15 s) 1.33–1.44×, 6 (2046, 8.88 s)
#: 1.20–1.32×, 8 (2728, 11.61 s) 1.18–1.31× (session 6's code, interleaved in three of them:
#: 1.46–1.53×, 1.35–1.40×, 1.33–1.38×).
STREAM_FIELD_MULTIPLE = 6
TIME_DECIMALS = 6

Row = tuple[str, float, float, np.ndarray]


# --- inputs ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Item:
    """One input: a file (``path``) or an in-memory signal at ``sample_rate``."""

    name: str
    path: str | None = None
    signal: np.ndarray | None = None
    sample_rate: int = SAMPLE_RATE


def _is_pair(x) -> bool:
    return (
        isinstance(x, tuple)
        and len(x) == 2
        and isinstance(x[0], np.ndarray)
        and isinstance(x[1], int | np.integer)
    )


def _folder(path: Path) -> list[_Item]:
    return [_Item(str(p), path=str(p)) for p in list_audio(path)]


def collect_inputs(inputs) -> list[_Item]:
    """Normalise what :meth:`Predictor.predict` accepts into a flat list of items.

    Accepted: a path (file or folder, searched recursively for :data:`AUDIO_EXTENSIONS`), an
    ``(array, sample_rate)`` pair, a ``{name: (array, sample_rate)}`` mapping, or a list of
    paths and pairs. Arrays are named ``<array i>`` after their position in the list.

    Raises:
        ValueError: a folder without audio, or nothing to predict.
        TypeError: an input of another type.
    """
    if isinstance(inputs, Mapping):
        items = [_pair_item(name, pair) for name, pair in inputs.items()]
    else:
        single = isinstance(inputs, str | os.PathLike) or _is_pair(inputs)
        items = []
        for i, x in enumerate([inputs] if single else list(inputs)):
            if isinstance(x, str | os.PathLike):
                p = Path(x)
                items += _folder(p) if p.is_dir() else [_Item(os.fspath(x), path=os.fspath(x))]
            else:
                items.append(_pair_item(f"<array {i}>", x))
    if not items:
        raise ValueError("nothing to predict: no inputs given")
    return items


def _pair_item(name: str, pair) -> _Item:
    if not _is_pair(pair):
        raise TypeError(
            f"{name}: expected a path or an (np.ndarray, sample_rate) pair, "
            f"got {type(pair).__name__}"
        )
    return _Item(str(name), signal=pair[0], sample_rate=int(pair[1]))


# --- windows --------------------------------------------------------------------------------
def _seconds(n: int) -> float:
    return round(n / SAMPLE_RATE, TIME_DECIMALS)


def _seconds_array(n: np.ndarray) -> np.ndarray:
    """:func:`_seconds` of many sample counts, equal to it element by element (float64).

    An even ``n`` is ``n·62.5`` µs, a whole number of µs: ``n / 16000`` (correctly rounded) is
    already the double nearest to that 6-decimal value, which is what ``round`` returns. Odd
    counts (half-µs ties, decided by the binary value) go through ``round`` itself.
    """
    n = np.asarray(n, np.int64)
    out = n / SAMPLE_RATE
    if SAMPLE_RATE != 16000 or TIME_DECIMALS != 6:  # the argument above is for these
        return np.array([_seconds(int(v)) for v in n], np.float64)
    for i in np.flatnonzero(n % 2):
        out[i] = _seconds(int(n[i]))
    return out


def _samples(seconds: float, what: str) -> int:
    if not seconds or seconds <= 0 or not math.isfinite(seconds):
        raise ValueError(f"{what} must be a positive number of seconds, got {seconds}")
    return max(1, round(seconds * SAMPLE_RATE))


def window_bounds(n_samples: int, win_n: int, hop_n: int) -> list[tuple[int, int]]:
    """Sample bounds of the windows :func:`wav2small.audio.iter_windows` yields for a signal.

    Windows start at ``0, hop, 2·hop, …``; the first one that would pass the end is cut there
    and is the last. Tails shorter than :data:`MIN_SAMPLES` are dropped (unless alone).
    """
    bounds, start = [], 0
    while start < n_samples:
        end = min(start + win_n, n_samples)
        bounds.append((start, end))
        if end == n_samples:
            break
        start += hop_n
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < MIN_SAMPLES:
        bounds.pop()
    return bounds


def timeline_bounds(n_samples: int, step_n: int, context_n: int) -> list[tuple[int, int]]:
    """Sample bounds of the timeline rows: ends every ``step_n``, plus one at the end."""
    ends = list(range(step_n, n_samples + 1, step_n))
    if n_samples >= MIN_SAMPLES and (not ends or ends[-1] < n_samples):
        ends.append(n_samples)
    return [(max(0, end - context_n), end) for end in ends]


def _check_timeline(step: float, context: float) -> tuple[int, int]:
    step_n, context_n = _samples(step, "step"), _samples(context, "context")
    if min(step_n, context_n) < MIN_SAMPLES:
        raise ValueError(
            f"step and context must be at least {MIN_SAMPLES} samples "
            f"({1000 * MIN_SAMPLES / SAMPLE_RATE:g} ms), got {step} and {context} s"
        )
    return step_n, context_n


def _too_short(name: str, n: int) -> AudioError:
    return AudioError(
        f"{name}: too short: {n} samples at {SAMPLE_RATE} Hz, the model needs at "
        f"least {MIN_SAMPLES} ({1000 * MIN_SAMPLES / SAMPLE_RATE:g} ms)"
    )


def _check_file_length(item: _Item) -> int:
    """The file's length in samples at 16 kHz (from its header); raises if too short."""
    info = audio_info(item.path)
    n = math.ceil(info.frames * SAMPLE_RATE / info.sample_rate)
    if n < MIN_SAMPLES:
        raise _too_short(item.name, n)
    return n


def _signal(item: _Item) -> np.ndarray:
    x = to_mono_16k(item.signal, item.sample_rate, name=item.name)
    if len(x) < MIN_SAMPLES:
        raise _too_short(item.name, len(x))
    return x


# --- the predictor --------------------------------------------------------------------------
class Predictor:
    """Arousal, dominance and valence for files, folders and signals.

    Args:
        model: ``.onnx`` file (ONNX Runtime, torch-free), torch checkpoint (``.safetensors``,
            ``.ckpt``), preset name (untrained) or a torch module.
        backend: ``"auto"`` (ONNX for ``.onnx`` files, torch otherwise), ``"onnx"`` or ``"torch"``.
        threads: ONNX Runtime intra-op threads (default 1); for torch, if given,
            ``torch.set_num_threads`` (process-wide).
        max_seconds: longest piece run in one pass in one-row-per-file mode (see module doc).
        batch_size: most equal-length windows per model call in windowed mode.
        mem_arena: ONNX only: keep ONNX Runtime's CPU memory arena (see
            :func:`wav2small.backends.session_options`).

    Example:
        >>> import wav2small
        >>> p = wav2small.load("model.int8.onnx")  # doctest: +SKIP
        >>> p.predict("clips/")                    # doctest: +SKIP
    """

    def __init__(
        self,
        model,
        *,
        backend: str = "auto",
        threads: int | None = None,
        max_seconds: float = MAX_SECONDS,
        batch_size: int = BATCH_SIZE,
        mem_arena: bool = True,
    ) -> None:
        self.backend = make_backend(model, backend=backend, threads=threads, mem_arena=mem_arena)
        self.max_n = _samples(max_seconds, "max_seconds")
        if self.max_n < MIN_SAMPLES:
            raise ValueError(f"max_seconds must be at least {MIN_SAMPLES} samples")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.model = model if isinstance(model, str | os.PathLike) else type(model).__name__
        self.staged = _staged_model(self.backend)
        #: Output columns: arousal, dominance, valence (a torch module may name its own, e.g. an
        #: early exit's classes; see :class:`wav2small.backends.TorchBackend`).
        self.labels = tuple(getattr(self.backend, "labels", LABELS))

    def __repr__(self) -> str:
        return f"Predictor({os.fspath(self.model)!r}, backend={self.backend.name!r})"

    @property
    def metadata(self) -> dict[str, str]:
        """Facts stored with the model (ONNX metadata_props; the preset for torch)."""
        return dict(self.backend.metadata)

    def __call__(self, signals: np.ndarray) -> np.ndarray:
        """Raw model call: (batch, samples) float32 at 16 kHz → (batch, 3) A/D/V."""
        signals = np.asarray(signals, dtype=np.float32)
        if signals.ndim == 1:
            signals = signals[None, :]
        if signals.shape[-1] < MIN_SAMPLES:
            raise ValueError(
                f"input of {signals.shape[-1]} samples is shorter than one "
                f"frame ({MIN_SAMPLES} samples)"
            )
        return self.backend(signals)

    # -- public API --
    def predict(
        self,
        inputs,
        *,
        win: float | None = None,
        hop: float | None = None,
        clip: bool = False,
        num_workers: int = 1,
        on_error: str = "raise",
        progress: bool = True,
    ) -> pd.DataFrame:
        """A/D/V for every input: one row per file, or per window with ``win``/``hop``.

        Args:
            inputs: path, folder, ``(array, sample_rate)`` pair, ``{name: pair}`` mapping, or a
                list of paths and pairs (see :func:`collect_inputs`).
            win: window length in seconds; ``None`` gives one row per file.
            hop: window hop in seconds (default ``win``); needs ``win``.
            clip: clip outputs to [0, 1].
            num_workers: files processed concurrently (threads; model calls release the GIL).
            on_error: ``"raise"`` the first bad file's :class:`AudioError`, or ``"skip"`` it.
            progress: show a progress bar (tqdm; hidden when stderr is not a terminal).

        Returns:
            DataFrame indexed by ``(file, start, end)`` with columns arousal, dominance,
            valence; skipped files are rows ``(file, NaN, NaN)`` of NaN, with the reasons in
            ``frame.attrs["skipped"]``.

        Raises:
            AudioError: a bad file, with ``on_error="raise"``.
            ValueError: bad ``win``/``hop``/``on_error``, a folder without audio.
        """
        if win is None and hop is not None:
            raise ValueError("hop needs win: give a window length too")
        if win is None:
            fn = self._file_rows
        else:
            win_n = _samples(win, "win")
            hop_n = win_n if hop is None else _samples(hop, "hop")
            if win_n < MIN_SAMPLES:
                raise ValueError(f"win must be at least {MIN_SAMPLES} samples, got {win} s")
            fn = lambda item: self._window_rows(item, win_n, hop_n)  # noqa: E731
        return self._run(
            inputs, fn, clip=clip, num_workers=num_workers, on_error=on_error, progress=progress
        )

    def timeline(
        self,
        inputs,
        *,
        step: float = DEFAULT_STEP,
        context: float = DEFAULT_CONTEXT,
        clip: bool = False,
        num_workers: int = 1,
        on_error: str = "raise",
        progress: bool = True,
    ) -> pd.DataFrame:
        """A/D/V every ``step`` seconds over the last ``context`` seconds of each input.

        Rows are ``(file, max(0, t − context), t)`` for ``t = step, 2·step, …`` and a last row
        ending at the end of the input. Files are streamed from disk in bounded memory through a
        :class:`TimelineStream`; in-memory signals are sliced directly. Both give exactly the
        rows a stream fed with any chunking gives.

        Args:
            inputs: as :meth:`predict`.
            step: seconds between rows (≥ 4 ms, one Wav2Small token).
            context: seconds of audio behind each row (≥ 4 ms).
            clip, num_workers, on_error, progress: as :meth:`predict`.

        Returns:
            DataFrame indexed by ``(file, start, end)``, columns arousal, dominance, valence.
        """
        step_n, context_n = _check_timeline(step, context)
        fn = lambda item: self._timeline_rows(item, step_n, context_n)  # noqa: E731
        return self._run(
            inputs, fn, clip=clip, num_workers=num_workers, on_error=on_error, progress=progress
        )

    def stream(
        self,
        *,
        step: float = DEFAULT_STEP,
        context: float = DEFAULT_CONTEXT,
        sample_rate: int = SAMPLE_RATE,
        name: str = "<stream>",
        clip: bool = False,
        norm: np.ndarray | None = None,
        chunk_tokens: int | None = None,
    ) -> TimelineStream:
        """A stream for live audio fed chunk by chunk (rows as :meth:`timeline`).

        With a Wav2Small ONNX export whose normalisation is local, or given ``norm`` statistics
        (mean, scale) for an utterance-normalised one, every token is computed once
        (:class:`TokenTimelineStream`, ``chunk_tokens`` per trunk call: latency vs CPU) and the
        rows equal :meth:`timeline` of the same audio (for an utterance model: when ``norm``
        holds that audio's statistics). Otherwise (torch models, MobileNets, utterance
        normalisation without statistics) a :class:`TimelineStream` re-runs the model on each
        row's window.
        """
        if self.staged is not None and (self.staged.norm != "utterance" or norm is not None):
            return TokenTimelineStream(
                self.staged,
                step=step,
                context=context,
                sample_rate=sample_rate,
                name=name,
                clip=clip,
                norm=norm,
                chunk_tokens=chunk_tokens,
            )
        return TimelineStream(
            self, step=step, context=context, sample_rate=sample_rate, name=name, clip=clip
        )

    # -- per-item work --
    def _run(
        self,
        inputs,
        fn: Callable[[_Item], list[Row]],
        *,
        clip: bool,
        num_workers: int,
        on_error: str,
        progress: bool,
    ) -> pd.DataFrame:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        items = collect_inputs(inputs)
        skipped: dict[str, str] = {}

        def work(item: _Item) -> list[Row]:
            try:
                return fn(item)
            except (AudioError, OSError) as exc:
                if on_error == "raise":
                    raise
                logger.warning("skipped %s", exc)
                skipped[item.name] = str(exc)
                return [(item.name, math.nan, math.nan, np.full(len(self.labels), np.nan))]

        rows: list[Row] = []
        for result in _progress(_map(work, items, num_workers), len(items), progress):
            rows += result
        frame = rows_to_frame(rows, clip=clip, columns=self.labels)
        frame.attrs["skipped"] = skipped
        return frame

    def _blocks(self, item: _Item) -> Iterator[np.ndarray]:
        """The item's 16 kHz mono samples as blocks (files read from disk block by block)."""
        if item.path is None:
            x = _signal(item)
            n = round(READ_BLOCK_SECONDS * SAMPLE_RATE)
            return (x[i : i + n] for i in range(0, len(x), n))
        _check_file_length(item)
        return iter_blocks(item.path, block_seconds=READ_BLOCK_SECONDS)

    def _norm(self, item: _Item) -> np.ndarray | None:
        """Whole-input (mean, scale) for an utterance-normalised staged model (a first pass)."""
        if self.staged.norm != "utterance":
            return None
        return signal_stats(self._blocks(item))

    def _staged_file_rows(self, item: _Item) -> list[Row]:
        """One row per file, exactly one pass: chunked trunk, online pooling, bounded memory."""
        norm = self._norm(item)
        runner = TokenRunner(self.staged, norm=norm)
        pool, n = OnlinePool(), 0
        for block in self._blocks(item):
            n += len(block)
            for _, *maps in runner.push(block):
                pool.add(*maps)
        if n < MIN_SAMPLES:
            raise _too_short(item.name, n)
        for _, *maps in runner.finish():
            pool.add(*maps)
        trend = pool.trend()  # a trend model's (K,), else None
        # one row: the graph's own head (StagedModel.head would first read its numpy form)
        values = self.staged.onnx_head(pool.pooled()[None], None if trend is None else trend[None])
        return [(item.name, 0.0, _seconds(n), values[0])]

    def _file_rows(self, item: _Item) -> list[Row]:
        """One row per file: one pass, or the length-weighted mean over equal pieces."""
        if self.staged is not None:
            return self._staged_file_rows(item)
        if item.path is None:
            x = _signal(item)
            n = len(x)
        else:
            n, x = _check_file_length(item), None
        if n <= self.max_n:
            if x is None:
                x = read_audio(item.path)
                if len(x) < MIN_SAMPLES:  # the header's estimate was a sample or two long
                    raise _too_short(item.name, len(x))
            return [(item.name, 0.0, _seconds(len(x)), self(x)[0])]
        piece_n = math.ceil(n / math.ceil(n / self.max_n))
        if x is not None:
            pieces = (x[s : s + piece_n] for s in range(0, n, piece_n))
        else:
            pieces = (
                w
                for _, _, w in iter_windows(
                    item.path, win=piece_n / SAMPLE_RATE, hop=piece_n / SAMPLE_RATE
                )
            )
        total, weight, end = np.zeros(len(self.labels)), 0, 0
        for piece in pieces:
            if len(piece) < MIN_SAMPLES:  # a resampling remainder of a few samples
                end += len(piece)
                continue
            total += len(piece) * self(piece)[0].astype(np.float64)
            weight += len(piece)
            end += len(piece)
        return [(item.name, 0.0, _seconds(end), (total / weight).astype(np.float32))]

    def _window_rows(self, item: _Item, win_n: int, hop_n: int) -> list[Row]:
        if item.path is None:
            x = _signal(item)
            windows = ((s, e, x[s:e]) for s, e in window_bounds(len(x), win_n, hop_n))
        else:
            _check_file_length(item)
            windows = _file_windows(item.path, win_n, hop_n)
        rows: list[Row] = []
        per_batch = max(1, min(self.batch_size, round(BATCH_SECONDS * SAMPLE_RATE / win_n)))
        for batch in _equal_length_batches(windows, per_batch):
            out = self(np.stack([w for _, _, w in batch]))
            rows += [
                (item.name, _seconds(s), _seconds(e), y)
                for (s, e, _), y in zip(batch, out, strict=True)
            ]
        return rows

    def _timeline_rows(self, item: _Item, step_n: int, context_n: int) -> list[Row]:
        if self.staged is not None and self.staged.norm != "utterance":
            stream = TokenTimelineStream(
                self.staged,
                step=step_n / SAMPLE_RATE,
                context=context_n / SAMPLE_RATE,
                name=item.name,
                norm=self._norm(item),
                chunk_tokens=self.staged.chunk_tokens(),
            )
            for block in self._blocks(item):
                stream._feed(block)
            stream._finish()
            return stream._take()
        if item.path is None:
            x = _signal(item)
            return [
                (item.name, _seconds(s), _seconds(e), self(x[s:e])[0])
                for s, e in timeline_bounds(len(x), step_n, context_n)
            ]
        _check_file_length(item)
        stream = TimelineStream(
            self, step=step_n / SAMPLE_RATE, context=context_n / SAMPLE_RATE, name=item.name
        )
        block = TIMELINE_BLOCK_SECONDS
        for _, _, chunk in iter_windows(item.path, win=block, hop=block):
            stream._feed(chunk)
        stream._finish()
        return stream._take()


def _file_windows(path: str, win_n: int, hop_n: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """Windows of a file as sample bounds, dropping a tail shorter than MIN_SAMPLES."""
    prev = None
    for start, end, w in iter_windows(path, win=win_n / SAMPLE_RATE, hop=hop_n / SAMPLE_RATE):
        if prev is not None:
            yield prev
        prev = (round(start * SAMPLE_RATE), round(end * SAMPLE_RATE), w)
    if prev is not None and (len(prev[2]) >= MIN_SAMPLES or prev[0] == 0):
        yield prev


def _equal_length_batches(windows, size: int) -> Iterator[list]:
    """Group consecutive windows of equal length into batches of at most ``size``."""
    batch: list = []
    for w in windows:
        if batch and (len(batch) == size or len(w[2]) != len(batch[0][2])):
            yield batch
            batch = []
        batch.append(w)
    if batch:
        yield batch


def _map(fn, items: list, workers: int) -> Iterator:
    """``map`` in input order, on a thread pool when ``workers > 1``."""
    if workers == 1:
        yield from map(fn, items)
        return
    pool = ThreadPoolExecutor(workers)
    try:
        yield from pool.map(fn, items)
    finally:  # on an error, do not finish the queued files first
        pool.shutdown(wait=True, cancel_futures=True)


def _progress(results: Iterable, total: int, show: bool) -> Iterable:
    if not show:  # tqdm.auto's import alone costs ~3 MB of RSS
        return results
    from tqdm.auto import tqdm

    return tqdm(
        results,
        total=total,
        unit="file",
        desc="predict",
        disable=None if show else True,
        leave=False,
    )


def rows_to_frame(
    rows: list[Row], *, clip: bool = False, columns: Sequence[str] = LABELS
) -> pd.DataFrame:
    """Rows ``(file, start, end, values)`` → the ``(file, start, end)``-indexed table with
    ``columns`` (A/D/V unless a model names its outputs otherwise)."""
    return _frame(
        [r[0] for r in rows],
        np.array([r[1:3] for r in rows], dtype=np.float64).reshape(-1, 2),
        np.stack([r[3] for r in rows]) if rows else np.zeros((0, len(columns))),
        clip=clip,
        columns=columns,
    )


def _frame(
    names: list[str], bounds: np.ndarray, values: np.ndarray, *, clip: bool, columns
) -> pd.DataFrame:
    """The table of rows given as names, (rows, 2) start/end seconds and (rows, columns)."""
    index = pd.MultiIndex.from_arrays([names, bounds[:, 0], bounds[:, 1]], names=INDEX)
    values = values.astype(np.float32)
    if clip:
        values = np.clip(values, 0.0, 1.0)
    return pd.DataFrame(values, index=index, columns=list(columns))


# pandas builds its first string-keyed MultiIndex by importing pyarrow's compatibility layer (≈ 7
# MB of RSS, once per process). Paid here, with the pandas import, rather than inside the first
# predict() where it would look like working memory of the model.
rows_to_frame([("", 0.0, 0.0, np.zeros(len(LABELS), np.float32))])


# --- streaming timeline ---------------------------------------------------------------------
# what push_array returns when a push completes no row (most pushes): shared, so read-only
_NO_BOUNDS = np.zeros((0, 2))
_NO_VALUES = np.zeros((0, len(LABELS)), np.float32)
_NO_BOUNDS.flags.writeable = _NO_VALUES.flags.writeable = False


class TimelineStream:
    """A/D/V every ``step`` seconds over the last ``context`` seconds of a live stream.

    Feed chunks of any size with :meth:`push`; each call returns the rows that chunk completed.
    :meth:`close` returns the last row (ending at the end of the stream). Memory holds at most
    ``context + step`` seconds plus one chunk. The rows equal :meth:`Predictor.timeline` on the
    whole signal (same windows, one window per model call).

    Args:
        predictor: the :class:`Predictor` (or any callable (batch, samples) → (batch, 3)).
        step: seconds between rows (≥ 4 ms).
        context: seconds of audio behind each row (≥ 4 ms).
        sample_rate: rate of the pushed chunks; other than 16 kHz they are resampled as a
            stream (soxr).
        name: the ``file`` index value of the rows.
        clip: clip outputs to [0, 1].

    Example:
        >>> s = predictor.stream(step=0.5, context=4.0)  # doctest: +SKIP
        >>> for chunk in microphone():                   # doctest: +SKIP
        ...     print(s.push(chunk))
    """

    def __init__(
        self,
        predictor: Callable[[np.ndarray], np.ndarray],
        *,
        step: float = DEFAULT_STEP,
        context: float = DEFAULT_CONTEXT,
        sample_rate: int = SAMPLE_RATE,
        name: str = "<stream>",
        clip: bool = False,
    ) -> None:
        self.step_n, self.context_n = _check_timeline(step, context)
        self.predict, self.name, self.clip = predictor, name, clip
        self.sample_rate = int(sample_rate)
        if self.sample_rate <= 0:
            raise ValueError(f"{name}: invalid sample rate {sample_rate}")
        self._resampler = None
        if self.sample_rate != SAMPLE_RATE:
            import soxr

            from wav2small.audio import RESAMPLE_QUALITY

            self._resampler = soxr.ResampleStream(
                self.sample_rate, SAMPLE_RATE, 1, dtype="float32", quality=RESAMPLE_QUALITY
            )
        self._buf = np.zeros(0, np.float32)
        self._first = 0  # absolute index of _buf[0]
        self._next_end = self.step_n
        self._last_end = 0
        self._rows: list[Row] = []
        self._empty: pd.DataFrame | None = None
        self.closed = False

    @property
    def seconds(self) -> float:
        """Seconds of (16 kHz) audio received so far."""
        return (self._first + len(self._buf)) / SAMPLE_RATE

    def push(self, chunk: np.ndarray) -> pd.DataFrame:
        """Add samples (``(samples,)`` or ``(samples, channels)``); return the rows completed.

        Raises:
            AudioError: NaN/Inf samples or a bad shape (naming the stream).
            RuntimeError: the stream is closed.
        """
        self._add(chunk)
        return self._frame()

    def close(self) -> pd.DataFrame:
        """End the stream: return the remaining rows (the last one ends at the stream's end)."""
        self._close()
        return self._frame()

    def close_array(self) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`close` without pandas: ``(bounds, values)`` as :meth:`push_array`."""
        self._close()
        bounds, values = self._take_arrays()
        return bounds, np.clip(values, 0.0, 1.0) if self.clip and len(values) else values

    def _close(self) -> None:
        if not self.closed:
            if self._resampler is not None:
                self._feed(self._resampler.resample_chunk(np.zeros(0, np.float32), last=True))
            self._finish()

    # -- internals (also used by Predictor.timeline on files) --
    def _feed(self, x: np.ndarray) -> None:
        self._buf = np.concatenate([self._buf, x])  # a copy: callers may reuse their chunk
        total = self._first + len(self._buf)
        while self._next_end <= total:
            self._emit(self._next_end)
            self._next_end += self.step_n
        # the next row, or a last row ending before it, starts after next_end - step - context
        keep = max(0, self._next_end - self.step_n - self.context_n) - self._first
        if keep > 0:
            self._buf, self._first = self._buf[keep:], self._first + keep

    def _emit(self, end: int) -> None:
        start = max(0, end - self.context_n)
        window = self._buf[start - self._first : end - self._first]
        self._rows.append((self.name, _seconds(start), _seconds(end), self.predict(window)[0]))
        self._last_end = end

    def _finish(self) -> None:
        self.closed = True
        total = self._first + len(self._buf)
        if total > self._last_end and total >= MIN_SAMPLES:
            self._emit(total)

    def _take(self) -> list[Row]:
        rows, self._rows = self._rows, []
        return rows

    def _frame(self) -> pd.DataFrame:
        rows = self._take()
        if not rows:  # most pushes of a live stream complete no row: skip building an index
            if self._empty is None:
                self._empty = rows_to_frame([], clip=self.clip)
            return self._empty.copy()
        return rows_to_frame(rows, clip=self.clip)

    def push_array(self, chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`push` without pandas: ``(bounds, values)``: (rows, 2) seconds, (rows, 3)."""
        if (
            type(chunk) is np.ndarray
            and chunk.dtype == np.float32
            and chunk.ndim == 1
            and self._resampler is None
            and not self.closed
        ):  # what a live stream pushes 50 times a second: only to check and feed (as _add)
            if chunk.size:
                self._feed(validate(chunk, self.name))
        else:
            self._add(chunk)
        bounds, values = self._take_arrays()
        return bounds, np.clip(values, 0.0, 1.0) if self.clip and len(values) else values

    def _add(self, chunk: np.ndarray) -> None:
        """Check, convert (mono, 16 kHz, float32) and feed one pushed chunk."""
        if self.closed:
            raise RuntimeError(f"{self.name}: push() after close()")
        if (
            type(chunk) is np.ndarray
            and chunk.dtype == np.float32
            and chunk.ndim == 1
            and self._resampler is None
        ):  # what a live stream pushes 50 times a second: nothing to convert, only to check
            if chunk.size:
                self._feed(validate(chunk, self.name))
            return
        chunk = np.asarray(chunk)
        if chunk.size:
            x = to_mono_16k(chunk, SAMPLE_RATE, name=self.name)  # checks, mono, float32
            if self._resampler is not None:
                x = self._resampler.resample_chunk(x)
            self._feed(x)

    def _take_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The completed rows as (rows, 2) seconds and (rows, labels) values; forgets them."""
        if not self._rows:
            return _NO_BOUNDS, _NO_VALUES
        rows = self._take()
        bounds = np.array([(r[1], r[2]) for r in rows], np.float64).reshape(-1, 2)
        return bounds, np.array([r[3] for r in rows], np.float32).reshape(-1, len(LABELS))


class TokenTimelineStream(TimelineStream):
    """A timeline stream that computes every token once (staged Wav2Small ONNX models).

    The trunk runs on each ``chunk_tokens`` new tokens plus the receptive field as overlap
    (:class:`wav2small.tokens.TokenRunner`); each row pools the tokens inside its window
    ``(max(0, t − context), t)`` from prefix sums (:class:`wav2small.tokens.WindowPool`) and
    runs only the head. Tokens are computed in the context of the whole stream, so a row's
    first and last ~7 tokens see the neighbouring audio rather than the zero padding a model
    run on the isolated window would see; :meth:`Predictor.timeline` uses the same definition,
    and the rows of a stream equal it whatever the chunking (up to float rounding).

    Latency: a row ending at ``t`` is emitted once its last token is computed, i.e. after
    ``right`` samples of look-ahead (28 ms for the released trunk, 0.70 s for wav2small-paper)
    and up to ``chunk_tokens`` tokens of batching: :attr:`latency` seconds at most (8.88 s for
    wav2small-paper by default, 0.34 s for the released trunk; a smaller ``chunk_tokens`` trades
    CPU for latency: 1364 tokens, 6.15 s, cost ≈ 5–15 % more, see :data:`STREAM_FIELD_MULTIPLE`).

    Args:
        staged: the model's stages (:attr:`Predictor.staged`).
        norm: (mean, scale) statistics, required for ``norm == "utterance"`` models.
        chunk_tokens: tokens per trunk call (default: :meth:`default_chunk_tokens`): latency
            vs CPU.
        step, context, sample_rate, name, clip: as :class:`TimelineStream`.
    """

    def __init__(
        self,
        staged: StagedModel,
        *,
        step: float = DEFAULT_STEP,
        context: float = DEFAULT_CONTEXT,
        sample_rate: int = SAMPLE_RATE,
        name: str = "<stream>",
        clip: bool = False,
        norm: np.ndarray | None = None,
        chunk_tokens: int | None = None,
    ) -> None:
        super().__init__(
            staged.head, step=step, context=context, sample_rate=sample_rate, name=name, clip=clip
        )
        self.staged = staged
        if chunk_tokens is None:
            chunk_tokens = self.default_chunk_tokens(staged)
        self._runner = TokenRunner(staged, norm=norm, chunk_tokens=chunk_tokens)
        self._pool = WindowPool()
        self._total = 0
        # a row may end at samples ≤ this (its last token, end // token_samples, is computed)
        self._rows_until = staged.token_samples - 1
        # pushes that can complete neither a chunk of tokens nor a row are only kept (copied)
        # until one can: while the samples received stay below _quiet_until
        self._pending: list[np.ndarray] = []
        self._quiet_until = self._runner.due
        self._blocks: list[tuple[np.ndarray, np.ndarray]] = []  # (bounds, values) not yet taken

    @property
    def seconds(self) -> float:
        """Seconds of (16 kHz) audio received so far."""
        return self._total / SAMPLE_RATE

    @staticmethod
    def default_chunk_tokens(staged: StagedModel) -> int:
        """Tokens per trunk call of a stream by default: :data:`STREAM_CHUNK_TOKENS` and at least
        :data:`STREAM_FIELD_MULTIPLE` × the receptive field (wav2small-paper: 2046, the released
        trunk: 78)."""
        field = STREAM_FIELD_MULTIPLE * staged.context_tokens
        return staged.chunk_tokens(max(STREAM_CHUNK_TOKENS, field))

    @property
    def latency(self) -> float:
        """Most seconds between the end of a row's window and the push that returns it."""
        s = self.staged.token_samples
        return (self._runner.chunk_tokens * s + self.staged.right - s) / SAMPLE_RATE

    def push_array(self, chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`TimelineStream.push_array`. A push that can complete neither a chunk of
        tokens nor a row (most pushes of a live stream) is checked and copied aside, and the
        samples kept aside are fed with the next push that can: ≈ 2.3 µs instead of ≈ 5.3 µs a
        20 ms push (measured interleaved, both cores loaded); the rows are the same."""
        if (
            type(chunk) is np.ndarray
            and chunk.dtype == np.float32
            and chunk.ndim == 1
            and self._total + chunk.size < self._quiet_until
            and self._resampler is None
            and not self.closed
        ):
            if chunk.size:
                self._pending.append(validate(chunk, self.name).copy())
                self._total += chunk.size
            return _NO_BOUNDS, _NO_VALUES
        return super().push_array(chunk)

    def _feed(self, x: np.ndarray) -> None:
        self._total += len(x)
        if self._pending:  # the samples kept aside by push_array come first
            self._pending.append(x)
            x, self._pending = np.concatenate(self._pending), []
        chunks = self._runner.push(x)
        if chunks:  # most pushes of a live stream complete no chunk of tokens
            for _, *maps in chunks:
                self._pool.add(*maps)
            self._rows_until = (self._pool.end + 1) * self.staged.token_samples - 1
        end = self._next_end  # ... and no row: decide that cheaply
        if end <= self._total and end <= self._rows_until:
            self._emit_ready(final=False)
        # the next push that may complete a chunk (the runner's due) or a row (its end)
        self._quiet_until = min(
            self._runner.due, self._next_end if self._next_end <= self._rows_until else math.inf
        )

    def _finish(self) -> None:
        if self._pending:
            self._feed(np.zeros(0, np.float32))
        self.closed = True
        for _, *maps in self._runner.finish():
            self._pool.add(*maps)
        self._emit_ready(final=True)

    def _emit_ready(self, *, final: bool) -> None:
        s, pool_end = self.staged.token_samples, self._pool.end
        # rows end every step up to the samples received and, but at the end, up to the last
        # sample whose token is computed (end // s <= pool_end)
        limit = self._total if final else min(self._total, (pool_end + 1) * s - 1)
        count = max(0, (limit - self._next_end) // self.step_n + 1)
        ends = self._next_end + self.step_n * np.arange(count, dtype=np.int64)
        self._next_end += count * self.step_n
        last = int(ends[-1]) if count else self._last_end
        if final and self._total > last and self._total >= MIN_SAMPLES:
            ends = np.append(ends, self._total)
        if len(ends) and pool_end > self._pool.first:
            # tokens whose start lies in the window (a long front-end window can leave the
            # last few samples without a token of their own)
            j1 = np.where(final & (ends == self._total), pool_end, ends // s)
            j1 = np.minimum(j1, pool_end)
            starts = np.maximum(0, ends - self.context_n)
            j0 = np.maximum(np.minimum(-(-starts // s), j1 - 1), 0)
            windows = np.stack([j0, j1], 1)
            values = self.staged.head(*self._pool.pools(windows))
            bounds = np.stack([_seconds_array(starts), _seconds_array(ends)], 1)
            self._blocks.append((bounds, values))
            self._last_end = int(ends[-1])
        # keep the tokens of the next row, or of a last row ending before it
        start = max(0, self._next_end - self.step_n - self.context_n)
        self._pool.trim(start // s - 1)

    def _take(self) -> list[Row]:
        bounds, values = self._take_arrays()
        return [
            (self.name, float(a), float(b), y)
            for (a, b), y in zip(bounds.tolist(), values, strict=True)
        ]

    def _frame(self) -> pd.DataFrame:
        if not self._blocks:
            return super()._frame()  # the empty table
        bounds, values = self._take_arrays()
        return _frame([self.name] * len(bounds), bounds, values, clip=self.clip, columns=LABELS)

    def _take_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._blocks:
            return _NO_BOUNDS, _NO_VALUES
        blocks, self._blocks = self._blocks, []
        if len(blocks) == 1:
            return blocks[0]
        return tuple(np.concatenate(parts) for parts in zip(*blocks, strict=True))


def _staged_model(backend) -> StagedModel | None:
    """The token-level stages of an ONNX backend running a staged Wav2Small export, else None."""
    if isinstance(backend, OnnxBackend) and StagedModel.supports(backend.metadata):
        return StagedModel(backend.session, backend.metadata, backend.order)
    return None


# --- loading and tables ---------------------------------------------------------------------
def load(model, *, variant: str = "auto", **kwargs) -> Predictor:
    """A :class:`Predictor` for an ONNX file, a checkpoint, a preset name, a torch module, or a
    student folder / hub id (:mod:`wav2small.hub`; ``variant`` "auto" | "int8" | "fp32")."""
    from wav2small.hub import resolve_model

    backend = kwargs.get("backend", "auto")
    return Predictor(resolve_model(model, variant=variant, backend=backend), **kwargs)


TABLE_FORMATS = (".csv", ".parquet", ".json")


def write_table(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a result table as CSV, Parquet or JSON (records), atomically.

    The index becomes the columns ``file, start, end``. Parquet needs pyarrow.

    Raises:
        ValueError: another suffix.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_FORMATS:
        raise ValueError(f"{path}: unknown table format; use one of {', '.join(TABLE_FORMATS)}")
    table = frame.reset_index()
    with atomic_write(path) as tmp:
        if suffix == ".csv":
            table.to_csv(tmp, index=False)
        elif suffix == ".parquet":
            table.to_parquet(tmp, index=False)
        else:
            table.to_json(tmp, orient="records", indent=1)
    return path


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a table written by :func:`write_table` back into the indexed form."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        table = pd.read_csv(path)
    elif suffix == ".parquet":
        table = pd.read_parquet(path)
    elif suffix == ".json":
        table = pd.read_json(path, orient="records")
    else:
        raise ValueError(f"{path}: unknown table format; use one of {', '.join(TABLE_FORMATS)}")
    table["file"] = table["file"].astype(str)
    return table.set_index(list(INDEX))[list(LABELS)]


# --- CLI ------------------------------------------------------------------------------------
def predict_cli(args) -> int:
    """``wav2small predict MODEL PATHS... [--win S --hop S | --timeline STEP] [--out FILE]``."""
    import contextlib
    import sys

    from wav2small.inputs import InputError, check_any_good

    if args.out and Path(args.out).suffix.lower() not in TABLE_FORMATS:
        raise InputError(f"{args.out}: --out must be a .csv, .parquet or .json file")
    if args.timeline is not None and args.win is not None:
        raise InputError("--timeline and --win are exclusive")
    with output_lock(args.out) if args.out else contextlib.nullcontext():
        predictor = load(args.model, backend=args.backend, threads=args.threads)
        common = dict(
            clip=args.clip,
            num_workers=args.workers,
            on_error=args.on_error,
            progress=getattr(args, "progress", True),
        )
        if args.timeline is not None:
            frame = predictor.timeline(
                args.paths, step=args.timeline, context=args.context, **common
            )
        else:
            frame = predictor.predict(args.paths, win=args.win, hop=args.hop, **common)
        skipped = frame.attrs.get("skipped", {})
        files = set(frame.index.get_level_values("file"))
        check_any_good(len(files - set(skipped)), list(skipped.items()))
        if args.out:
            write_table(frame, args.out)
            write_skipped(args.out, skipped.items())
            print(f"{args.out}: {len(frame)} rows", file=sys.stderr)
        else:
            with pd.option_context("display.max_rows", None, "display.width", 200):
                print(frame.to_string(float_format=lambda v: f"{v:.4f}"))
    if skipped:
        where = f" (listed in {skipped_path(args.out)})" if args.out else ""
        print(f"skipped {len(skipped)} file(s){where}", file=sys.stderr)  # reasons: logged
    return 0


def plot_timeline_cli(args) -> int:
    """``wav2small plot-timeline MODEL FILE --out x.png [--step S --context S]``."""
    from wav2small.report import plot_timeline

    predictor = load(args.model, backend=args.backend, threads=args.threads)
    frame = predictor.timeline(args.file, step=args.step, context=args.context, clip=args.clip)
    plot_timeline(frame, args.out, title=f"{Path(args.file).name} — {Path(args.model).name}")
    print(
        f"{args.out}: timeline of {frame.index.get_level_values('end').max():.1f} s, "
        f"{len(frame)} points"
    )
    return 0


__all__ = [
    "AUDIO_EXTENSIONS",
    "INDEX",
    "OnnxBackend",
    "Predictor",
    "TimelineStream",
    "TokenTimelineStream",
    "TorchBackend",
    "collect_inputs",
    "load",
    "read_table",
    "rows_to_frame",
    "timeline_bounds",
    "window_bounds",
    "write_table",
]
