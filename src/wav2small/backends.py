"""Backends: the one place ONNX Runtime sessions and torch runners are built.

Everything that runs a student model — :class:`wav2small.infer.Predictor` (and through it
``predict`` and ``evaluate``), the benchmarks, export's parity and int8 checks, the
self-distillation exit export — gets its session or runner here, so every command runs a model
with the same session options and the same output order.

* :func:`session_options` — the ONNX Runtime options (threads, sequential execution, CPU arena);
* :func:`onnx_session` — a CPU :class:`onnxruntime.InferenceSession` for a file, with errors that
  name the file; :func:`onnx_metadata` reads a model's ``metadata_props``;
* :class:`OnnxBackend` / :class:`TorchBackend` — ``(batch, samples)`` float32 at 16 kHz →
  ``(batch, 3)`` arousal, dominance, valence (ONNX outputs are reordered from the model's
  ``labels`` metadata; NaN/Inf outputs raise, naming the model); :func:`make_backend` picks one;
* :func:`teacher_predict` / :func:`teacher_predict_files` — the one way a teacher is run (torch
  modules, or torch-free teachers with ``predict_waves``), finite or a named error.

The ONNX path imports no torch (and no scipy): onnxruntime and numpy only; torch is imported
only to run a torch model.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wav2small import LABELS, SAMPLE_RATE
from wav2small.errors import NonFiniteError, UserError

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "onnx", "torch")
#: Weights file looked for inside a run folder, in this order.
RUN_WEIGHTS = ("best.safetensors", "best.ckpt", "last.ckpt")
#: ONNX Runtime intra-op threads unless told otherwise.
DEFAULT_THREADS = 1

Backend = Callable[[np.ndarray], np.ndarray]


# --- ONNX Runtime -----------------------------------------------------------------------------
def session_options(*, threads: int | None = None, mem_arena: bool = True):
    """ONNX Runtime options used by every session of the package.

    Args:
        threads: intra-op threads (default :data:`DEFAULT_THREADS`); inter-op is 1 and execution
            sequential.
        mem_arena: ONNX Runtime's CPU memory arena (default on). Turning it off looks like it
            should lower RSS, but measured over repeated calls (20 × 20 s, int8, glibc) it raised
            the peak from 164 to 311 MB: freed activations fragment the malloc heap, while the
            arena reuses one block sized for the largest input.
    """
    import onnxruntime as ort

    if threads is not None and threads < 0:
        raise ValueError(f"threads must be >= 1, got {threads}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or DEFAULT_THREADS
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.enable_cpu_mem_arena = mem_arena
    # Wav2Small exports have optional inputs (initializers listed as graph inputs), which ONNX
    # Runtime reports at WARNING level on every session; show errors only.
    opts.log_severity_level = 3
    return opts


def onnx_session(
    path: str | os.PathLike,
    *,
    threads: int | None = None,
    mem_arena: bool = True,
    options=None,
):
    """A CPU :class:`onnxruntime.InferenceSession` for ``path`` with :func:`session_options`.

    Args:
        path: ``.onnx`` file.
        threads, mem_arena: see :func:`session_options`.
        options: instead, options made by :func:`session_options` and then adjusted (e.g.
            ``enable_profiling`` for a profile).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a loadable ONNX model (the message names the file).
    """
    import onnxruntime as ort

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such model file")
    opts = options or session_options(threads=threads, mem_arena=mem_arena)
    try:
        return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ValueError(f"{path}: not a loadable ONNX model: {exc}") from exc


def onnx_metadata(path_or_session) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file or session (labels, preset, sample_rate, …)."""
    sess = path_or_session
    if isinstance(sess, str | os.PathLike):
        sess = onnx_session(sess)
    return dict(sess.get_modelmeta().custom_metadata_map)


def label_order(labels: str | None, source: str) -> list[int]:
    """Column indices that put a model's outputs (named by its ``labels`` metadata, comma
    separated) in :data:`wav2small.LABELS` order.

    Raises:
        ValueError: the names are not arousal, dominance and valence.
    """
    if not labels:
        logger.warning("%s: no 'labels' metadata; assuming %s", source, ",".join(LABELS))
        return list(range(len(LABELS)))
    names = [s.strip() for s in labels.split(",")]
    if sorted(names) != sorted(LABELS):
        raise ValueError(f"{source}: model outputs {names}, expected {list(LABELS)}")
    return [names.index(label) for label in LABELS]


