"""Model cards: a ``MODEL_CARD.md`` written next to every exported model.

A card states what a user needs before deploying a student: what it predicts, the data and teacher
it learned from, how it scored, its size and the export checks, what it is for and where it fails.
Facts come from the checkpoint metadata, the training run folder (``config.yaml``,
``summary.json``) when the checkpoint sits in one, the export report and, when the caller has
them, evaluation results. Nothing is invented: a fact that is not known is written as unknown.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from wav2small import LABELS, SAMPLE_RATE

CARD_NAME = "MODEL_CARD.md"

INTENDED_USE = (
    "Dimensional speech emotion recognition: arousal, dominance and valence of one speaker's "
    "voice in 16 kHz mono audio, each in [0, 1] (0.5 neutral), for on-device analytics, "
    "research and as a fast pre-filter before a large model. Predictions are estimates of how "
    "listeners would rate the voice, not of what the speaker feels."
)

LIMITS = [
    "Not for decisions about people (hiring, credit, health, policing, education): "
    "emotion estimates from voice are unreliable across speakers, cultures and recording "
    "conditions.",
    "A student copies its teacher: the teacher's biases and errors are inherited, "
    "and the student is usually less accurate than the teacher.",
    "Trained and evaluated on the data named above only; accuracy on other languages, "
    "microphones, noise, overlapping speakers, singing or children's voices is not measured.",
    "Utterance-level model: scores for clips shorter than about 1 s are unreliable; for long "
    "recordings use a sliding window (`wav2small predict --win 4 --hop 1`).",
]

SYNTHETIC_LIMITS = (
    "The built-in corpus is espeak-ng speech whose prosody encodes A/D/V by construction "
    "(docs/SYNTH.md): a model trained only on it has learned those synthetic cues and must "
    "NOT be used on real speech. It is a test bed for the method, not a product model."
)


def run_facts(weights: str | os.PathLike) -> dict[str, Any]:
    """Training facts of a checkpoint: its metadata plus its run folder's config and summary.

    Args:
        weights: a ``.safetensors``/``.ckpt`` checkpoint; when it sits in a training run folder,
            that folder's ``config.yaml`` and ``summary.json`` are read too.

    Returns:
        A dict with any of ``info`` (checkpoint metadata), ``config`` and ``summary``.
    """
    from wav2small.models import read_checkpoint

    weights = Path(weights)
    info, _ = read_checkpoint(weights)
    facts: dict[str, Any] = {"info": dict(info), "checkpoint": str(weights)}
    config, summary = weights.parent / "config.yaml", weights.parent / "summary.json"
    if config.is_file():
        import yaml

        facts["config"] = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    if summary.is_file():
        facts["summary"] = json.loads(summary.read_text(encoding="utf-8"))
    return facts


def _training_lines(facts: dict[str, Any]) -> list[str]:
    info, config = facts.get("info", {}), facts.get("config", {})
    summary = facts.get("summary", {})
    mode = config.get("mode") or info.get("mode")
    if not mode:
        return ["* Training: unknown (no run folder or training metadata with this checkpoint)."]
    if mode == "distill":
        targets = config.get("targets") or info.get("targets") or "unknown"
        lines = [
            "* Training: **distilled** — the student learned the teacher's outputs on "
            f"unlabelled audio ({targets} targets); no human labels were used.",
            f"* Teacher: `{config.get('teacher') or info.get('teacher') or 'unknown'}`.",
            f"* Audio: `{config.get('audio') or 'unknown'}`.",
        ]
    else:
        lines = [
            "* Training: **labelled-only** — the student learned gold labels (rater means).",
            f"* Data: `{config.get('data') or 'unknown'}`.",
        ]
    if config:
        from wav2small.data import crops_text

        crops = crops_text(config.get("crop_seconds"))
        lines.append(
            f"* Recipe: {config.get('max_steps')} steps of {config.get('batch_size')} × "
            f"{'≤ ' if crops.endswith('crops') else ''}{crops}, lr {config.get('lr')}, seed "
            f"{config.get('seed')}."
        )
    if "best_val_ccc_mean" in summary:
        lines.append(
            f"* Validation (held-out share of the training audio, against "
            f"{summary.get('val_target', 'unknown')}): mean CCC "
            f"{summary['best_val_ccc_mean']:.3f} at the kept checkpoint."
        )
    return lines


def _metrics_lines(metrics: dict[str, dict[str, float]] | None) -> list[str]:
    if not metrics:
        return [
            "Not evaluated at export time. Score it with "
            "`wav2small evaluate MODEL --data CSV --teacher T`.",
        ]
    lines = ["| data · reference | " + " | ".join(LABELS) + " |", "|---" * 4 + "|"]
    for name, values in metrics.items():
        lines.append(
            f"| {name} | " + " | ".join(f"{values.get(k, float('nan')):.3f}" for k in LABELS) + " |"
        )
    lines += ["", "Concordance correlation coefficient (CCC), full utterances."]
    return lines


def _synthetic(facts: dict[str, Any], data: str | None) -> bool:
    config = facts.get("config", {})
    teacher = str(config.get("teacher") or facts.get("info", {}).get("teacher") or "")
    return bool(data and "synthetic" in data.lower()) or teacher in ("synth", "teacher-synth")


#: Said plainly when only 16-bit activations passed the int8 fidelity gate.
A16_NOTE = (
    "* **Not a true 8-bit model: 16-bit activations.** With 8-bit activations the int8 model "
    "missed the fidelity gate (CCC vs fp32 < 0.99 on a dimension), so the int8 file keeps int8 "
    "weights (same size) but 16-bit activations: slower on CPU than 8-bit, and not runnable "
    "where only 8-bit integer kernels exist."
)


def model_card(
    *,
    info: dict[str, str],
    report,
    facts: dict[str, Any] | None = None,
    metrics: dict[str, dict[str, float]] | None = None,
    data: str | None = None,
    untrained: bool = False,
) -> str:
    """The Markdown text of a model card.

    Args:
        info: the model's facts (:func:`wav2small.models.model_info`).
        report: the :class:`wav2small.export.ExportReport` of the export.
        facts: training facts (:func:`run_facts`), if known.
        metrics: ``{"test · gold": {label: CCC}, ...}`` from an evaluation, if run.
        data: a one-line description of the training data, if the caller knows it.
        untrained: the weights are a random initialisation (an export smoke test).
    """
    facts = facts or {}
    preset = info.get("preset", "unknown")
    int8 = (
        f"`{Path(report.int8_path).name}` {report.int8_bytes / 1024:.1f} KB "
        f"(int8 weights, {report.int8_activation_bits}-bit activations); CCC int8 vs fp32 "
        + ", ".join(f"{k} {v:.4f}" for k, v in report.int8_ccc.items())
        if report.int8_path
        else "not written"
    )
    parity = max(report.max_abs_diff.values()) if report.max_abs_diff else float("nan")
    lines = [
        f"# Model card: {preset}",
        "",
        "**Untrained random weights: an export smoke test, not a model to use.**"
        if untrained
        else "",
        "## Model",
        "",
        f"* Architecture: `{preset}` (wav2small {info.get('wav2small_version', '?')}); "
        f"config `{info.get('config', '{}')}`.",
        f"* Input: mono float32 waveform at {info.get('sample_rate', SAMPLE_RATE)} Hz, any "
        "length (the input is normalised inside the model).",
        f"* Output: 3 values in the order **{info.get('labels', ','.join(LABELS))}** "
        "(stored in the ONNX metadata).",
        f"* Files: `{Path(report.fp32_path).name}` {report.fp32_bytes / 1024:.1f} KB fp32; {int8}.",
        *([A16_NOTE] if report.int8_path and report.int8_activation_bits == 16 else []),
        f"* Export checks: fp32 ONNX vs torch max |diff| {parity:.1e}; gate "
        + ("passed." if report.passed else "**FAILED**."),
        "",
        "## Training data and teacher",
        "",
        *([f"* Data: {data}"] if data else []),
        *_training_lines(facts),
        "",
        "## Metrics",
        "",
        *_metrics_lines(metrics),
        "",
        "## Intended use",
        "",
        INTENDED_USE,
        "",
        "## Limits",
        "",
        *([f"* {SYNTHETIC_LIMITS}"] if _synthetic(facts, data) else []),
        *[f"* {limit}" for limit in LIMITS],
        "",
    ]
    return "\n".join(lines).replace("\n\n\n", "\n\n")


def write_model_card(out_dir: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``out_dir``/MODEL_CARD.md atomically (temp name, then rename)."""
    from wav2small.inputs import write_text

    return write_text(Path(out_dir) / CARD_NAME, text)


