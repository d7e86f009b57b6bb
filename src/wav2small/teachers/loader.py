"""Load any teacher by name (:func:`load_teacher`) and save one in its Hugging Face layout."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from wav2small.teachers.base import (
    ALIASES,
    CONFIG_FILE,
    ENSEMBLE_PREFIX,
    SAFETENSORS_FILE,
    Teacher,
    TeacherError,
    load_weights,
    read_weights,
)
from wav2small.teachers.dawn import Wav2Vec2Teacher
from wav2small.teachers.ensemble import EnsembleTeacher
from wav2small.teachers.odyssey import WavLMTeacher
from wav2small.teachers.resolve import resolve
from wav2small.teachers.synth import SynthTeacher


def _read_config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise TeacherError(f"{folder / CONFIG_FILE}: cannot read the config: {e}") from e
    if not isinstance(config, dict):
        raise TeacherError(f"{folder / CONFIG_FILE}: expected a JSON object")
    return config


def teacher_kind(config: dict[str, Any]) -> str:
    """'dawn', 'odyssey', 'ensemble' or 'synth' from a ``config.json``; '' when unknown."""
    arch = " ".join(config.get("architectures") or [])
    model_type = config.get("model_type", "")
    if model_type == "wav2small-ensemble":
        return "ensemble"
    if model_type == "wav2small-synth-teacher":
        return "synth"
    if model_type == "ser" or "SERModel" in arch:
        return "odyssey"
    if model_type == "wav2vec2" or "Wav2Vec2" in arch:
        return "dawn"
    return ""


def _build(folder: Path, config: dict[str, Any], state: dict[str, torch.Tensor]) -> Teacher:
    kind = teacher_kind(config)
    if kind == "dawn":
        return Wav2Vec2Teacher(config)
    if kind == "odyssey":
        conv_bias = any(k.endswith("feature_extractor.conv_layers.0.conv.bias") for k in state)
        masked = any(k.endswith("masked_spec_embed") for k in state)
        return WavLMTeacher(config, conv_bias=conv_bias, masked_spec_embed=masked)
    if kind == "synth":
        return SynthTeacher(config)
    raise TeacherError(
        f"{folder / CONFIG_FILE}: unknown teacher layout (model_type {config.get('model_type')!r}, "
        f"architectures {config.get('architectures')!r}); expected Dawn (wav2vec2), WavLM-Odyssey "
        "(ser), a wav2small ensemble or the synthetic-world teacher"
    )


#: Most parameters a teacher config may declare (8 GB of float32; the largest published teacher,
#: WavLM-Odyssey, has about 0.3 billion); a config asking for more is refused before allocating.
MAX_TEACHER_PARAMETERS = 2_000_000_000


def _check_size(folder: Path, config: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
    """Build the teacher on the ``meta`` device (no memory) and refuse an absurd config.

    Raises:
        TeacherError: the config cannot be built or declares more than
            :data:`MAX_TEACHER_PARAMETERS` parameters.
    """
    from wav2small.models import build_on_meta

    if not teacher_kind(config):
        _build(folder, config, state)  # raises: unknown layout
    try:
        build_on_meta(
            folder / CONFIG_FILE,
            lambda: _build(folder, config, state),
            limit=MAX_TEACHER_PARAMETERS,
        )
    except TeacherError:
        raise
    except ValueError as exc:
        raise TeacherError(str(exc)) from exc


def _load_folder(folder: Path, label: str) -> Teacher:
    config = _read_config(folder)
    if teacher_kind(config) == "ensemble":
        members = [_load_folder(folder / sub, f"{label}/{sub}") for sub in config["members"]]
        for member, name in zip(members, config.get("member_names") or [], strict=False):
            member.name = name
        teacher: Teacher = EnsembleTeacher(members, clip=bool(config.get("clip", False)))
        teacher.name = label
        return teacher
    state = read_weights(folder)
    _check_size(folder, config, state)
    teacher = _build(folder, config, state)
    load_weights(teacher, state, str(folder))
    teacher.name = label
    return teacher


def load_teacher(
    name_or_path: str | os.PathLike, *, device: str | torch.device = "cpu", clip: bool = False
) -> Teacher:
    """Load a teacher by alias, local folder, Hugging Face id, or ``ensemble:A+B``.

    Args:
        name_or_path: ``dawn``, ``odyssey``, ``ensemble`` (Dawn + Odyssey), ``synth`` (the shipped
            synthetic-world teacher), a folder in any supported layout, a hub id, or
            ``ensemble:A+B[+C…]`` of any of these.
        device: where to put the model.
        clip: for ensembles, clip the averaged outputs to [0, 1].

    Returns:
        The teacher in eval mode: ``teacher(wave, lengths=None) -> (batch, 3)`` A/D/V.

    Raises:
        TeacherError: unknown name, missing/corrupt files, weights that do not fit the config,
            or a hub id that cannot be resolved offline (the message names it).
    """
    name = os.fspath(name_or_path)
    full = ALIASES.get(name, name)
    if full.startswith(ENSEMBLE_PREFIX):
        parts = [p for p in full[len(ENSEMBLE_PREFIX) :].split("+") if p]
        if len(parts) < 2:
            raise TeacherError(f"{name!r}: an ensemble needs two or more members, 'ensemble:A+B'")
        teacher: Teacher = EnsembleTeacher([load_teacher(p) for p in parts], clip=clip)
    else:
        teacher = _load_folder(resolve(full), name)
    teacher.name = name
    return teacher.to(device).eval()


def teacher_min_samples(name_or_path: str | os.PathLike) -> int:
    """Fewest samples (16 kHz) the teacher ``name_or_path`` labels, read from its config alone.

    No weights are read: the model is built on the ``meta`` device, so a driver that hands a
    teacher's name to remote workers (``label --engine ray``) can reject clips too short for it
    by name, as the local engine does (an ensemble: its largest member's minimum).

    Raises:
        TeacherError: the name cannot be resolved or its config cannot be built.
    """
    from wav2small.teachers.onnx import OnnxTeacher, is_onnx_teacher

    name = os.fspath(name_or_path)
    full = ALIASES.get(name, name)
    if full.startswith(ENSEMBLE_PREFIX):
        return max(teacher_min_samples(p) for p in full[len(ENSEMBLE_PREFIX) :].split("+") if p)
    if is_onnx_teacher(full):
        return int(OnnxTeacher.min_samples)
    return _folder_min_samples(resolve(full))


def _folder_min_samples(folder: Path) -> int:
    config = _read_config(folder)
    if teacher_kind(config) == "ensemble":
        return max(_folder_min_samples(folder / sub) for sub in config["members"])
    _check_size(folder, config, {})
    with torch.device("meta"):
        skeleton = _build(folder, config, {})
    return max(1, int(getattr(skeleton, "min_samples", 1) or 1))


def _write_atomic(path: Path, write) -> None:
    from wav2small.inputs import atomic_write

    with atomic_write(path) as tmp:
        write(tmp)


def save_teacher(model: Teacher, path: str | os.PathLike) -> Path:
    """Save a teacher in its Hugging Face layout (``config.json`` + ``model.safetensors``).

    The folder reloads with :func:`load_teacher`; Dawn and Odyssey checkpoints keep their public
    key names. Each file is written under a temporary name and renamed.

    Returns:
        The folder.
    """
    from safetensors.torch import save_file

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    config = model.config_dict()
    if isinstance(model, EnsembleTeacher):
        for sub, member in zip(config["members"], model.members, strict=True):
            save_teacher(member, folder / sub)
    else:
        state = {
            k: v.detach().to("cpu").contiguous().clone()
            for k, v in model.export_state_dict().items()
        }
        _write_atomic(
            folder / SAFETENSORS_FILE,
            lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}),
        )
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    _write_atomic(folder / CONFIG_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return folder
