"""Model factory: students by preset name (timm-style ``create_model``)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from wav2small.models.mobilenet import TIMM_ARCHS
from wav2small.models.wav2small import Wav2Small, Wav2SmallConfig

# Preset → constructor. `wav2small-tiny`: the released 13-channel design (n_fft 64, 26 mels, VGG7).
# `wav2small-paper`: the paper gives 72K parameters, 250 tokens/s, ~9 MB RAM and ~9 ms per 5 s but
# not the layout [open, SPEC §1.2]. Ours must see pitch (the released 26-band, 4 ms input resolves
# no harmonic of a voice and kept 0.20× of the teacher's valence), so it reads a pitch-resolving
# image (31 DFT bins 62–1000 Hz of a 32 ms window + 12 mels to 8 kHz, hop 64) with a local
# normalisation (exact token reuse in streams), and a time-convolution trunk at
# 250 frames/s: every layer's parameters are its MACs per token (≈ 66K × 250 tokens/s). Its
# dilations 1, 3, 9, 27 give each token ±41 frames (±164 ms). The built-in corpus puts valence in
# an utterance-scale F0 ramp (later words higher) that ±164 ms tokens and an order-invariant
# softmax pooling cannot see, so the head also reads a trend pooling (`trend`: the slope over the
# clip of an 8-channel 1×1 map, exactly computable online): valence CCC 0.02 → 0.12 vs gold over
# two seeds. The local normalisation removes loudness, which the built-in teacher uses for
# arousal and dominance (its log-mels keep the level; r = 0.83 with vocal effort), so the trunk
# also reads the subtracted local level as one more row (`level`, session 10): on the demo's
# recipe A/D vs gold 0.678/0.638 → 0.717/0.706 on test and 0.510/0.543 → 0.624/0.645 on test-ood.
# The corpus's valence also lives in roughness (weaker alternate glottal cycles), which puts energy
# between the harmonics that only a 64 ms window resolves; the trunk reads one frozen row of the
# subharmonic-to-harmonic ratio from such a band (`shr_fft`, session 11): test valence vs gold
# 0.375/0.386 → 0.440/0.421 over two seeds, arousal and dominance unchanged.
# eSpeak's declination grows with the F0 span and differs by voice, so a slope alone is a biased
# contour cue; the head reads the trend inside the Gram (`trend_gram`, session 14: products of
# each slope with the pooled features and the other slopes), width 68 → 67 to pay for it:
# valence vs gold over two seeds 0.440 → 0.488 on test and 0.379 → 0.507 on test-ood.
# 72,656 trainable parameters. A frozen pitch-salience input (`pitch_bins`), a wider
# normalisation and a longer trunk were measured and did not beat it at this budget:
# docs/DISTILL.md ("Front-end study").
PAPER_CONFIG = Wav2SmallConfig(
    frontend="pitch",
    norm="local",
    norm_frames=125,
    width=67,
    pool=30,
    dilations=(1, 3, 9, 27),
    trend=8,
    trend_gram=True,
    level=True,
    shr_fft=1024,
)
_PRESETS: dict[str, Callable[[], nn.Module]] = {
    "wav2small-tiny": lambda: Wav2Small(Wav2SmallConfig(stem=13, width=13)),
    "wav2small-paper": lambda: Wav2Small(PAPER_CONFIG),
}


def _mobilenet(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from wav2small.models.mobilenet import create_mobilenet  # timm is imported lazily

        return create_mobilenet(name)

    return build


# timm MobileNets on the same log-mel image (SPEC §1.3; models/mobilenet.py).
_PRESETS.update({name: _mobilenet(name) for name in TIMM_ARCHS})

#: What the registry holds: students (this package's presets), teachers (by alias, built by
#: :func:`wav2small.teachers.load_teacher`) and random early-exit backbones (by shape, built by
#: :func:`wav2small.models.exits.load_backbone`). The teacher and backbone tables stay with their
#: code (``teachers.ALIASES``, ``exits.RANDOM_BACKBONES``); they are listed here on first use.
KINDS = ("student", "teacher", "backbone")
_REGISTRY: dict[str, dict[str, Callable[..., nn.Module]]] = {
    "student": _PRESETS,
    "teacher": {},
    "backbone": {},
}


def _teacher(name: str) -> Callable[..., nn.Module]:
    def build(**kwargs) -> nn.Module:
        from wav2small.teachers import load_teacher

        return load_teacher(name, **kwargs)

    return build


def _backbone(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from wav2small.models.exits import RANDOM_PREFIX, load_backbone

        return load_backbone(RANDOM_PREFIX + name)

    return build


def _table(kind: str) -> dict[str, Callable[..., nn.Module]]:
    if kind not in _REGISTRY:
        raise ValueError(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    table = _REGISTRY[kind]
    if kind == "teacher" and not table:
        from wav2small.teachers.base import ALIASES

        table.update({name: _teacher(name) for name in ALIASES})
    elif kind == "backbone" and not table:
        from wav2small.models.exits import RANDOM_BACKBONES

        table.update({name: _backbone(name) for name in RANDOM_BACKBONES})
    return table


def register_model(name: str, factory: Callable[..., nn.Module], *, kind: str = "student") -> None:
    """Add (or replace) an entry: ``create_model(name, kind=kind)`` then calls ``factory()``.

    Student names starting with ``wav2small`` must build a :class:`Wav2Small` (checkpoints
    rebuild it from its stored config).
    """
    _table(kind)[name] = factory


def list_models(kind: str = "student") -> list[str]:
    """Names accepted by :func:`create_model` for a kind (students by default).

    Args:
        kind: ``student``, ``teacher`` (aliases such as ``synth``, ``dawn``) or ``backbone``
            (random early-exit backbones, ``random:<name>`` in ``selfdistill``).
    """
    return sorted(_table(kind))


def create_model(name: str, *, kind: str = "student", **kwargs) -> nn.Module:
    """Build a model by registered name: a random student, a teacher, or a random backbone.

    Args:
        name: one of :func:`list_models` of that kind.
        kind: ``student`` (default), ``teacher`` or ``backbone``.
        **kwargs: passed to the factory (teachers: ``device``, ``clip``).

    Raises:
        ValueError: unknown kind or name.
    """
    table = _table(kind)
    if name not in table:
        what = "model" if kind == "student" else kind
        raise ValueError(f"unknown {what} {name!r}; choose from {', '.join(sorted(table))}")
    model = table[name](**kwargs)
    if kind == "student":
        model.preset = name
    return model


def count_parameters(model: nn.Module, *, trainable: bool = True) -> int:
    """Number of (trainable, or all) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