def check_finite(out: np.ndarray, source: str) -> np.ndarray:
    """``out`` unchanged when every value is finite.

    Raises:
        wav2small.errors.NonFiniteError: NaN or Inf outputs, naming the model (``source``).
    """
    if not np.isfinite(out).all():
        raise NonFiniteError(
            f"{source}: the model gave non-finite outputs (NaN or Inf); its weights are broken"
        )
    return out


def check_audio_model(session, path: str) -> None:
    """Raise unless an ONNX session maps float audio ``(batch, samples)`` to ``(batch, 3)``.

    A model of another kind (wrong input rank or type, a fixed input length, not three
    outputs) fails here with one line naming the file, not with a runtime error at the first
    batch.

    Raises:
        wav2small.errors.UserError: the interface is not audio → A/D/V.
    """
    inputs, outputs = session.get_inputs(), session.get_outputs()
    x, y = inputs[0], outputs[0]
    problem = None
    if x.type != "tensor(float)" or len(x.shape) != 2:
        problem = f"its input '{x.name}' is {x.type} {x.shape}, not float audio (batch, samples)"
    elif isinstance(x.shape[1], int) and x.shape[1] > 0:
        problem = f"its input '{x.name}' has a fixed length of {x.shape[1]} samples"
    elif len(y.shape) != 2 or (isinstance(y.shape[1], int) and y.shape[1] != len(LABELS)):
        problem = f"its output '{y.name}' is {y.shape}, not (batch, {len(LABELS)}) A/D/V"
    if problem:
        raise UserError(f"{path}: not a wav2small audio → A/D/V model: {problem}")


class OnnxBackend:
    """ONNX Runtime on CPU: (batch, samples) float32 → (batch, 3) in LABELS order.

    Args:
        path: ``.onnx`` file written by :mod:`wav2small.export` (fp32 or int8).
        threads: intra-op threads (default 1; the session is sequential).
        mem_arena: ONNX Runtime's CPU memory arena (see :func:`session_options`).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a loadable ONNX model, or not a 16 kHz A/D/V model.
    """

    name = "onnx"

    def __init__(
        self, path: str | os.PathLike, *, threads: int | None = None, mem_arena: bool = True
    ) -> None:
        path = os.fspath(path)
        self.session = onnx_session(path, threads=threads, mem_arena=mem_arena)
        self.metadata = onnx_metadata(self.session)
        rate = int(self.metadata.get("sample_rate", SAMPLE_RATE))
        if rate != SAMPLE_RATE:
            raise ValueError(f"{path}: model expects {rate} Hz input, not {SAMPLE_RATE} Hz")
        check_audio_model(self.session, path)
        self.order = label_order(self.metadata.get("labels"), path)
        self.input_name = self.session.get_inputs()[0].name
        self.path = path

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: batch.astype(np.float32, copy=False)})[0]
        return check_finite(out[:, self.order], self.path)


# --- torch ------------------------------------------------------------------------------------
class TorchBackend:
    """A torch model on CPU (or ``device``): (batch, samples) float32 → (batch, 3).

    A module with a ``labels`` attribute (an early exit, :meth:`EarlyExitModel.at_exit`) gives
    one output per label instead (e.g. class logits); :attr:`labels` names them.

    Args:
        model: a torch module, a checkpoint path (``.safetensors``/``.ckpt``) or a preset name
            (untrained weights, for plumbing; logged as a warning).
        threads: if given, ``torch.set_num_threads(threads)`` (process-wide).
        device: torch device; default: the module's own device, CPU for files and presets.

    Raises:
        ImportError: torch is not installed.
    """

    name = "torch"

    def __init__(self, model, *, threads: int | None = None, device: str | None = None) -> None:
        try:
            import torch
        except ImportError as exc:
            raise ImportError(
                "a torch checkpoint needs torch (pip install 'wav2small[train]'); "
                "the torch-free runtime runs ONNX models only"
            ) from exc
        from wav2small.models import create_model, list_models, load_model

        self.source = str(getattr(model, "preset", type(model).__name__))
        if isinstance(model, str | os.PathLike):
            name = self.source = os.fspath(model)
            if name in list_models() and not os.path.exists(name):
                logger.warning("%s: UNTRAINED weights (random init); for plumbing only", name)
                model = create_model(name)
            else:
                model = load_model(name)
            device = device or "cpu"
        elif device is None:
            device = next(iter(model.parameters()), torch.zeros(0)).device
        if threads:
            torch.set_num_threads(threads)
        self.torch, self.device = torch, device
        #: Output columns: the module's ``labels`` (e.g. an early exit's classes), else A/D/V.
        self.labels = tuple(getattr(model, "labels", None) or LABELS)
        self.model = model.eval().to(device)
        self.metadata = {"preset": getattr(model, "preset", type(model).__name__)}

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            x = self.torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
            out = self.model(x.to(self.device)).float().cpu().numpy()
        return check_finite(out, self.source)


