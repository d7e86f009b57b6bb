"""Training data: manifests, random crops, augmentation and padded batches.

* **Manifests** (:func:`load_manifest`) list the clips of a folder, a CSV (``file`` column, paths
  relative to the CSV's folder, optional ``arousal, dominance, valence`` gold columns) or a list
  of files, with each file's duration read from its header. Cached teacher labels from
  ``wav2small label`` are joined by :func:`attach_labels`.
* **Crops** (:class:`CropDataset`): each item is a random crop of at most ``crop_seconds``
  (default 4 s) of one clip, optionally augmented (:class:`Augment`): with probability ``ratio``
  (the paper's "augmentation ratio") the crop is mixed with a crop of *another clip* or with
  *noise* (coloured noise, or recordings from ``noise_dir``) at a random SNR; then an optional
  random gain and time shift (circular roll).
* **Batches** (:func:`collate`): every crop of a batch is cut to the shortest crop in it (but
  not below ``min_seconds``, padding with zeros and reporting ``lengths`` below that), so batches
  are normally unpadded and every student family sees exactly what it would see alone. Whole
  clips (``crop_seconds=None``) are never cut: :func:`train_collate` pads them to the batch's
  longest (:func:`pad_collate`), since a whole-clip target describes the whole clip; their
  sampler (:func:`train_sampler`) batches clips of similar length, so little is padding.
* **Reproducibility**: the :class:`SeededSampler` draws the order and one seed per item from
  ``(seed, epoch)``; all randomness of an item (crop offsets, augmentation) comes from that
  seed, so a run is the same whatever the number of data-loader workers.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from wav2small import LABELS, SAMPLE_RATE
from wav2small.inputs import list_audio, read_manifest
from wav2small.labels import EMBEDDING_COLUMN

logger = logging.getLogger(__name__)

DEFAULT_CROP_SECONDS = 4.0
#: Batches are cut to their shortest crop, but never below this (shorter clips are padded).
DEFAULT_MIN_SECONDS = 1.0
#: Whole-clip batches are drawn by length from runs of this many batches (SeededSampler).
BUCKET_BATCHES = 16
NOISE_COLOURS = ("white", "pink", "brown")
#: Spectral slope (power ∝ f^-slope) of each noise colour.
_NOISE_SLOPE = {"white": 0.0, "pink": 1.0, "brown": 2.0}
_RMS_FLOOR = 1e-8
#: Output columns of a manifest (plus the label columns when there are labels).
MANIFEST_COLUMNS = ("file", "path", "duration")


# --- manifests ------------------------------------------------------------------------------
def load_manifest(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    require_labels: bool = False,
    on_error: str = "raise",
    progress: bool = False,
) -> pd.DataFrame:
    """List clips with their durations (and gold labels when the CSV has them).

    Args:
        source: a folder (searched recursively), a CSV with a ``file`` column (read by
            :func:`wav2small.inputs.read_manifest`: relative paths are relative to the CSV's
            folder; other columns are kept), one audio file, or a list of files.
        require_labels: raise unless ``arousal, dominance, valence`` columns are present and
            complete.
        on_error: ``"raise"`` on the first unreadable file, or ``"skip"`` it (logged).
        progress: show a progress bar while reading the headers.

    Returns:
        A DataFrame with ``file`` (as given), ``path`` (as read), ``duration`` (seconds) and any
        further CSV columns, in input order.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: no ``file`` column, empty manifest, missing/NaN labels when required.
        wav2small.audio.AudioError: an unreadable file (``on_error="raise"``).
    """
    from wav2small.audio import AudioError, audio_info

    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    name = "<list>"
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        name = str(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        if path.is_dir():
            files = [str(p) for p in list_audio(path)]
            table = pd.DataFrame({"file": files, "path": files})
        elif path.suffix.lower() == ".csv":
            table = read_manifest(path)
        else:
            table = pd.DataFrame({"file": [str(path)], "path": [str(path)]})
    else:
        files = [os.fspath(p) for p in source]
        if not files:
            raise ValueError("the list of files is empty")
        table = pd.DataFrame({"file": files, "path": files})
    if require_labels:
        check_labels(table, name)
    durations, keep = [], []
    paths = table["path"].tolist()
    for i, p in enumerate(_progress(paths, progress, "reading headers")):
        try:
            durations.append(audio_info(p).duration)
            keep.append(i)
        except AudioError as e:
            if on_error == "raise":
                raise
            logger.warning("skipping %s", e)
    table = table.iloc[keep].reset_index(drop=True).drop(columns=["duration"], errors="ignore")
    if table.empty:
        raise ValueError(f"{name}: no readable audio")
    table.insert(2, "duration", durations)  # from the header, whatever a CSV said
    return table


def check_labels(table: pd.DataFrame, name: str) -> None:
    """Raise ValueError unless ``table`` has complete, finite ``arousal, dominance, valence``
    columns (:class:`wav2small.errors.NonFiniteError` for empty/NaN/Inf values)."""
    missing = [c for c in LABELS if c not in table.columns]
    if missing:
        raise ValueError(f"{name}: needs label columns {', '.join(LABELS)}; missing {missing}")
    values = table[list(LABELS)].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        from wav2small.errors import NonFiniteError

        raise NonFiniteError(
            f"{name}: {int(bad.sum())} rows have empty, non-numeric or non-finite labels, "
            f"e.g. {table['file'][bad].iloc[0]}"
        )


def has_labels(table: pd.DataFrame) -> bool:
    """Whether every label column is present and complete."""
    return all(c in table.columns for c in LABELS) and not table[list(LABELS)].isna().any().any()


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False)


def _norm(path: str) -> str:
    return os.path.normcase(os.path.abspath(path))


def attach_labels(
    manifest: pd.DataFrame, labels: str | os.PathLike | pd.DataFrame, *, name: str | None = None
) -> pd.DataFrame:
    """Replace the label columns of ``manifest`` by cached teacher labels.

    Rows of the label table (``file, start, end, arousal, dominance, valence``, as written by
    ``wav2small label``) are matched to the manifest by file: first as absolute paths (label
    paths relative to the working directory), then by the literal ``file`` string, then by the
    file name when that is unique. Several segments of one file are averaged weighted by their
    length (whole-file labels are what the cached mode trains on).

    Args:
        manifest: from :func:`load_manifest`.
        labels: a Parquet/CSV file or a DataFrame.
        name: label table name for messages.

    Returns:
        A copy of ``manifest`` with the teacher's ``arousal, dominance, valence``.

    Raises:
        ValueError: missing columns, or manifest files without a label (the message lists some).
    """
    table, name = _label_table(labels, name)
    missing = [c for c in ("file", *LABELS) if c not in table.columns]
    if missing:
        raise ValueError(
            f"{name}: a label table needs columns file, {', '.join(LABELS)}; missing {missing}"
        )
    values = _match_files(manifest, _per_file(table, list(LABELS)), name)
    out = manifest.copy()
    out[list(LABELS)] = np.asarray(values, dtype=np.float64)
    return out


def attach_hints(
    manifest: pd.DataFrame, labels: str | os.PathLike | pd.DataFrame, *, name: str | None = None
) -> np.ndarray:
    """The teacher embedding of every manifest clip, from a label table's ``embedding`` column.

    Files are matched as in :func:`attach_labels`; several segments of one file are averaged
    weighted by their length.

    Returns:
        (n clips, D) float32.

    Raises:
        ValueError: no ``embedding`` column (the table was labelled without ``--embeddings``),
            rows of different lengths, non-finite values, or manifest files without a row.
    """
    table, name = _label_table(labels, name)
    if EMBEDDING_COLUMN not in table.columns:
        raise ValueError(
            f"{name}: no {EMBEDDING_COLUMN!r} column; label the audio with "
            "`wav2small label --embeddings` to train with embedding hints"
        )
    rows = table[EMBEDDING_COLUMN].map(lambda v: np.asarray(v, dtype=np.float64))
    sizes = rows.map(len).unique()
    if len(sizes) != 1 or sizes[0] == 0:
        raise ValueError(f"{name}: {EMBEDDING_COLUMN} rows have lengths {sorted(sizes)[:4]}")
    matrix = np.stack(rows.to_list())
    if not np.isfinite(matrix).all():
        bad = table["file"].iloc[int(np.flatnonzero(~np.isfinite(matrix).all(1))[0])]
        raise ValueError(f"{name}: non-finite {EMBEDDING_COLUMN} for {bad}")
    columns = [f"_e{i}" for i in range(matrix.shape[1])]
    wide = pd.DataFrame(matrix, columns=columns)
    for key in ("file", "start", "end"):
        if key in table:
            wide[key] = table[key].to_numpy()
    return np.asarray(_match_files(manifest, _per_file(wide, columns), name), dtype=np.float32)


def _label_table(labels, name: str | None) -> tuple[pd.DataFrame, str]:
    if isinstance(labels, pd.DataFrame):
        return labels, name or "<labels>"
    path = Path(labels)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such label file")
    table = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    return table, name or str(path)


def _match_files(manifest: pd.DataFrame, per_file: dict[str, tuple], name: str) -> list[tuple]:
    """Per-file values for each manifest row: by absolute path, literal name, unique base name."""
    by_abs = {_norm(f): v for f, v in per_file.items()}
    names = pd.Series([os.path.basename(f) for f in per_file]).value_counts()
    by_name = {
        os.path.basename(f): v for f, v in per_file.items() if names[os.path.basename(f)] == 1
    }
    values, unmatched = [], []
    for file, path in zip(manifest["file"], manifest["path"], strict=True):
        v = (
            by_abs.get(_norm(path))
            or per_file.get(file)
            or by_abs.get(_norm(file))
            or by_name.get(os.path.basename(path))
        )
        if v is None:
            unmatched.append(file)
        values.append(v)
    if unmatched:
        raise ValueError(
            f"{name}: no labels for {len(unmatched)} of {len(manifest)} files, "
            f"e.g. {', '.join(unmatched[:3])}; label them with `wav2small label`"
        )
    return values


def _per_file(table: pd.DataFrame, columns: list[str]) -> dict[str, tuple[float, ...]]:
    """``columns`` averaged per file, weighted by segment length (``end − start``) if given."""
    if "start" in table and "end" in table:
        weight = (table["end"] - table["start"]).fillna(1.0).clip(lower=1e-6).to_numpy(np.float64)
    else:
        weight = np.ones(len(table))
    codes, files = pd.factorize(table["file"].astype(str))  # files in order of appearance
    sums = np.zeros((len(files), len(columns)))
    np.add.at(sums, codes, table[columns].to_numpy(np.float64) * weight[:, None])
    means = sums / np.bincount(codes, weights=weight, minlength=len(files))[:, None]
    return {file: tuple(row) for file, row in zip(files, means.tolist(), strict=True)}


def split_manifest(
    manifest: pd.DataFrame, fraction: float, *, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out a random ``fraction`` of rows (at least one when > 0) as a validation set.

    Returns:
        ``(train, val)``; ``val`` is empty when ``fraction`` is 0.

    Raises:
        ValueError: fraction outside [0, 1), or nothing left to train on.
    """
    from wav2small.runs import split_indices

    train_idx, val_idx = split_indices(len(manifest), fraction, seed=seed)
    return (
        manifest.iloc[train_idx].reset_index(drop=True),
        manifest.iloc[val_idx].reset_index(drop=True),
    )