# --- checkpoints ------------------------------------------------------------------------------
# A student checkpoint is a safetensors file whose metadata names the preset, its config and the
# output labels; Lightning ``.ckpt`` files written by our trainers carry the same facts under the
# key "wav2small" and are read with ``torch.load(weights_only=True)`` (never unpickled).


def model_info(model: nn.Module) -> dict[str, str]:
    """Facts stored with every saved or exported model (all strings)."""
    import json

    from wav2small import LABELS, SAMPLE_RATE, __version__

    config = model.config_dict() if hasattr(model, "config_dict") else {}
    return {
        "preset": getattr(model, "preset", type(model).__name__),
        "config": json.dumps(config, sort_keys=True),
        "labels": ",".join(LABELS),
        "sample_rate": str(SAMPLE_RATE),
        "wav2small_version": __version__,
    }


def build_from_info(info: dict[str, str]) -> nn.Module:
    """Rebuild an untrained model from :func:`model_info` facts."""
    import json

    preset = info["preset"]
    config = json.loads(info.get("config") or "{}")
    if config and preset.startswith("wav2small"):
        model = Wav2Small(Wav2SmallConfig(**config))
    elif "image" in config:  # a MobileNet: its image and head as trained, not today's preset
        from wav2small.models.mobilenet import MobileNetConfig, MobileNetStudent

        image = config["image"]
        image = MobileNetConfig(**{**image, "stem_stride": tuple(image["stem_stride"])})
        model = MobileNetStudent(config["arch"], n_outputs=config["n_outputs"], image=image)
    else:
        model = create_model(preset)
    model.preset = preset
    return model


#: Most parameters a student checkpoint may declare; a config asking for more is refused before
#: anything is allocated (the largest preset, MobileNetV4-large, has about 31M).
MAX_PARAMETERS = 100_000_000


def check_finite_state(state: dict, name: str) -> None:
    """Raise unless every floating-point tensor of a state dict is finite.

    Raises:
        wav2small.errors.NonFiniteError: names the checkpoint and the first bad tensor.
    """
    import torch

    from wav2small.errors import NonFiniteError

    bad = [
        k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]
    if bad:
        raise NonFiniteError(
            f"{name}: weight {bad[0]!r} has NaN or Inf values ({len(bad)} such tensors)"
        )