def exit_model_card(
    *,
    model,
    report,
    ms_per_5s: float | None = None,
    scores: dict[str, float] | None = None,
    test: str | None = None,
    facts: dict[str, Any] | None = None,
) -> str:
    """The Markdown card of one exported exit of an early-exit model (``wav2small selfdistill``).

    Args:
        model: the :class:`~wav2small.models.exits.EarlyExitModel` that was exported.
        report: its :class:`~wav2small.selfdistill.ExitExportReport`.
        ms_per_5s: ONNX Runtime milliseconds for one 5 s clip with one thread (measured on the
            written file), if measured.
        scores: the exit's row of :func:`wav2small.selfdistill.evaluate_exits` (``uar``,
            ``accuracy`` or ``ccc_*``, ``n``), if scored.
        test: the labelled CSV the scores come from.
        facts: training facts (:func:`run_facts`), if known.
    """
    from wav2small.export import PARITY_MAX_ABS

    facts = facts or {}
    config = facts.get("config", {})
    cfg = model.config
    backbone = config.get("backbone") or cfg.backbone_name or cfg.backbone_type
    exit_ = report.exit
    layers, total = model.depth(exit_), model.depth("deepest")
    head = {"deepest": "the deepest head (all layers)", "fusion": "fusion of the exits"}.get(
        exit_, f"the exit head after layer {exit_}"
    )
    output = (
        f"`logits` over the classes **{', '.join(cfg.classes)}** (in this order; also in the "
        "ONNX metadata `labels`)"
        if cfg.task == "classes"
        else "`adv`: 3 values, **" + ", ".join(LABELS) + "**"
    )
    parity = max(report.max_abs_diff.values()) if report.max_abs_diff else float("nan")
    if ms_per_5s is None:
        speed = ["Not measured at export time."]
    else:
        speed = [
            f"* **{ms_per_5s:.1f} ms** per 5 s clip: ONNX Runtime, 1 thread, median of the "
            f"written file on the exporting machine ({os.cpu_count()} cores; timings on a "
            "shared machine vary, compare exits timed in one run)."
        ]
    if not scores:
        metrics = [
            "Not evaluated at export time: `wav2small export MODEL --exit K --out DIR --test CSV` "
            "scores the exit on a labelled CSV (or `wav2small selfdistill-eval`)."
        ]
    else:
        keys = ("uar", "accuracy") if cfg.task == "classes" else tuple(f"ccc_{k}" for k in LABELS)
        names = {"uar": "UAR", "accuracy": "accuracy"} | {f"ccc_{k}": f"CCC {k}" for k in LABELS}
        metrics = [
            f"On `{test}` ({int(scores.get('n', 0))} clips, whole utterances), this exit:",
            "",
            "| " + " | ".join(names[k] for k in keys) + " |",
            "|---" * len(keys) + "|",
            "| " + " | ".join(f"{float(scores[k]):.3f}" for k in keys) + " |",
            "",
            "Scored with torch at this exit (the one inference path of `selfdistill-eval`); the "
            f"ONNX file matches torch within {PARITY_MAX_ABS:g} (export gate).",
        ]
    if config:
        method = (
            f"self-distillation with exits after layers {config.get('exits')}"
            if config.get("exits")
            else "plain fine-tuning (no exits)"
        )
        training = [
            f"* Method: {method}; task `{config.get('task')}`.",
            f"* Data: `{config.get('data')}`.",
            f"* Recipe: {config.get('max_steps')} steps of {config.get('batch_size')} × ≤ "
            f"{config.get('crop_seconds')} s crops, Adam lr {config.get('lr')} "
            f"({config.get('scheduler', 'constant')} after warm-up {config.get('warmup_steps')}), "
            f"seed {config.get('seed')}.",
        ]
    else:
        training = ["* Unknown (no run folder next to the checkpoint)."]
    synthetic = "synth" in f"{backbone} {config.get('data', '')}".lower()
    lines = [
        f"# Model card: {backbone}, exit {exit_}",
        "",
        "## Model",
        "",
        f"* Early-exit model (`wav2small selfdistill`): backbone `{backbone}` truncated after "
        f"layer {layers} of {total}, then {head}; the later layers are not in the file.",
        f"* Parameters used: {model.parameters_used(exit_):,} (whole model "
        f"{sum(p.numel() for p in model.parameters()):,}).",
        f"* Input: mono float32 waveform `signal` (batch, samples) at {SAMPLE_RATE} Hz, any "
        "length (normalised inside the model).",
        f"* Output: {output}.",
        f"* File: `{Path(report.path).name}` {report.bytes / 1024:.1f} KB fp32 (no int8 for "
        f"early exits); ONNX vs torch max |diff| {parity:.1e}; gate "
        + ("passed." if report.passed else "**FAILED**."),
        "",
        "## Speed",
        "",
        *speed,
        "",
        "## Metrics",
        "",
        *metrics,
        "",
        "## Training",
        "",
        *training,
        "",
        "## Limits",
        "",
        *([f"* {SYNTHETIC_LIMITS}"] if synthetic else []),
        f"* {LIMITS[0]}",
        f"* {LIMITS[2]}",
        "",
    ]
    return "\n".join(lines)