# --- augmentation ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Augment:
    """Augmentation settings.

    Attributes:
        ratio: probability that a crop is mixed with another clip or noise (the "augmentation
            ratio"); 0 turns mixing off.
        mix_clip_prob: of the mixed crops, the share mixed with another clip (else noise).
        snr_db: (low, high) uniform range of the signal-to-interference ratio in dB.
        noise_dir: folder of noise recordings; without it, white/pink/brown noise is generated.
        gain_db: random gain, uniform in ±gain_db (0: off). It reaches a student only through
            a ``level`` row (gain-invariant students normalise it away) and level-sensitive
            teachers labelling on the fly; with a teacher that normalises its input it teaches
            the student's level row that the recording gain carries nothing.
        shift_prob: probability of a circular time shift of the crop.
        shift_seconds: largest shift.
    """

    ratio: float = 0.5
    mix_clip_prob: float = 0.5
    snr_db: tuple[float, float] = (5.0, 30.0)
    noise_dir: str | None = None
    gain_db: float = 0.0
    shift_prob: float = 0.0
    shift_seconds: float = 0.5

    def __post_init__(self) -> None:
        for key in ("ratio", "mix_clip_prob", "shift_prob"):
            if not 0 <= getattr(self, key) <= 1:
                raise ValueError(f"augment {key} must be in [0, 1], got {getattr(self, key)}")
        lo, hi = self.snr_db
        if lo > hi:
            raise ValueError(f"augment snr_db must be (low, high), got {self.snr_db}")
        if self.gain_db < 0 or self.shift_seconds < 0:
            raise ValueError("augment gain_db and shift_seconds must be >= 0")