def save_model(model: nn.Module, path, *, extra: dict[str, str] | None = None) -> None:
    """Write weights and facts to a safetensors file (atomically: unique temp name, rename).

    Raises:
        wav2small.errors.NonFiniteError: a NaN/Inf weight (nothing is written).
    """
    from safetensors.torch import save_file

    from wav2small.inputs import atomic_write

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    check_finite_state(state, str(path))
    with atomic_write(path) as tmp:
        save_file(state, str(tmp), metadata={**model_info(model), **(extra or {})})


def read_checkpoint(path) -> tuple[dict[str, str], dict]:
    """Facts and state dict of a ``.safetensors`` file or a trainer ``.ckpt`` (never unpickled).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file cannot be read as a checkpoint.
    """
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), framework="pt") as f:
                info = f.metadata() or {}
            return info, load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types for bad files
            raise ValueError(f"{path}: not a readable safetensors file ({exc})") from exc
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad files
        raise ValueError(f"{path}: not a readable checkpoint ({exc})") from exc
    if not isinstance(ckpt, dict):
        return {}, {}
    state = {
        k.removeprefix("model."): v
        for k, v in ckpt.get("state_dict", {}).items()
        if k.startswith("model.")
    }
    return ckpt.get("wav2small", {}), state


def check_state(path, info: dict[str, str], state: dict) -> None:
    """Check a checkpoint against the model its facts describe, before building it for real.

    The model is first built on torch's ``meta`` device (no memory), so an absurd config (say a
    width of 10^9) is refused before any allocation; then every tensor's name, shape and dtype
    must match (no fp16 or int64 surprises) and every weight must be finite.

    Raises:
        ValueError: an unbuildable or oversized config, or a name/shape/dtype mismatch.
        wav2small.errors.NonFiniteError: NaN/Inf weights.
    """
    check_built_state(path, lambda: build_from_info(info), state, name=info.get("preset", ""))


def build_on_meta(
    path, build: Callable[[], nn.Module], *, limit: int = MAX_PARAMETERS
) -> nn.Module:
    """``build()`` on torch's ``meta`` device (no memory): refuse a config that cannot be built
    or declares more than ``limit`` parameters, before anything is allocated.

    Returns:
        The skeleton (parameters without storage).

    Raises:
        ValueError: an unbuildable or oversized config (``path`` is named).
    """
    import torch

    try:
        with torch.device("meta"):
            skeleton = build()
    except Exception as exc:  # a config the constructors reject
        raise ValueError(f"{path}: its model config cannot be built ({exc})") from exc
    n = count_parameters(skeleton, trainable=False)
    if n > limit:
        raise ValueError(
            f"{path}: its config declares {n:,} parameters (more than {limit:,}); "
            "refusing to build it"
        )
    return skeleton


def check_built_state(path, build: Callable[[], nn.Module], state: dict, *, name: str = "") -> None:
    """:func:`check_state` for any model family: ``build()`` runs on the ``meta`` device.

    Raises:
        ValueError: an unbuildable or oversized config, or a name/shape/dtype mismatch.
        wav2small.errors.NonFiniteError: NaN/Inf weights.
    """
    expected = build_on_meta(path, build).state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not match its {name} config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for key, ref in expected.items():
        got = state[key]
        if tuple(got.shape) != tuple(ref.shape) or got.dtype != ref.dtype:
            raise ValueError(
                f"{path}: weight {key!r} is {got.dtype} {tuple(got.shape)}, expected "
                f"{ref.dtype} {tuple(ref.shape)}"
            )
    check_finite_state(state, str(path))


def load_model(path) -> nn.Module:
    """Load a student from a ``.safetensors`` file or a trainer ``.ckpt`` (eval mode).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a wav2small checkpoint, or its weights do not match its
            config (names, shapes, dtypes) or the config is absurd (see :func:`check_state`).
        wav2small.errors.NonFiniteError: NaN/Inf weights.
    """
    info, state = read_checkpoint(path)
    if "preset" not in info:
        raise ValueError(f"{path}: not a wav2small checkpoint (no 'preset' in its metadata)")
    check_state(path, info, state)
    model = build_from_info(info)
    model.load_state_dict(state)
    return model.eval()
