"""Hub-style student folders: one folder (or Hugging Face repository) per trained student.

``wav2small export`` writes, next to ``model.onnx`` / ``model.int8.onnx``:

* ``config.json`` — ``model_type`` "wav2small-student", the preset and its config, the output
  labels (arousal, dominance, valence), the sample rate, the files and the export checks;
* ``model.safetensors`` — the torch weights with the same facts in the safetensors metadata
  (:func:`wav2small.models.save_model`; reloadable with ``wav2small.models.load_model``);
* ``README.md`` — the model card (:mod:`wav2small.card`) under a YAML front matter with the
  Hugging Face metadata (``library_name``, ``pipeline_tag``, ``tags``) and the same facts.

Uploaded as is (``huggingface-cli upload org/name folder``), the folder is a hub repository.
:func:`resolve_model` turns a folder or a hub id into the file a :class:`wav2small.Predictor`
runs: the int8 ONNX when present (else fp32), ``variant="fp32"`` for fp32, or the safetensors
weights with ``backend="torch"``. Hub ids resolve through huggingface_hub's cache; with
``HF_HUB_OFFLINE=1`` (or no network) only the cache is used. No torch is imported for ONNX.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from wav2small import LABELS, SAMPLE_RATE
from wav2small.inputs import write_text

MODEL_TYPE = "wav2small-student"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
README_FILE = "README.md"
FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx", "weights": WEIGHTS_FILE}
VARIANTS = ("auto", "int8", "fp32")
#: Files fetched for a hub id (the ONNX runtime never needs the weights).
HUB_PATTERNS = [CONFIG_FILE, README_FILE, "*.onnx"]


def student_config(info: dict[str, str], report) -> dict[str, Any]:
    """The ``config.json`` of a student folder from its facts and export report."""
    files = {"fp32": FILES["fp32"], "weights": WEIGHTS_FILE}
    if report.int8_path:  # model.int8-a16.onnx when only 16-bit activations passed the gate
        files["int8"] = Path(report.int8_path).name.removesuffix(".rejected")
    return {
        "model_type": MODEL_TYPE,
        "preset": info.get("preset"),
        "config": json.loads(info.get("config") or "{}"),
        "labels": info.get("labels", ",".join(LABELS)).split(","),
        "sample_rate": int(info.get("sample_rate", SAMPLE_RATE)),
        "wav2small_version": info.get("wav2small_version"),
        "files": files,
        "export": {
            "fp32_bytes": report.fp32_bytes,
            "int8_bytes": report.int8_bytes,
            "parity_max_abs_diff": report.max_abs_diff,
            "int8_ccc_vs_fp32": report.int8_ccc,
            "int8_activation_bits": report.int8_activation_bits,
            "passed": report.passed,
        },
    }


def front_matter(config: dict[str, Any], *, untrained: bool = False) -> str:
    """YAML front matter of the hub README (JSON values are valid YAML)."""
    tags = ["wav2small", "speech-emotion-recognition", "arousal", "dominance", "valence", "onnx"]
    meta = {
        "library_name": "wav2small",
        "pipeline_tag": "audio-classification",
        "tags": tags + (["untrained"] if untrained else []),
        "wav2small": {
            "preset": config["preset"],
            "labels": config["labels"],
            "sample_rate": config["sample_rate"],
            "files": config["files"],
        },
    }
    body = "\n".join(f"{k}: {json.dumps(v)}" for k, v in meta.items())
    return f"---\n{body}\n---\n\n"


def write_hub_files(
    model,
    out_dir: str | os.PathLike,
    *,
    info: dict[str, str],
    report,
    card: str,
    untrained: bool = False,
) -> Path:
    """Write config.json, model.safetensors and README.md into an export folder.

    Args:
        model: the exported torch model.
        out_dir: the export folder (already holding the ONNX files).
        info: the model's facts (:func:`wav2small.models.model_info` + export metadata).
        report: the :class:`wav2small.export.ExportReport`.
        card: the model card text (:func:`wav2small.card.model_card`).
        untrained: random weights (tagged ``untrained`` in the hub metadata).
    """
    from wav2small.models import save_model

    out_dir = Path(out_dir)
    config = student_config(info, report)
    save_model(model, out_dir / WEIGHTS_FILE, extra={k: v for k, v in info.items() if v})
    write_text(out_dir / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    write_text(out_dir / README_FILE, front_matter(config, untrained=untrained) + card)
    return out_dir


def read_student_config(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The config of a student folder, or None when ``folder`` is not one."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable config: {exc}") from exc
    return config if isinstance(config, dict) and config.get("model_type") == MODEL_TYPE else None


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~", "/"))


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def download(repo_id: str) -> Path:
    """Local folder of a hub student (config, README, ONNX files) via huggingface_hub's cache.

    Raises:
        ValueError: huggingface_hub is missing, or the id is neither cached nor downloadable.
    """
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise ValueError(
            f"{repo_id}: loading a hub id needs huggingface_hub (pip install huggingface_hub)"
        ) from exc
    errors = []
    for local_only in [True] if _offline() else [False, True]:
        try:
            folder = Path(
                snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, local_files_only=local_only)
            )
            if read_student_config(folder) is not None:
                return folder
            errors.append(f"{folder} is not a wav2small student folder")
        except Exception as exc:  # offline, unknown repo, HTTP errors
            errors.append(f"{type(exc).__name__}: {exc}".splitlines()[0])
    how = "HF_HUB_OFFLINE is set" if _offline() else "the hub could not be reached"
    raise ValueError(
        f"{repo_id}: not a local folder and not in the Hugging Face cache, and {how} "
        f"({'; '.join(errors)[:300]})"
    )


def resolve_model(model, *, variant: str = "auto", backend: str = "auto"):
    """The file to run for a student folder or hub id; anything else is returned unchanged.

    Args:
        model: a student folder, a hub id ``org/name``, or anything :class:`Predictor` takes.
        variant: ``auto`` (int8 when present, else fp32), ``int8`` or ``fp32``.
        backend: ``torch`` picks the safetensors weights.

    Raises:
        ValueError: an unknown variant, or a variant / file the folder does not have.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if not isinstance(model, str | os.PathLike):
        return model
    name = os.fspath(model)
    path = Path(name).expanduser()
    if path.is_dir():
        config = read_student_config(path)
        if config is None:
            return model
        folder = path
    elif not path.exists() and _looks_like_hub_id(name):
        folder = download(name)
        config = read_student_config(folder)
    else:
        return model
    files = config.get("files", {})
    if backend == "torch":
        key = "weights"
    elif variant == "auto":
        key = "int8" if (folder / files.get("int8", FILES["int8"])).is_file() else "fp32"
    else:
        key = variant
    file = folder / files.get(key, FILES[key])
    if not file.is_file():
        if backend == "torch" and not path.is_dir():
            file = _download_file(name, file.name)
        else:
            raise ValueError(f"{name}: the student folder has no {key} model ({file.name})")
    return str(file)


def _download_file(repo_id: str, filename: str) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id, filename, local_files_only=_offline()))


__all__ = ["download", "read_student_config", "resolve_model", "write_hub_files"]
