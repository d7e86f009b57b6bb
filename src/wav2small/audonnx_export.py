"""audonnx folders: a wav2small ONNX model in the layout ``audonnx.load(root)`` reads as is.

audEERING's tools (``audonnx``, ``audinterface``) load a model from a folder holding
``model.onnx`` and ``model.yaml``; the YAML is an audobject dump of ``audonnx.Model`` whose first
line names the class (``$audonnx.core.model.Model==<version>:``). ``audonnx.Model`` reshapes the
input to the ONNX input's shape, so the input may have only ONE dynamic axis: the folder's model
takes ``signal`` of shape ``[1, samples]`` and returns ``logits`` of shape ``[1, 3]`` labelled
arousal, dominance, valence (audEERING's own A/D/V models use the same output name).

The folder is written without importing audonnx (the text below is what
``audonnx.Model(path, labels=...).to_yaml(...)`` writes; ``tests/test_audonnx_export.py``
checks that against the real package).

Example:
    >>> import audonnx, audinterface  # doctest: +SKIP
    >>> model = audonnx.load("export/audonnx")  # doctest: +SKIP
    >>> feature = audinterface.Feature(  # doctest: +SKIP
    ...     model.labels("logits"), process_func=model,
    ...     process_func_args={"outputs": "logits"}, sampling_rate=16000, resample=True)
    >>> feature.process_files(files)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from wav2small import LABELS

#: File names inside an audonnx folder.
ONNX_FILE = "model.onnx"
YAML_FILE = "model.yaml"
#: Output node name (audEERING's A/D/V models call their A/D/V output ``logits``).
LOGITS = "logits"
#: audonnx version the YAML is written for when audonnx itself is not installed.
AUDONNX_VERSION = "1.0.1"
#: Sub-folders :func:`wav2small.export.export` writes next to model.onnx / model.int8.onnx.
FOLDERS = {
    "model.onnx": "audonnx",
    "model.int8.onnx": "audonnx-int8",
    "model.int8-a16.onnx": "audonnx-int8-a16",  # 16-bit activations (export.INT8_NAMES)
}


def _audonnx_version() -> str:
    try:
        from importlib.metadata import version

        return version("audonnx")
    except Exception:  # not installed: the version the layout was checked against
        return AUDONNX_VERSION


def audonnx_yaml(labels: Sequence[str] = LABELS, *, version: str | None = None) -> str:
    """The ``model.yaml`` text of an audonnx model with one output ``logits`` and no transform."""
    version = version or _audonnx_version()
    lines = [
        f"$audonnx.core.model.Model=={version}:",
        f"  path: {ONNX_FILE}",
        "  labels:",
        f"    {LOGITS}:",
        *[f"    - {label}" for label in labels],
        "  transform: null",
    ]
    return "\n".join(lines) + "\n"


def _single_dynamic_axis(proto) -> None:
    """Fix the batch axis of the (only) input and output to 1; rename the output to ``logits``."""
    if len(proto.graph.input) != 1 or len(proto.graph.output) != 1:
        raise ValueError("an audonnx export needs one input (signal) and one output (A/D/V)")
    for value in (proto.graph.input[0], proto.graph.output[0]):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = 1
    old = proto.graph.output[0].name
    if old != LOGITS:
        for node in proto.graph.node:
            node.output[:] = [LOGITS if o == old else o for o in node.output]
            node.input[:] = [LOGITS if i == old else i for i in node.input]
        proto.graph.output[0].name = LOGITS


def write_audonnx(onnx_path: str | os.PathLike, root: str | os.PathLike) -> Path:
    """Write ``root/model.onnx`` + ``root/model.yaml`` from a wav2small ONNX model.

    Args:
        onnx_path: fp32 or int8 model written by :func:`wav2small.export.export`.
        root: output folder (created); each file is written under a temporary name and renamed.

    Returns:
        The folder.

    Raises:
        ValueError: the model's ``labels`` metadata is not arousal, dominance, valence.
    """
    import onnx

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    proto = onnx.load(os.fspath(onnx_path))
    labels = {p.key: p.value for p in proto.metadata_props}.get("labels", ",".join(LABELS))
    names = [s.strip() for s in labels.split(",")]
    if names != list(LABELS):
        raise ValueError(f"{onnx_path}: outputs {names}; expected {list(LABELS)} in that order")
    from wav2small.export import plain_graph

    plain_graph(proto)  # a staged Wav2Small export: drop the optional inputs and token outputs
    _single_dynamic_axis(proto)
    from wav2small.inputs import atomic_write, write_text

    with atomic_write(root / ONNX_FILE) as tmp:
        onnx.save(proto, os.fspath(tmp))
    write_text(root / YAML_FILE, audonnx_yaml(names))
    return root


def write_audonnx_folders(out_dir: str | os.PathLike) -> list[Path]:
    """An audonnx folder for each of ``model.onnx`` / ``model.int8.onnx`` present in ``out_dir``."""
    out_dir = Path(out_dir)
    return [
        write_audonnx(out_dir / name, out_dir / folder)
        for name, folder in FOLDERS.items()
        if (out_dir / name).is_file()
    ]


__all__ = ["audonnx_yaml", "write_audonnx", "write_audonnx_folders"]