def resolve_model_path(path: str | os.PathLike) -> Path:
    """The weights file of ``path``: a file as is, a run folder's best weights
    (:data:`RUN_WEIGHTS`).

    Raises:
        FileNotFoundError: no such file, or a folder without weights.
    """
    path = Path(path)
    if path.is_dir():
        for name in RUN_WEIGHTS:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path}: a run folder without {' or '.join(RUN_WEIGHTS)}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file or run folder")
    return path


def make_backend(
    model, *, backend: str = "auto", threads: int | None = None, mem_arena: bool = True
) -> OnnxBackend | TorchBackend:
    """Pick and build the backend for ``model`` (``auto``: ONNX for ``.onnx`` files).

    ``model`` is a path (``.onnx``, ``.safetensors``, ``.ckpt``, or a run folder, which resolves
    to its best weights), a preset name (untrained) or a torch module.

    Raises:
        ValueError: an unknown ``backend``, or ``"onnx"`` for something that is not a path.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    is_path = isinstance(model, str | os.PathLike)
    if is_path and os.path.isdir(model):
        model = resolve_model_path(model)
    if backend == "auto":
        backend = "onnx" if is_path and os.fspath(model).endswith(".onnx") else "torch"
    if backend == "onnx":
        if not is_path:
            raise ValueError("the onnx backend needs a path to an .onnx file")
        return OnnxBackend(model, threads=threads, mem_arena=mem_arena)
    return TorchBackend(model, threads=threads)


# --- teachers ---------------------------------------------------------------------------------
#: Most padded audio (seconds) per call of a teacher that does not say (``max_batch_seconds``).
TEACHER_BATCH_SECONDS = 64.0


def _teacher_name(teacher) -> str:
    return str(getattr(teacher, "name", type(teacher).__name__))


def _check_teacher_outputs(
    y: np.ndarray, teacher, names: Sequence[str], emb: np.ndarray | None = None
) -> None:
    """Raise naming the clips when a teacher's outputs are not (batch, 3) finite numbers (and its
    embeddings, when given, not (batch, D) finite numbers)."""
    if y.shape != (len(names), len(LABELS)):
        raise ValueError(
            f"teacher {_teacher_name(teacher)!r} gave outputs of shape {y.shape} for "
            f"{len(names)} clip(s), expected ({len(names)}, {len(LABELS)})"
        )
    if emb is not None and emb.shape != (len(names), teacher_embedding_dim(teacher)):
        raise ValueError(
            f"teacher {_teacher_name(teacher)!r} gave embeddings of shape {emb.shape} for "
            f"{len(names)} clip(s), expected ({len(names)}, {teacher_embedding_dim(teacher)})"
        )
    if emb is not None:
        y = np.concatenate([y, emb], axis=1)
    bad = [name for name, row in zip(names, y, strict=True) if not np.isfinite(row).all()]
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise NonFiniteError(
            f"{bad[0]}: teacher {_teacher_name(teacher)!r} gave non-finite outputs (NaN or Inf)"
            f"{more}; its weights or this audio are broken"
        )


def _teacher_runner(teacher, embedding: bool = False) -> Callable[[list[np.ndarray]], Any]:
    """clips → (n, 3) for a teacher: ``predict_waves`` (torch-free teachers, e.g. ONNX) or a
    torch module called as ``teacher(wave, lengths)`` on zero-padded clips; with ``embedding``
    the pair ((n, 3), (n, D)) from ``predict_waves(clips, embedding=True)`` or
    ``teacher(wave, lengths, embedding=True)``."""

    def numpy(x) -> np.ndarray:
        return np.asarray(x.float().cpu().numpy() if hasattr(x, "cpu") else x, dtype=np.float32)

    if hasattr(teacher, "predict_waves"):
        if embedding:
            return lambda clips: tuple(map(numpy, teacher.predict_waves(clips, embedding=True)))
        return lambda clips: numpy(teacher.predict_waves(clips))
    import torch

    from wav2small.teachers import pad_batch

    device = next(iter(teacher.parameters()), torch.zeros(0)).device
    extra = {"embedding": True} if embedding else {}  # plain (wave, lengths) modules work too

    def run(clips: list[np.ndarray]):
        wave, lengths = pad_batch([torch.from_numpy(c) for c in clips])
        with torch.inference_mode():
            out = teacher(wave.to(device), lengths.to(device), **extra)
        return tuple(map(numpy, out)) if embedding else numpy(out)

    return run


def teacher_predict(
    teacher,
    waves: Sequence[np.ndarray],
    *,
    names: Sequence[str] | None = None,
    batch_seconds: float | None = None,
    embedding: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Run a teacher on whole clips: 1-D 16 kHz waveforms → (n, 3) float32 A/D/V, input order.

    The one teacher-inference path of the package (``label``, validation targets of ``distill``,
    ``train-teacher`` validation, ``evaluate --teacher``). Clips are sorted by length and run in
    zero-padded batches of at most ``batch_seconds`` of padded audio as
    ``teacher(wave, lengths)`` under ``torch.inference_mode`` on the teacher's device (teachers
    are padding invariant, so a clip's output does not depend on its batch), or through the
    teacher's ``predict_waves`` for torch-free (ONNX) teachers. The module's train/eval mode is
    left as it is (:func:`wav2small.load_teacher` returns it in eval mode).

    Args:
        teacher: a :class:`wav2small.teachers.Teacher`, any module mapping
            ``(wave, lengths)`` to (batch, 3), or an object with ``predict_waves(waves)``.
        waves: float waveforms at 16 kHz.
        names: one name per clip (e.g. its file) for error messages; default ``clip <i>``.
        batch_seconds: most padded audio per call (default: the teacher's
            ``max_batch_seconds``, else :data:`TEACHER_BATCH_SECONDS`).
        embedding: also return the teacher's pooled embeddings (``embedding=True`` of
            :meth:`wav2small.teachers.Teacher.forward` or of ``predict_waves``).

    Returns:
        (n, 3) float32 A/D/V; with ``embedding=True`` the pair (A/D/V, (n, D) float32).

    Raises:
        ValueError: outputs that are not (batch, 3) (or embeddings not (batch, embedding_dim)).
        wav2small.errors.NonFiniteError: NaN/Inf outputs or embeddings (a ``ValueError``); the
            message names the clip and the teacher.
        wav2small.errors.UserError: ``embedding=True`` for a teacher without one (one line;
            a ``TeacherError`` or ``OnnxTeacherError`` from the teacher).
    """
    names = [f"clip {i}" for i in range(len(waves))] if names is None else list(names)
    if len(names) != len(waves):
        raise ValueError(f"{len(names)} names for {len(waves)} clips")
    out = np.zeros((len(waves), len(LABELS)), np.float32)
    dim = teacher_embedding_dim(teacher) if embedding else 0
    emb = np.zeros((len(waves), dim), np.float32)
    if not len(waves):
        return (out, emb) if embedding else out
    seconds = batch_seconds or getattr(teacher, "max_batch_seconds", TEACHER_BATCH_SECONDS)
    budget = seconds * SAMPLE_RATE
    run = _teacher_runner(teacher, embedding)
    order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
    start = 0
    while start < len(order):
        stop = start + 1  # sorted by length: the last clip of a group is its longest
        while stop < len(order) and len(waves[order[stop]]) * (stop - start + 1) <= budget:
            stop += 1
        group = order[start:stop]
        y = run([np.asarray(waves[i], dtype=np.float32) for i in group])
        y, e = y if embedding else (y, None)
        _check_teacher_outputs(y, teacher, [names[i] for i in group], e)
        out[group] = y
        if embedding:
            emb[group] = e
        start = stop
    return (out, emb) if embedding else out


