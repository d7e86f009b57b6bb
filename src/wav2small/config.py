"""Training configuration, one way for every trainer: dataclass ← YAML ← flags ← ``--set k=v``.

The settings of ``distill``/``train`` (:class:`StudentConfig`), ``train-teacher``
(:class:`TeacherConfig`) and ``selfdistill`` (:class:`SelfDistillConfig`) are dataclasses that
share a base (:class:`RunConfig`: run folder, seed, split, batch, learning rate, crops, resume,
bad-file policy; :class:`LightningConfig` adds what the two Lightning trainers share).

:func:`resolve` merges layers over the defaults — a YAML file, the explicit command-line flags,
then every ``--set key=value`` (repeatable; each value is read as YAML and coerced to the field's
type, so ``--set devices=2`` is the integer 2). Unknown keys, values of the wrong type and
non-finite numbers are rejected with a message naming the setting. This module imports neither
torch nor numpy (the CLI reads the defaults from it to build its help).
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from wav2small.errors import UserError

#: ``on_error`` choices: stop at the first bad input, or skip it and report it.
ON_ERROR = ("raise", "skip")
#: ONNX exporters of ``export``: ``auto`` (dynamo for students, TorchScript for early exits,
#: whose GRU the dynamo exporter cannot export), ``dynamo`` (opset 18), ``torchscript`` (17).
EXPORTERS = ("auto", "dynamo", "torchscript")
_NULLS = ("null", "None", "none", "~", "")


# --- the options every command shares --------------------------------------------------------
@dataclass
class CommonOptions:
    """The options the CLI declares once and every subcommand shares, with their defaults.

    ``wav2small <cmd> --help`` reads these defaults (and the trainers' :class:`RunConfig`
    fields take theirs from here), so each option means the same and defaults the same in every
    subcommand that has it.

    Attributes:
        threads: compute threads of this process (torch and ONNX Runtime intra-op); ``None``:
            the library's own (1 for ONNX Runtime sessions, torch's default for torch).
        jobs: parallel workers over independent items (files, clips, students; the trainers'
            data-loader processes).
        progress: show progress bars on stderr.
        on_error: ``raise`` at the first bad input, or ``skip`` it and list it in a
            ``skipped.csv`` report (exit 2 when nothing is left).
        debug: print the Python traceback of an error.
        seed: the one seed of a command (weights, splits, crops, test signals, the corpus).
    """

    threads: int | None = None
    jobs: int = 1
    progress: bool = True
    on_error: str = "raise"
    debug: bool = False
    seed: int = 0


@dataclass
class DemoOptions:
    """Defaults of ``wav2small demo`` (:func:`wav2small.demo.run_demo`).

    Attributes:
        out: run folder.
        jobs: processes: corpus synthesis, and the two students trained side by side.
        teacher: teacher name or folder (the built-in synthetic-world teacher).
        seed: the demo's seed.
    """

    out: str = "runs/demo"
    jobs: int = 2
    teacher: str = "synth"
    seed: int = CommonOptions.seed


@dataclass
class LabelOptions:
    """Defaults of ``wav2small label`` (:func:`wav2small.labels.label`).

    Attributes:
        batch_seconds: most padded audio (seconds) per teacher call.
        shard_rows: rows per Parquet shard.
    """

    batch_seconds: float = 60.0
    shard_rows: int = 256


@dataclass
class TimelineOptions:
    """Defaults of timelines (``predict --timeline``, ``plot-timeline``; :mod:`wav2small.infer`).

    Attributes:
        step: seconds between rows.
        context: seconds behind each row.
    """

    step: float = 0.5
    context: float = 4.0


@dataclass
class SynthOptions:
    """Defaults of ``wav2small synth`` (:func:`wav2small.synth.generate`).

    Attributes:
        raters: simulated raters per clip (0 publishes the true labels).
        rater_bias: sd of a rater's bias.
        rater_noise: sd of a rating's noise.
    """

    raters: int = 5
    rater_bias: float = 0.08
    rater_noise: float = 0.25


@dataclass
class ServeOptions:
    """Defaults of ``wav2small serve`` (:mod:`wav2small.serve`).

    Attributes:
        port: port on 127.0.0.1.
    """

    port: int = 8017


# --- the shared base ------------------------------------------------------------------------
@dataclass
class RunConfig:
    """Settings every trainer shares.

    Attributes:
        out: run folder (the resolved ``config.yaml`` is written there).
        seed: the one seed of the run (weights, split, crops, augmentation).
        val: validation CSV; default: hold out ``val_fraction`` of the training data.
        val_fraction: share of the training clips held out when ``val`` is not given.
        batch_size: clips per optimiser step.
        lr: peak learning rate.
        crop_seconds: longest random training crop (``None`` or 0: whole clips, each batch
            zero-padded to its longest clip, never cut).
        on_error: ``raise`` at the first unusable training file (unreadable, too short for the
            model, non-finite or absurd samples or labels), or ``skip`` it and list it in the
            run's ``skipped.csv`` and log.
        progress: show progress bars.
        resume: ``last`` (the run folder's own checkpoint), a checkpoint path, or empty.
        threads: torch threads of the training process (``None`` or 0: torch's default).

    ``on_error``, ``progress`` and ``threads`` default as in :class:`CommonOptions`.
    """

    #: Settings a resumed run may change (everything else must match the saved config.yaml).
    RESUME_FREE: ClassVar[frozenset[str]] = frozenset(
        {"resume", "progress", "num_workers", "threads", "accelerator", "devices", "strategy"}
        | {"max_steps", "epochs", "max_minutes", "val_every", "log_every"}
    )

    out: str = "runs/run"
    seed: int = CommonOptions.seed
    val: str | None = None
    val_fraction: float = 0.1
    batch_size: int = 16
    lr: float = 1e-3
    crop_seconds: float | None = 4.0
    on_error: str = CommonOptions.on_error
    progress: bool = CommonOptions.progress
    resume: str | None = None
    threads: int | None = CommonOptions.threads

    def check_common(self) -> None:
        """Check the shared settings.

        Raises:
            UserError: a setting out of range (the message names it).
        """
        check_choice("on_error", self.on_error, ON_ERROR)
        if self.batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise UserError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.val_fraction < 1:
            raise UserError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.crop_seconds == 0:  # 0: whole clips (None is "not set" in a settings layer)
            self.crop_seconds = None
        if self.crop_seconds is not None and not self.crop_seconds > 0:
            raise UserError(f"crop_seconds must be > 0 (0: whole clips), got {self.crop_seconds}")
        if self.threads is not None and self.threads < 0:
            raise UserError(f"threads must be >= 0, got {self.threads}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML/JSON-serialisable; tuples become lists)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


@dataclass
class LightningConfig(RunConfig):
    """What the Lightning trainers (``distill``/``train``, ``selfdistill``) share.

    Attributes:
        max_steps: optimiser steps of the whole run.
        warmup_steps: linear warm-up: a fraction of the run when below 1, else steps, in both
            cases at most a tenth of the run (see :func:`wav2small.runs.warmup_length`).
        min_crop_seconds: shortest batch crop; shorter clips are zero-padded (with lengths).
        grad_clip: gradient-norm clipping (0: off).
        val_every: validate every this many steps (0: once per pass over the data).
        log_every: log training metrics every this many steps.
        num_workers: data-loader worker processes.
        accelerator: Lightning accelerator (``cpu``, ``gpu``, ``auto``).
        devices: Lightning devices (an int or ``auto``).
        strategy: Lightning strategy: ``auto``, or ``ddp`` (one process per device).
        precision: Lightning precision (``32-true``, ``bf16-mixed``, ...).
        deterministic: ask torch for deterministic algorithms.
    """

    max_steps: int = 0
    warmup_steps: float = 0
    min_crop_seconds: float = 1.0
    grad_clip: float = 0.0
    val_every: int = 0
    log_every: int = 10
    num_workers: int = 0
    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    precision: str = "32-true"
    deterministic: bool = False

    def check_lightning(self) -> None:
        """:meth:`check_common` plus the Lightning settings."""
        self.check_common()
        for key in ("num_workers", "warmup_steps", "grad_clip", "val_every", "min_crop_seconds"):
            if getattr(self, key) < 0:
                raise UserError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.log_every < 1:
            raise UserError(f"log_every must be > 0, got {self.log_every}")


# --- the three trainers ---------------------------------------------------------------------
MODES = ("distill", "train")
#: Share of a MobileNet student's steps after which its BatchNorm layers use running statistics
#: (``freeze_bn_step``'s default for MobileNets).
MOBILENET_FREEZE_BN = 0.15
TARGETS = ("online", "cached", "gold")
VAL_TARGETS = ("auto", "gold", "teacher")
SCHEDULERS = ("cosine", "constant")


@dataclass
class StudentConfig(LightningConfig):
    """Every setting of a ``distill``/``train`` run (``wav2small.train.TrainConfig``).

    Attributes:
        mode: ``distill`` (teacher targets) or ``train`` (gold labels).
        student: a preset of :func:`wav2small.list_models`.
        teacher: teacher name or folder; needed for online targets and for validation against
            the teacher.
        audio: distillation audio: a folder, a CSV with a ``file`` column, or an audio file.
        data: labelled CSV (``file, arousal, dominance, valence``) for ``train`` mode.
        labels: cached teacher labels (Parquet from ``wav2small label``) for ``targets: cached``.
        targets: ``online`` or ``cached`` (distill); ``gold`` (train; set automatically).
        val_target: ``gold``, ``teacher``, or ``auto`` (teacher when distilling, gold otherwise).
        aug_ratio: probability of mixing a crop with another clip or noise.
        aug_mix_clip: of the mixed crops, the share mixed with another clip (else noise);
            default 0.5 with online targets and 0 with cached or gold targets.
        snr_low: lowest mixing SNR in dB.
        snr_high: highest mixing SNR in dB.
        noise_dir: folder of noise recordings (default: generated white/pink/brown noise).
        gain_db: random gain ±dB.
        shift_prob: probability of a circular time shift.
        shift_seconds: largest time shift.
        weight_decay: AdamW weight decay.
        scheduler: ``cosine`` (decay to 0 at ``max_steps``) or ``constant`` after warm-up.
        mse_weight: weight of an added MSE term (0: CCC loss only).
        hint_weight: weight of the embedding-hint loss (0: off; distill with cached labels that
            carry the teacher's ``embedding``): a training-only linear map of the student's
            pooled features regresses the teacher's standardised embedding (docs/DISTILL.md).
        freeze_bn_step: from this optimiser step on, BatchNorm layers normalise with their
            running statistics in training too, as at inference (0: never; unset: 15 % of
            ``max_steps`` for MobileNet students, :data:`MOBILENET_FREEZE_BN`, and never for
            Wav2Small). Trained only on the batch statistics of 8 clips, a MobileNet blew up on
            single clips at inference (docs/DISTILL.md, "MobileNet students").

    The shared settings are documented on :class:`RunConfig` and :class:`LightningConfig`.
    """

    out: str = "runs/distill"
    lr: float = 2e-3
    max_steps: int = 3000
    warmup_steps: float = 100
    num_workers: int = 2
    mode: str = "distill"
    student: str = "wav2small-paper"
    teacher: str | None = None
    audio: str | None = None
    data: str | None = None
    labels: str | None = None
    targets: str = "online"
    val_target: str = "auto"
    aug_ratio: float = 0.5
    aug_mix_clip: float | None = None
    snr_low: float = 5.0
    snr_high: float = 30.0
    noise_dir: str | None = None
    gain_db: float = 0.0
    shift_prob: float = 0.0
    shift_seconds: float = 0.5
    weight_decay: float = 0.01
    scheduler: str = "cosine"
    mse_weight: float = 0.0
    hint_weight: float = 0.0
    freeze_bn_step: int | None = None

    def validate(self) -> StudentConfig:
        """Check the settings and fill ``targets``/``val_target``/``aug_mix_clip``; return self.

        Raises:
            UserError: an inconsistent or invalid setting (the message names it).
        """
        check_choice("mode", self.mode, MODES)
        check_choice("targets", self.targets, TARGETS)
        check_choice("val_target", self.val_target, VAL_TARGETS)
        check_choice("scheduler", self.scheduler, SCHEDULERS)
        if self.mode == "train":
            if not self.data:
                raise UserError("train mode needs `data`: a labelled CSV (--data)")
            self.targets = "gold"
        else:
            if not self.audio:
                raise UserError("distill mode needs `audio`: a folder or CSV of clips (--audio)")
            if self.targets == "gold":
                raise UserError("distill mode learns teacher targets: targets online or cached")
            if self.targets == "online" and not self.teacher:
                raise UserError("online distillation needs a teacher (--teacher)")
            if self.targets == "cached" and not self.labels:
                raise UserError(
                    "cached targets need a label table from `wav2small label` (--labels)"
                )
        if self.val_target == "auto":
            self.val_target = "teacher" if self.mode == "distill" else "gold"
        if self.aug_mix_clip is None:
            self.aug_mix_clip = 0.5 if self.targets == "online" else 0.0
        if self.max_steps < 1:
            raise UserError(f"max_steps must be > 0, got {self.max_steps}")
        self.check_lightning()
        if self.batch_size < 2:
            raise UserError("batch_size must be >= 2: the CCC loss needs a batch")
        if self.freeze_bn_step is None:  # the student family's default
            mobilenet = self.student.startswith("mobilenet")
            self.freeze_bn_step = round(MOBILENET_FREEZE_BN * self.max_steps) if mobilenet else 0
        for key in ("mse_weight", "weight_decay", "hint_weight", "freeze_bn_step"):
            if not getattr(self, key) >= 0:  # NaN fails too
                raise UserError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.hint_weight > 0 and self.targets != "cached":
            raise UserError(
                "hint_weight needs cached labels with the teacher's embeddings "
                "(`wav2small label --embeddings`, then distill --labels)"
            )
        try:
            self.augment()  # checks the augmentation ranges
        except ValueError as e:
            raise UserError(str(e)) from None
        return self

    def augment(self):
        """The :class:`wav2small.data.Augment` these settings describe."""
        from wav2small.data import Augment

        return Augment(
            ratio=self.aug_ratio,
            mix_clip_prob=self.aug_mix_clip,
            snr_db=(self.snr_low, self.snr_high),
            noise_dir=self.noise_dir,
            gain_db=self.gain_db,
            shift_prob=self.shift_prob,
            shift_seconds=self.shift_seconds,
        )


@dataclass
class TeacherConfig(RunConfig):
    """Settings of one ``train-teacher`` run (``wav2small.teacher_train.TrainConfig``).

    Attributes:
        data: labelled CSV (file, arousal, dominance, valence).
        init: teacher to fine-tune (name or path); default: a new SynthTeacher.
        model: SynthTeacher config overrides (new teachers only).
        epochs: training epochs.
        max_minutes: stop (after an epoch) when the run has taken this long; ``None``: no limit.
        warmup_epochs: linear warm-up length in epochs (at most a tenth of the run).
        weight_decay: AdamW weight decay.
        mse_weight: weight of an MSE term added to the CCC loss.
        gain_db: random gain of ±``gain_db`` dB per training clip.

    ``crop_seconds`` defaults to ``None`` (whole clips: on the built-in corpus valence needs the
    pitch contour from the first word to the last); ``resume`` continues from ``out/checkpoint``.
    """

    out: str = "runs/teacher"
    val_fraction: float = 0.05
    batch_size: int = 32
    lr: float = 3e-3
    crop_seconds: float | None = None
    resume: str | bool | None = None
    data: str = ""
    init: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    epochs: int = 15
    max_minutes: float | None = None
    warmup_epochs: float = 1.0
    weight_decay: float = 1e-2
    mse_weight: float = 0.0
    gain_db: float = 0.0

    def validate(self) -> TeacherConfig:
        """Check the settings; return self.

        Raises:
            UserError: a setting out of range (the message names it).
        """
        if not self.data:
            raise UserError("train-teacher needs `data`: a labelled CSV (--data)")
        self.check_common()
        if self.epochs < 1:
            raise UserError(f"epochs must be > 0, got {self.epochs}")
        if self.warmup_epochs < 0:
            raise UserError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.model and self.init:
            raise UserError("model overrides apply to new teachers only, not with init")
        return self


#: Target groups of ``pretrain`` (:mod:`wav2small.pretrain`): k-means of log-mel frames, and of
#: pitch-salience frames with their F0 and voicing.
PRETRAIN_TARGETS = ("mel", "pitch")


@dataclass
class PretrainConfig(RunConfig):
    """Settings of a ``wav2small pretrain`` run (:mod:`wav2small.pretrain`).

    Attributes:
        audio: unlabelled audio: CSVs with a ``file`` column, folders or files.
        model: wav2vec2 config overrides of the backbone (default: the shipped
            ``backbone-synth`` shape, :data:`wav2small.pretrain.BACKBONE_FIELDS`).
        max_steps: optimiser steps.
        warmup_steps: linear warm-up (a fraction of the run when below 1, else steps; at most a
            tenth of the run), then cosine decay to 0.
        codebooks: target name → clusters: ``mel`` (k-means of log-mel frames) and ``pitch``
            (k-means of pitch-salience frames, F0 and voicing); one prediction head each.
        kmeans_frames: frames sampled to fit each codebook.
        kmeans_iters: Lloyd iterations.
        mask_prob: share of frames that start a masked span (as transformers' mask_time_prob).
        mask_length: frames per masked span.
        unmasked_weight: weight of the cross-entropy on unmasked frames (0: masked frames only,
            as HuBERT; the default 1 also teaches the conv encoder to read the codes off the
            audio: in a 250-step pilot on 2,000 clips the masked loss left the codes' entropy
            after ~90 steps with it, not within 150 steps without it).
        weight_decay: AdamW weight decay.
        grad_clip: gradient-norm clipping (0: off).
        save_every: write the resumable checkpoint every this many steps.
        log_every: log the losses every this many steps.

    ``crop_seconds`` is the length of every training crop (shorter clips are zero-padded);
    ``val``/``val_fraction`` are unused (masked prediction has no held-out score here; the
    linear probe of :mod:`wav2small.probe` measures what the backbone learned).
    """

    RESUME_FREE: ClassVar[frozenset[str]] = RunConfig.RESUME_FREE | {"save_every", "log_every"}

    out: str = "runs/pretrain"
    audio: tuple[str, ...] = ()
    model: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 8
    lr: float = 2e-3
    crop_seconds: float | None = 3.0
    max_steps: int = 3000
    warmup_steps: float = 0.05
    codebooks: dict[str, int] = field(default_factory=lambda: {"mel": 100, "pitch": 50})
    kmeans_frames: int = 100_000
    kmeans_iters: int = 30
    mask_prob: float = 0.65
    mask_length: int = 10
    unmasked_weight: float = 1.0
    weight_decay: float = 0.01
    grad_clip: float = 5.0
    save_every: int = 200
    log_every: int = 10

    def validate(self) -> PretrainConfig:
        """Check the settings; return self.

        Raises:
            UserError: a setting out of range (the message names it).
        """
        if not self.audio:
            raise UserError("pretrain needs `audio`: CSVs, folders or files of clips (--audio)")
        self.check_common()
        if self.crop_seconds is None:
            raise UserError("pretrain needs crop_seconds > 0 (every crop has this length)")
        for key in ("max_steps", "kmeans_frames", "kmeans_iters", "mask_length"):
            if getattr(self, key) < 1:
                raise UserError(f"{key} must be > 0, got {getattr(self, key)}")
        for key in ("save_every", "log_every"):
            if getattr(self, key) < 1:
                raise UserError(f"{key} must be > 0, got {getattr(self, key)}")
        for key in ("warmup_steps", "weight_decay", "grad_clip", "unmasked_weight"):
            if getattr(self, key) < 0:
                raise UserError(f"{key} must be >= 0, got {getattr(self, key)}")
        if not 0 < self.mask_prob < 1:
            raise UserError(f"mask_prob must be in (0, 1), got {self.mask_prob}")
        bad = [k for k in self.codebooks if k not in PRETRAIN_TARGETS]
        if bad or not self.codebooks:
            raise UserError(
                f"codebooks must name some of {list(PRETRAIN_TARGETS)}, got {dict(self.codebooks)}"
            )
        small = {k: v for k, v in self.codebooks.items() if v < 2}
        if small:
            raise UserError(f"every codebook needs at least 2 clusters, got {small}")
        return self


DEFAULT_LABEL_COLUMN = "emotion"


@dataclass
class SelfDistillConfig(LightningConfig):
    """Every setting of a self-distillation (or plain fine-tuning) run.

    Attributes:
        backbone: ``random:<preset>``, a folder or a hub id (see ``load_backbone``).
        data: labelled CSV (``file`` + ``emotion`` or ``arousal, dominance, valence``).
        task: ``classes`` or ``adv``.
        label_column: class column (task classes).
        exits: layers followed by an exit; empty for plain fine-tuning.
        epochs: passes over the data (the paper: 20); ignored when ``max_steps`` > 0.
        temperature: KL temperature (classes).
        w_deepest: weight of the deepest head's task loss.
        w_exit: weight of the exits' task loss.
        w_kd: weight of the exit-vs-deepest output term.
        w_feature: weight of the pooled-feature MSE.
        detach_teacher: stop gradients through the deepest head in the kd/feature terms.
        feature_level: ``embedding`` (H-dim) or ``linear`` (256-dim) pooled feature.
        scheduler: ``constant`` after warm-up (the paper) or ``cosine`` (decay to 0 at the
            last step).

    The paper's values: batch 16, Adam lr 3e-5, no warm-up (constant learning rate), 20 epochs.
    """

    out: str = "runs/selfdistill"
    lr: float = 3e-5
    backbone: str = "random:wav2vec2-small"
    data: str = ""
    task: str = "classes"
    label_column: str = DEFAULT_LABEL_COLUMN
    exits: tuple[int, ...] = (3, 8, 10)
    epochs: int = 20
    temperature: float = 1.0
    w_deepest: float = 1.0
    w_exit: float = 1.0
    w_kd: float = 1.0
    w_feature: float = 1.0
    detach_teacher: bool = False
    feature_level: str = "embedding"
    scheduler: str = "constant"

    def weights(self):
        """The loss weights (:class:`wav2small.selfdistill.LossWeights`)."""
        from wav2small.selfdistill import LossWeights

        return LossWeights(self.w_deepest, self.w_exit, self.w_kd, self.w_feature)

    def validate(self) -> SelfDistillConfig:
        """Check the settings; return self.

        Raises:
            UserError: settings that cannot work (the message names them).
        """
        check_choice("task", self.task, ("classes", "adv"))
        check_choice("feature_level", self.feature_level, ("embedding", "linear"))
        check_choice("scheduler", self.scheduler, SCHEDULERS)
        if not self.data:
            raise UserError("no training data: set data (a labelled CSV)")
        if self.temperature <= 0:
            raise UserError(f"temperature must be > 0, got {self.temperature}")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise UserError("set epochs or max_steps to a positive number")
        self.check_lightning()
        return self


# --- resolution -----------------------------------------------------------------------------
def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    """Raise :class:`UserError` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise UserError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def fields(cls: type) -> dict[str, Any]:
    """Field name → type hint of a config dataclass."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in typing.get_type_hints(cls).items() if k in names}


def _yaml(value: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def coerce(key: str, value: Any, hint: Any) -> Any:
    """``value`` as the type of field ``key`` (strings are read as YAML first).

    Raises:
        UserError: a value that is not of the field's type, or a non-finite number.
    """
    args = typing.get_args(hint)
    optional = type(None) in args
    if value is None or (optional and isinstance(value, str) and value.strip() in _NULLS):
        return None
    if hint is Any:
        return _yaml(value) if isinstance(value, str) else value
    origin = typing.get_origin(hint)
    if origin in (tuple, list):
        return _coerce_sequence(key, value, str if args and args[0] is str else int)
    if origin is dict or hint is dict:
        value = _yaml(value) if isinstance(value, str) else value
        if not isinstance(value, dict):
            raise UserError(f"config `{key}`: expected a mapping, got {value!r}")
        return value
    types = [a for a in args if a is not type(None)] or [hint]
    for target in types:  # already of an accepted type (bool is not an int here)
        if type(value) is target or (target is float and type(value) is int):
            return _finite(key, target(value))
    if isinstance(value, str) and str not in types:
        parsed = _yaml(value)
        if parsed is None:
            if optional:
                return None
            raise UserError(f"config `{key}`: a value is required")
        value = parsed
    target = types[0]
    try:
        if target is bool:
            if not isinstance(value, bool):
                raise ValueError
            return value
        if isinstance(value, bool) and target in (int, float):
            raise ValueError
        if target is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        converted = target(value)
    except (TypeError, ValueError):
        raise UserError(f"config `{key}`: expected {target.__name__}, got {value!r}") from None
    return _finite(key, converted)


def _finite(key: str, value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"config `{key}`: must be a finite number, got {value}")
    return value


def _coerce_sequence(key: str, value: Any, item: type = int) -> tuple:
    """A tuple of ``item`` (int or str) from a list, a scalar or a comma-separated string."""
    if isinstance(value, str):
        if item is str:
            return (value,) if value.strip() else ()
        text = value.strip().strip("[]()")
        if text.lower() in ("none", ""):
            return ()
        value = [v for v in text.replace(" ", ",").split(",") if v]
    if item is str:
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise UserError(f"config `{key}`: expected a list of strings, got {value!r}")
        return tuple(value)
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    try:
        return tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise UserError(f"config `{key}`: expected a list of integers, got {value!r}") from None


def resolve(cls: type, *layers: dict[str, Any] | None) -> Any:
    """Merge setting layers over the defaults of ``cls`` (later layers win; ``None`` is skipped).

    Raises:
        UserError: an unknown setting or a value of the wrong type.
    """
    hints = fields(cls)
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            key = str(key).replace("-", "_")
            if key not in hints:
                raise UserError(f"unknown setting {key!r}; valid settings: {', '.join(hints)}")
            if value is not None:
                merged[key] = coerce(key, value, hints[key])
    return cls(**merged)


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML config file into a dict.

    Raises:
        FileNotFoundError: no such file.
        UserError: not YAML, or not a mapping.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def parse_overrides(pairs: list[str] | list[list[str]] | None) -> dict[str, str]:
    """``--set`` pairs → dict; repeated ``--set`` options (nested lists) all count.

    Raises:
        UserError: a pair without ``=``.
    """
    out = {}
    for item in pairs or []:
        for pair in [item] if isinstance(item, str) else item:
            key, sep, value = pair.partition("=")
            if not sep or not key.strip():
                raise UserError(f"--set expects key=value, got {pair!r}")
            out[key.strip()] = value.strip()
    return out


def from_cli(cls: type, args: Any, *fixed: dict[str, Any]) -> Any:
    """Defaults of ``cls`` ← ``--config`` YAML ← ``fixed`` ← explicit flags ← ``--set k=v``.

    A flag counts when its destination is a field of ``cls`` and it was given (not ``None``);
    ``--no-progress`` sets ``progress`` false.
    """
    base = load_yaml(args.config) if getattr(args, "config", None) else {}
    names = fields(cls)
    flags = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if getattr(args, "no_progress", False):
        flags["progress"] = False
    return resolve(cls, base, *fixed, flags, parse_overrides(getattr(args, "set", None)))


def save_config(config: Any, path: str | os.PathLike) -> None:
    """Write a resolved configuration as YAML (atomically, unique temporary name)."""
    import yaml

    from wav2small.runs import write_atomic

    write_atomic(Path(path), yaml.safe_dump(config.to_dict(), sort_keys=False))


def cli_default(cls: type, name: str) -> Any:
    """The default of one field (for ``--help`` texts)."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
