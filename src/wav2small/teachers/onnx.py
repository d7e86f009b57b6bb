"""ONNX teachers: label audio with an audonnx/ONNX folder on ONNX Runtime, without torch.

audEERING publishes Dawn (wav2vec2-large-robust-12, MSP-Podcast A/D/V) as an audonnx folder
(zenodo 6221127, the w2v2-how-to notebook): ``model.onnx`` with one input ``signal`` of shape
``[1, -1]`` (raw 16 kHz mono float; the per-utterance normalisation is part of the graph, the
notebook feeds the raw signal) and two outputs, ``hidden_states`` ``[1, 1024]`` (the pooled last
transformer layer) and ``logits`` ``[1, 3]``; ``model.yaml`` (or the legacy ``labels.yaml``) names
the logits arousal, dominance, valence. :class:`OnnxTeacher` reads that layout (and the folders
:mod:`wav2small.audonnx_export` writes, or a bare ``.onnx`` whose single output is A/D/V):

* clips are run one at a time (the input's batch axis is fixed to 1);
* a clip longer than :data:`WINDOW_SECONDS` is cut into equal windows of at most that length
  whose outputs are averaged, as the torch teachers do (:class:`wav2small.teachers.Teacher`);
* outputs are reordered to arousal, dominance, valence from the labels; non-finite outputs stop
  with an error naming the teacher;
* when the model also has a ``hidden_states`` output (the pooled embedding its head reads, as in
  audEERING's Dawn export), ``predict_waves(waves, embedding=True)`` returns it too (windows
  averaged like A/D/V) and :attr:`OnnxTeacher.embedding_dim` is its size; otherwise that is None.

:func:`export_dawn_onnx` writes a torch Dawn-layout teacher (:class:`Wav2Vec2Teacher`) in that
published layout (normalisation inside the graph), e.g. a tiny random one for tests, or the real
checkpoint for fast CPU labelling.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path

import numpy as np

from wav2small import LABELS, SAMPLE_RATE
from wav2small.errors import UserError
from wav2small.inputs import atomic_write, write_text

ONNX_FILE = "model.onnx"
YAML_FILE = "model.yaml"
LEGACY_LABELS_FILE = "labels.yaml"
LOGITS = "logits"
HIDDEN = "hidden_states"
#: Longest window seen at once (as the torch teachers); longer clips average equal windows.
WINDOW_SECONDS = 20.0
#: Shortest input run through the model; shorter clips are zero-padded to it (Dawn's conv stack
#: needs 400 samples for one frame).
MIN_SAMPLES = 400


class OnnxTeacherError(UserError):
    """An ONNX teacher folder that cannot be used; the message names it and the problem."""


def is_onnx_teacher(name: str | os.PathLike) -> bool:
    """Whether ``name`` is an ``.onnx`` file or a folder holding ``model.onnx``."""
    path = Path(os.fspath(name)).expanduser()
    if path.is_file():
        return path.suffix.lower() == ".onnx"
    return (path / ONNX_FILE).is_file()


def _yaml_labels(text: str, output: str) -> list[str] | None:
    """Labels of ``output`` in an audonnx model.yaml / labels.yaml (pyyaml when installed)."""
    try:
        import yaml
    except ImportError:  # the torch-free runtime has no pyyaml: the two layouts audonnx writes
        block = re.search(
            rf"^\s*{output}:\s*(\[(?P<flow>[^\]]*)\]|\n(?P<items>(\s*-\s*.+\n?)+))", text, re.M
        )
        if not block:
            return None
        raw = block["flow"].split(",") if block["flow"] is not None else block["items"].split("\n")
        return [s.strip().lstrip("-").strip() for s in raw if s.strip()]
    data = yaml.load(text, Loader=yaml.BaseLoader)  # plain strings; no objects are built
    if isinstance(data, dict) and len(data) == 1 and next(iter(data)).startswith("$audonnx"):
        data = (next(iter(data.values())) or {}).get("labels")
    if isinstance(data, dict) and isinstance(data.get(output), list):
        return [str(v) for v in data[output]]
    return None


class OnnxTeacher:
    """A teacher on ONNX Runtime: ``teacher.predict_waves([wave, ...]) -> (n, 3)`` A/D/V.

    Args:
        path: folder with ``model.onnx`` (+ ``model.yaml`` or ``labels.yaml``), or a ``.onnx``.
        threads: ONNX Runtime intra-op threads (default 1, as every session of the package).
        name: teacher id written into label tables (default: ``path``).

    Raises:
        OnnxTeacherError: missing file, not loadable, no A/D/V output, or labels that are not
            arousal/dominance/valence.
    """

    window_seconds = WINDOW_SECONDS
    min_samples = MIN_SAMPLES

    def __init__(
        self, path: str | os.PathLike, *, threads: int | None = None, name: str | None = None
    ) -> None:
        from wav2small.backends import onnx_session

        root = Path(os.fspath(path)).expanduser()
        onnx_file = root if root.is_file() else root / ONNX_FILE
        folder = onnx_file.parent
        if not onnx_file.is_file():
            raise OnnxTeacherError(f"{root}: no {ONNX_FILE} in this folder")
        try:  # the package's one session builder (threads: default 1, sequential)
            self.session = onnx_session(onnx_file, threads=threads)
        except ValueError as exc:
            raise OnnxTeacherError(str(exc)) from exc
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise OnnxTeacherError(f"{onnx_file}: expected one input (signal), got {len(inputs)}")
        self.input_name = inputs[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        self.output = LOGITS if LOGITS in outputs else outputs[0] if len(outputs) == 1 else None
        if self.output is None:
            raise OnnxTeacherError(
                f"{onnx_file}: no '{LOGITS}' output among {outputs}; cannot tell which is A/D/V"
            )
        labels = self._labels(folder, onnx_file)
        if sorted(labels) != sorted(LABELS):
            raise OnnxTeacherError(
                f"{folder}: output '{self.output}' is labelled {labels}, expected {list(LABELS)}"
            )
        self.order = [labels.index(label) for label in LABELS]
        self.labels = LABELS
        self.name = name or os.fspath(path)
        self.path = str(onnx_file)
        self.hidden = HIDDEN if HIDDEN in outputs and self.output != HIDDEN else None
        self.embedding_dim: int | None = self._hidden_dim() if self.hidden else None

    def _hidden_dim(self) -> int:
        """Size of the ``hidden_states`` output: its static last axis, else one short run."""
        (out,) = [o for o in self.session.get_outputs() if o.name == self.hidden]
        if out.shape and isinstance(out.shape[-1], int) and out.shape[-1] > 0:
            return int(out.shape[-1])
        return int(self._run(np.zeros(MIN_SAMPLES, np.float32), embedding=True)[1].size)

    def _labels(self, folder: Path, onnx_file: Path) -> list[str]:
        for file in (folder / YAML_FILE, folder / LEGACY_LABELS_FILE):
            if file.is_file():
                labels = _yaml_labels(file.read_text(encoding="utf-8"), self.output)
                if labels:
                    return labels
        meta = self.session.get_modelmeta().custom_metadata_map.get("labels")
        if meta:  # a wav2small export
            return [s.strip() for s in meta.split(",")]
        raise OnnxTeacherError(
            f"{onnx_file}: no labels for output '{self.output}' ({YAML_FILE}, {LEGACY_LABELS_FILE} "
            "or ONNX metadata); cannot tell which output is arousal, dominance, valence"
        )

    def _run(self, x: np.ndarray, *, embedding: bool = False):
        if len(x) < MIN_SAMPLES:
            x = np.pad(x, (0, MIN_SAMPLES - len(x)))
        feed = {self.input_name: np.ascontiguousarray(x, dtype=np.float32)[None, :]}
        names = [self.output, self.hidden] if embedding else [self.output]
        result = self.session.run(names, feed)
        adv = result[0].reshape(-1)[self.order]
        return (adv, result[1].reshape(-1)) if embedding else adv

    def predict_waves(self, waves: list[np.ndarray], *, embedding: bool = False):
        """A/D/V of each 16 kHz mono clip → (n, 3) float32, windows of ≤ 20 s averaged.

        Args:
            waves: 16 kHz mono clips.
            embedding: also return the ``hidden_states`` output, (n, :attr:`embedding_dim`)
                float32, averaged over the windows like A/D/V.

        Returns:
            (n, 3) A/D/V, or the tuple (A/D/V, embeddings) with ``embedding=True``.

        Raises:
            OnnxTeacherError: the model returned NaN or Inf, or ``embedding=True`` for a model
                without a ``hidden_states`` output.
        """
        if embedding and self.embedding_dim is None:
            raise self.no_embedding()
        win = int(round(self.window_seconds * SAMPLE_RATE))
        out = np.zeros((len(waves), len(LABELS)), np.float32)
        emb = np.zeros((len(waves), self.embedding_dim or 0), np.float32)
        for i, wave in enumerate(waves):
            k = max(1, math.ceil(len(wave) / win))
            size = math.ceil(len(wave) / k)
            pieces = [wave[j * size : (j + 1) * size] for j in range(k)]
            runs = [self._run(piece, embedding=embedding) for piece in pieces]
            if embedding:
                out[i] = np.mean([r[0] for r in runs], 0)
                emb[i] = np.mean([r[1] for r in runs], 0)
            else:
                out[i] = np.mean(runs, 0)
        if not (np.isfinite(out).all() and np.isfinite(emb).all()):
            raise OnnxTeacherError(f"teacher {self.name}: non-finite outputs")
        return (out, emb) if embedding else out

    def no_embedding(self) -> OnnxTeacherError:
        """The one-line error for ``embedding=True`` on a model without ``hidden_states``."""
        return OnnxTeacherError(
            f"teacher {self.name!r}: gives no embedding (no '{HIDDEN}' output in {self.path})"
        )

    def __repr__(self) -> str:
        return f"OnnxTeacher({self.path!r})"


def export_dawn_onnx(teacher, folder: str | os.PathLike, *, opset: int = 17) -> Path:
    """Write a Dawn-layout torch teacher as audEERING's ONNX folder (model.onnx + model.yaml).

    The graph takes the raw signal ``[1, samples]`` and includes the per-utterance
    normalisation; outputs ``hidden_states`` (mean of the last hidden layer) and ``logits``.
    """
    import onnx
    import torch

    from wav2small.audonnx_export import audonnx_yaml
    from wav2small.teachers.dawn import normalise_per_utterance

    class _Dawn(torch.nn.Module):
        def __init__(self, t) -> None:
            super().__init__()
            self.t = t

        def forward(self, signal: torch.Tensor):
            lengths = torch.full((1,), signal.shape[1], dtype=torch.long)
            x = normalise_per_utterance(signal, lengths)
            hidden = self.t.wav2vec2(x).last_hidden_state.mean(1)
            logits = self.t.classifier(hidden)
            return hidden, logits if self.t._order is None else logits[:, self.t._order]

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    example = torch.randn(1, SAMPLE_RATE, generator=torch.Generator().manual_seed(0))
    with atomic_write(folder / ONNX_FILE) as tmp:  # unique temp name, removed on error
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation and tracer notes
            warnings.simplefilter("ignore")
            _export(torch, _Dawn(teacher).eval(), example, tmp, opset)
        proto = onnx.load(str(tmp))
        # the batch axis is a fixed 1, as in the published model
        for value in (*proto.graph.input, *proto.graph.output):
            dim = value.type.tensor_type.shape.dim[0]
            dim.Clear()
            dim.dim_value = 1
        onnx.save(proto, str(tmp))
    # model.yaml as audonnx writes it: logits labelled A/D/V, hidden states unnamed
    write_text(folder / YAML_FILE, audonnx_yaml(LABELS))
    return folder


def _export(torch, module, example, path: Path, opset: int) -> None:
    # TorchScript exporter: wav2vec2's attention traces to a compact graph with a dynamic time axis
    torch.onnx.export(
        module,
        (example,),
        str(path),
        input_names=["signal"],
        output_names=[HIDDEN, LOGITS],
        dynamic_axes={"signal": {1: "time"}},
        opset_version=opset,
        dynamo=False,
    )


__all__ = ["OnnxTeacher", "OnnxTeacherError", "export_dawn_onnx", "is_onnx_teacher"]