def teacher_embedding_dim(teacher) -> int:
    """A teacher's ``embedding_dim`` (size of ``embedding=True`` outputs).

    Raises:
        UserError: the teacher gives no embedding (its own one-line error when it has one).
    """
    dim = getattr(teacher, "embedding_dim", None)
    if dim is None:
        if hasattr(teacher, "no_embedding"):
            raise teacher.no_embedding()
        raise UserError(f"teacher {_teacher_name(teacher)!r} gives no embedding")
    return int(dim)


def _long_file(path: str, window_seconds: float) -> tuple[int, int] | None:
    """``(samples, pieces)`` when a file is longer than one teacher window, else None."""
    import math

    from wav2small.audio import audio_info

    info = audio_info(path)
    n = math.ceil(info.frames * SAMPLE_RATE / info.sample_rate)
    win = int(round(window_seconds * SAMPLE_RATE))
    return (n, math.ceil(n / win)) if n > win else None


def teacher_predict_files(
    teacher,
    paths: Sequence[str | os.PathLike],
    *,
    progress: bool = False,
    desc: str = "teacher",
    batch_seconds: float | None = None,
    embedding: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """:func:`teacher_predict` on audio files (whole clips) → (n, 3) float32, in ``paths`` order.

    Memory does not grow with file length: files are read a batch of ``batch_seconds`` at a
    time, and a file longer than the teacher's ``window_seconds`` (20 s) is streamed from disk
    in the equal pieces :meth:`wav2small.teachers.Teacher.forward` cuts it into
    (``ceil(n / window)`` pieces of ``ceil(n / pieces)`` samples), whose outputs are averaged
    as there. With ``embedding=True`` the pair (A/D/V, (n, D) embeddings), pieces averaged
    the same way.

    Raises:
        AudioError: an unreadable file (named).
        wav2small.errors.NonFiniteError: non-finite teacher outputs (the file is named).
    """
    import itertools
    import math

    from wav2small.audio import iter_windows, read_audio
    from wav2small.data import _progress

    paths = [os.fspath(p) for p in paths]
    seconds = batch_seconds or getattr(teacher, "max_batch_seconds", TEACHER_BATCH_SECONDS)
    budget = seconds * SAMPLE_RATE
    window = getattr(teacher, "window_seconds", None)
    out = np.zeros((len(paths), len(LABELS)), np.float32)
    emb = np.zeros((len(paths), teacher_embedding_dim(teacher) if embedding else 0), np.float32)
    pending: list[int] = []
    waves: list[np.ndarray] = []

    def predict(clips: list[np.ndarray], names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        got = teacher_predict(
            teacher, clips, names=names, batch_seconds=seconds, embedding=embedding
        )
        return got if embedding else (got, np.zeros((len(clips), 0), np.float32))

    def flush() -> None:
        if pending:
            out[pending], emb[pending] = predict(waves, [paths[i] for i in pending])
            pending.clear()
            waves.clear()

    for i in _progress(range(len(paths)), progress, desc):
        long = _long_file(paths[i], window) if window else None
        if long is not None:
            n, k = long
            size = math.ceil(n / k) / SAMPLE_RATE
            pieces = iter_windows(paths[i], win=size, hop=size)
            outputs = [  # the k pieces of the header's length (a resampled stream may run on
                # by a sample)
                predict([w], [paths[i]])
                for _, _, w in itertools.islice(pieces, k)
            ]
            out[i] = np.mean([o[0][0] for o in outputs], axis=0)
            if embedding:
                emb[i] = np.mean([e[0] for _, e in outputs], axis=0)
            continue
        wave = read_audio(paths[i])
        if waves and sum(map(len, waves)) + len(wave) > budget:
            flush()
        pending.append(i)
        waves.append(wave)
    flush()
    return (out, emb) if embedding else out


__all__ = [
    "BACKENDS",
    "DEFAULT_THREADS",
    "Backend",
    "OnnxBackend",
    "RUN_WEIGHTS",
    "TEACHER_BATCH_SECONDS",
    "TorchBackend",
    "check_audio_model",
    "check_finite",
    "label_order",
    "make_backend",
    "onnx_metadata",
    "onnx_session",
    "resolve_model_path",
    "session_options",
    "teacher_embedding_dim",
    "teacher_predict",
    "teacher_predict_files",
]