def fast_fft_length(n: int) -> int:
    """The smallest 2^a · 3^b · 5^c ≥ ``n``: an FFT length numpy transforms fast."""
    best = 1 << max(0, int(n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


@functools.lru_cache(maxsize=128)
def _noise_shape(m: int, slope: float) -> np.ndarray:
    """Amplitude ``f^(−slope/2)`` (f ≥ 20 Hz) on the ``m``-point rfft bins (read-only)."""
    f = np.fft.rfftfreq(m, 1 / SAMPLE_RATE)
    shape = np.maximum(f, 20.0) ** (-slope / 2)
    shape.setflags(write=False)
    return shape


def coloured_noise(n: int, colour: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS white, pink or brown noise of ``n`` samples (spectral shaping of white noise)."""
    if colour not in _NOISE_SLOPE:
        raise ValueError(f"noise colour must be one of {NOISE_COLOURS}, got {colour!r}")
    slope = _NOISE_SLOPE[colour]
    if slope:  # shape a fast FFT length, keep n samples (a whole clip's odd n cost up to 78 ms)
        m = fast_fft_length(n)
        spec = np.fft.rfft(rng.standard_normal(m)) * _noise_shape(m, slope)
        white = np.fft.irfft(spec, m)[:n]
    else:
        white = rng.standard_normal(n)
    return (white / (np.sqrt(np.mean(white**2)) + _RMS_FLOOR)).astype(np.float32)


def rms(x: np.ndarray) -> float:
    """Root mean square of a signal."""
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def mix_at_snr(signal: np.ndarray, other: np.ndarray, snr_db: float) -> np.ndarray:
    """``signal + g · other`` with g such that RMS(signal) / RMS(g · other) is ``snr_db``.

    ``other`` is tiled or cut to the signal's length.
    """
    other = np.resize(other, len(signal)) if len(other) != len(signal) else other
    gain = rms(signal) / (max(rms(other), _RMS_FLOOR) * 10 ** (snr_db / 20))
    return (signal + gain * other).astype(np.float32)


# --- dataset --------------------------------------------------------------------------------
def _crop_window(
    duration: float, seconds: float | None, rng: np.random.Generator
) -> tuple[float, float | None]:
    if seconds is None or duration <= seconds:
        return 0.0, None
    return float(rng.uniform(0, duration - seconds)), seconds


class CropDataset:
    """Random (augmented) crops of clips; indexed by ``(index, item_seed)`` pairs.

    Args:
        manifest: from :func:`load_manifest`; its label columns are the targets when
            ``with_targets``.
        crop_seconds: longest crop; ``None`` gives whole clips.
        augment: augmentation settings, or ``None`` for clean crops.
        with_targets: return each clip's ``arousal, dominance, valence`` as the target.
        hints: (n clips, D) teacher embeddings returned as ``hint`` (embedding hints).

    Each item is a dict: ``wave`` (float32 samples), ``target`` (3 floats or ``None``),
    ``index``, ``u`` (a uniform number the collate uses to place the batch crop) and, with
    ``hints``, ``hint``.
    """

    def __init__(
        self,
        manifest: pd.DataFrame,
        *,
        crop_seconds: float | None = DEFAULT_CROP_SECONDS,
        augment: Augment | None = None,
        with_targets: bool = False,
        hints: np.ndarray | None = None,
    ) -> None:
        if with_targets:
            check_labels(manifest, "training manifest")
        if hints is not None and len(hints) != len(manifest):
            raise ValueError(f"{len(hints)} hint rows for {len(manifest)} clips")
        self.hints = hints
        self.paths = manifest["path"].tolist()
        self.durations = manifest["duration"].to_numpy(dtype=np.float64)
        self.targets = manifest[list(LABELS)].to_numpy(dtype=np.float32) if with_targets else None
        self.crop_seconds = crop_seconds
        self.augment = augment
        self._noise_files = (
            [str(p) for p in list_audio(augment.noise_dir)]
            if augment is not None and augment.noise_dir
            else []
        )

    def __len__(self) -> int:
        return len(self.paths)

    def read_crop(
        self, index: int, rng: np.random.Generator, seconds: float | None = None
    ) -> np.ndarray:
        """A random crop (``seconds``, default the dataset's crop length) of clip ``index``."""
        from wav2small.audio import read_audio
        from wav2small.runs import check_wave

        offset, duration = _crop_window(self.durations[index], seconds or self.crop_seconds, rng)
        path = self.paths[index]
        return check_wave(read_audio(path, offset=offset, duration=duration), path)

    def __getitem__(self, key: tuple[int, int] | int) -> dict:
        index, seed = key if isinstance(key, tuple) else (int(key), int(key))
        rng = np.random.default_rng([seed, index])
        wave = self.read_crop(index, rng)
        if self.augment is not None:
            wave = self._augment(wave, index, rng)
        target = None if self.targets is None else self.targets[index]
        item = {"wave": wave, "target": target, "index": index, "u": float(rng.random())}
        if self.hints is not None:
            item["hint"] = self.hints[index]
        return item

    def _interferer(self, n: int, index: int, rng: np.random.Generator) -> np.ndarray:
        aug = self.augment
        if len(self) > 1 and rng.random() < aug.mix_clip_prob:
            other = int(rng.integers(len(self) - 1))
            other += other >= index  # any clip but this one
            return self.read_crop(other, rng, seconds=n / SAMPLE_RATE)
        if self._noise_files:
            from wav2small.audio import audio_info, read_audio

            path = self._noise_files[int(rng.integers(len(self._noise_files)))]
            offset, duration = _crop_window(audio_info(path).duration, n / SAMPLE_RATE, rng)
            return read_audio(path, offset=offset, duration=duration)
        return coloured_noise(n, NOISE_COLOURS[int(rng.integers(len(NOISE_COLOURS)))], rng)

    def _augment(self, wave: np.ndarray, index: int, rng: np.random.Generator) -> np.ndarray:
        aug = self.augment
        if aug.ratio > 0 and rng.random() < aug.ratio:
            snr = float(rng.uniform(*aug.snr_db))
            wave = mix_at_snr(wave, self._interferer(len(wave), index, rng), snr)
        if aug.gain_db > 0:
            wave = wave * np.float32(10 ** (rng.uniform(-aug.gain_db, aug.gain_db) / 20))
        if aug.shift_prob > 0 and rng.random() < aug.shift_prob:
            most = min(int(aug.shift_seconds * SAMPLE_RATE), len(wave) - 1)
            if most > 0:
                wave = np.roll(wave, int(rng.integers(-most, most + 1)))
        return wave.astype(np.float32, copy=False)


class SeededSampler:
    """Shuffled ``(index, item_seed)`` pairs drawn from ``(seed, epoch)``.

    Lightning calls :meth:`set_epoch` at the start of every epoch. With ``world_size > 1``
    each rank takes every ``world_size``-th pair of the same permutation, and the last
    ``n % world_size`` pairs are left out so that every rank has the same number (DDP ranks
    must run the same number of steps). An item's seed depends on its place in the permutation,
    not on the rank: together the ranks draw the same crops as one process would.

    :meth:`resume_at` continues a stream inside an epoch (exact resume from a mid-epoch step).

    With ``durations`` (whole-clip batches, padded to their longest) and ``batch_size``, each
    run of :data:`BUCKET_BATCHES` batches of the shuffled order is sorted by duration, cut into
    batches and those batches shuffled: a batch holds clips of similar length, so little of it
    is padding, and every clip is still drawn once per epoch.
    """

    def __init__(
        self,
        n: int,
        *,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        durations: Sequence[float] | None = None,
        batch_size: int = 1,
    ) -> None:
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.durations = None if durations is None else np.asarray(durations, np.float64)
        if self.durations is not None and len(self.durations) != n:
            raise ValueError(f"{len(self.durations)} durations for {n} clips")
        self.batch_size = batch_size
        self.epoch = 0
        self._offset = 0  # our epoch − the caller's epoch number (after a resume)
        self._skip = 0  # pairs of this rank to skip in the next pass (after a resume)
        self._anchor: int | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation and item seeds of ``epoch``."""
        if self._anchor is not None:  # the first call after resume_at() is the resumed epoch
            self._offset, self._anchor = self._anchor - epoch, None
        self.epoch = epoch + self._offset

    def resume_at(self, epoch: int, skip: int) -> None:
        """Make the next pass the rest of ``epoch`` after this rank's first ``skip`` pairs.

        The next :meth:`set_epoch` call means ``epoch`` whatever number it passes (Lightning's
        epoch counter after a mid-epoch stop is not the data's); later calls follow on from it.
        """
        self.epoch, self._skip, self._anchor = epoch, skip, epoch

    def __len__(self) -> int:
        return self.n // self.world_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        skip, self._skip = self._skip, 0
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        seeds = rng.integers(0, 2**62, size=self.n)
        if self.durations is not None:
            order = self._bucketed(order, rng)
        first = self.rank + skip * self.world_size
        for i in range(first, len(self) * self.world_size, self.world_size):
            yield int(order[i]), int(seeds[i])

    def _bucketed(self, order: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``order`` with each run of :data:`BUCKET_BATCHES` batches sorted by duration into
        batches, those batches in random order (the tail of a run stays its last batch)."""
        size = self.batch_size * self.world_size
        out = []
        for start in range(0, len(order), size * BUCKET_BATCHES):
            run = order[start : start + size * BUCKET_BATCHES]
            run = run[np.argsort(self.durations[run], kind="stable")]
            batches = [run[i : i + size] for i in range(0, len(run), size)]
            full = [b for b in batches if len(b) == size]
            out += [full[i] for i in rng.permutation(len(full))]
            out += [b for b in batches if len(b) != size]
        return np.concatenate(out) if out else order


def train_sampler(dataset: CropDataset, *, seed: int, batch_size: int) -> SeededSampler:
    """The sampler of a training run: whole clips (``dataset.crop_seconds is None``) are
    batched by length (see :class:`SeededSampler`), crops in plain shuffled order."""
    whole = dataset.crop_seconds is None
    return SeededSampler(
        len(dataset),
        seed=seed,
        durations=dataset.durations if whole else None,
        batch_size=batch_size,
    )


def collate(items: Sequence[dict], *, min_seconds: float = DEFAULT_MIN_SECONDS) -> dict:
    """Stack crops into a batch cut to the shortest crop (but at least ``min_seconds``).

    Crops longer than the batch length are cut at a position given by their ``u``; crops shorter
    than it (only those under ``min_seconds``) are zero-padded.

    Returns:
        A dict with ``wave`` (batch, samples) float32 tensor, ``lengths`` (batch,) int64,
        ``target`` (batch, 3) float32 or ``None``, ``index`` (batch,) int64 and, when every item
        has one, ``hint`` (batch, D).
    """
    return _collate(items, int(round(min_seconds * SAMPLE_RATE)))


def _collate(items: Sequence[dict], min_samples: int) -> dict:
    import torch

    sizes = [len(it["wave"]) for it in items]
    size = min(max(min(sizes), min_samples), max(sizes))
    wave = torch.zeros(len(items), size)
    lengths = torch.zeros(len(items), dtype=torch.long)
    for row, it in enumerate(items):
        w = it["wave"]
        if len(w) > size:
            start = min(int(it["u"] * (len(w) - size + 1)), len(w) - size)
            w = w[start : start + size]
        wave[row, : len(w)] = torch.from_numpy(np.ascontiguousarray(w))
        lengths[row] = len(w)
    targets = [it["target"] for it in items]
    target = None if any(t is None for t in targets) else torch.from_numpy(np.stack(targets))
    index = torch.tensor([it["index"] for it in items], dtype=torch.long)
    batch = {"wave": wave, "lengths": lengths, "target": target, "index": index}
    if all("hint" in it for it in items):
        batch["hint"] = torch.from_numpy(np.stack([it["hint"] for it in items]))
    return batch


class UtteranceDataset:
    """Whole clips (no crop, no augmentation) with optional targets, for validation."""

    def __init__(self, manifest: pd.DataFrame, targets: np.ndarray | None = None) -> None:
        self.paths = manifest["path"].tolist()
        self.targets = None if targets is None else np.asarray(targets, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        from wav2small.audio import read_audio
        from wav2small.runs import check_wave

        target = None if self.targets is None else self.targets[index]
        wave = check_wave(read_audio(self.paths[index]), self.paths[index])
        return {"wave": wave, "target": target, "index": index, "u": 0.0}


def pad_collate(items: Sequence[dict]) -> dict:
    """Zero-pad whole clips to the longest (no cropping), with ``lengths``."""
    return _collate(items, max(len(it["wave"]) for it in items))


def crops_text(crop_seconds: float | None) -> str:
    """How a recipe cuts its training clips, for reports: ``"4 s crops"`` or ``"whole clips"``."""
    return "whole clips" if crop_seconds is None else f"{crop_seconds:g} s crops"


def train_collate(crop_seconds: float | None, min_seconds: float = DEFAULT_MIN_SECONDS):
    """The collate of training batches of :class:`CropDataset` items.

    Random crops (``crop_seconds`` set) are cut to the batch's shortest (:func:`collate`, not
    below ``min_seconds``). Whole clips (``crop_seconds=None``) are zero-padded to the batch's
    longest and never cut (:func:`pad_collate`): a whole-clip target (gold, or a cached teacher
    label) describes the whole clip, and the models ignore the padding given ``lengths``.
    """
    if crop_seconds is None:
        return pad_collate
    from functools import partial

    return partial(collate, min_seconds=min_seconds)
