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
  ``labels`` metadata; NaN/Inf outputs raise, naming the model); :func:`make_backend` picks one.

The ONNX path imports no torch (and no scipy): onnxruntime and numpy only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from wav2small import LABELS, SAMPLE_RATE

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
        ValueError: NaN or Inf outputs, naming the model (``source``).
    """
    if not np.isfinite(out).all():
        raise ValueError(
            f"{source}: the model gave non-finite outputs (NaN or Inf); its weights are broken"
        )
    return out


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
        self.order = label_order(self.metadata.get("labels"), path)
        self.input_name = self.session.get_inputs()[0].name
        self.path = path

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: batch.astype(np.float32, copy=False)})[0]
        return check_finite(out[:, self.order], self.path)


# --- torch ------------------------------------------------------------------------------------
class TorchBackend:
    """A torch model on CPU (or ``device``): (batch, samples) float32 → (batch, 3).

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


__all__ = [
    "BACKENDS",
    "DEFAULT_THREADS",
    "Backend",
    "OnnxBackend",
    "RUN_WEIGHTS",
    "TorchBackend",
    "check_finite",
    "label_order",
    "make_backend",
    "onnx_metadata",
    "onnx_session",
    "resolve_model_path",
    "session_options",
]
