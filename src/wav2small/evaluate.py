"""Evaluation of students (and their teacher) on full utterances: CCC per dimension.

For every model given (a trainer ``.ckpt``, a ``best.safetensors``, a run folder holding one, an
``.onnx`` file, or a torch module) each clip of a CSV is predicted *whole* (no crops, no
windows: the protocol of SPEC §1.4) and compared, per dimension over the whole set (SPEC §1.5),
with the references below. Evaluation runs no model itself: the predictions are
:meth:`wav2small.infer.Predictor.predict`'s one-row-per-file table — the very numbers
``wav2small predict`` prints (output order from the model's metadata; a file longer than 20 s is
the length-weighted mean over equal pieces streamed from disk, so memory does not grow with file
length) — joined with the manifest by file. A teacher runs through the one teacher-inference
helper, :func:`wav2small.backends.teacher_predict_files`. The references:

* ``gold`` — the CSV's ``arousal, dominance, valence`` columns (the rater mean of the built-in
  corpus: what a user calls the labels);
* ``truth`` — the ``*_true`` columns when the CSV has them (the built-in corpus's latent truth);
* ``teacher`` — a teacher's outputs on the same clips (``--teacher``: a teacher name/folder, or a
  label table from ``wav2small label``).

The teacher itself is scored against gold and truth as the row ``teacher``, so "student CCC ÷
teacher CCC" is read off directly (:meth:`Evaluation.relative_to_teacher`). Results: a printed
table, CSV/JSON files, and PNG plots (predicted-vs-gold scatter per dimension for each model,
CCC bars comparing the models). On the built-in corpus (a CSV with its ten hidden control columns,
``f0 … tremor``), also which controls each model's outputs follow (:attr:`Evaluation.cues`,
``cues.csv``, ``cues.png``): e.g. whether a student's valence hears roughness as its teacher's does.
With a ``gender`` column (the built-in corpus has one; so do most emotion corpora), each model's
mean error and CCC per gender (:attr:`Evaluation.groups`, ``groups.csv``, printed under the table):
a student can copy its teacher's overall CCC and still rate women and men differently.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wav2small import LABELS
from wav2small.backends import RUN_WEIGHTS, resolve_model_path  # noqa: F401 (public here too)

logger = logging.getLogger(__name__)

REFERENCES = ("gold", "truth", "teacher")
TRUE_SUFFIX = "_true"
TEACHER = "teacher"
#: File names written by :meth:`Evaluation.save`.
METRICS_CSV = "metrics.csv"
METRICS_JSON = "metrics.json"
PREDICTIONS_CSV = "predictions.csv"
BARS_PNG = "ccc_{reference}.png"
SCATTER_PNG = "scatter_{model}.png"
CUES_CSV = "cues.csv"
CUES_PNG = "cues.png"
GROUPS_CSV = "groups.csv"
#: Manifest columns whose groups of clips :func:`group_table` compares: speaker gender, a known
#: shortcut of emotion models (a voice's pitch and formants are not its emotion).
GROUP_COLUMNS = ("gender",)
ERROR_COLUMNS = tuple(f"error_{k}" for k in LABELS)  # groups.csv: mean prediction − reference
_LABEL_TABLE_SUFFIXES = (".parquet", ".csv")


# --- models -----------------------------------------------------------------------------------
def model_name(path: str | os.PathLike) -> str:
    """A short display name: the run folder's name for ``best.*``/``last.*``/``model*.onnx``
    files (and for folders), else the file stem."""
    path = Path(path)
    if path.is_dir():
        return path.name
    if path.stem.split(".")[0] in ("best", "last", "model"):
        return path.parent.name or path.stem
    return path.stem


def by_file(frame: pd.DataFrame, paths: Sequence[str | os.PathLike], *, model: str = "model"):
    """Join a one-row-per-file :meth:`Predictor.predict` table with ``paths`` → (n, k) float64.

    Rows are looked up by the ``file`` index level (a path may repeat); the columns are the
    table's (A/D/V, or an early exit's class logits).

    Raises:
        ValueError: a file without exactly one row, or non-finite values (the file is named).
    """
    columns = list(frame.columns)
    table = frame.reset_index()
    table = table.drop_duplicates("file", keep=False).set_index("file")[columns]
    keys = [os.fspath(p) for p in paths]
    missing = [k for k in dict.fromkeys(keys) if k not in table.index]
    if missing:
        raise ValueError(f"{missing[0]}: no single prediction row for this file from {model}")
    values = table.loc[keys].to_numpy(np.float64)
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        from wav2small.errors import NonFiniteError

        raise NonFiniteError(f"{keys[int(np.argmax(bad))]}: {model} gave non-finite outputs")
    return values


def predict(
    model,
    paths: Sequence[str | os.PathLike],
    *,
    progress: bool = False,
    threads: int | None = None,
    name: str | None = None,
) -> np.ndarray:
    """A model's (n, 3) arousal, dominance, valence for the files ``paths``, in their order.

    Exactly what ``wav2small predict`` computes: :meth:`wav2small.infer.Predictor.predict` (one
    row per file; the output order from the model's metadata; files longer than 20 s as the
    length-weighted mean over equal pieces streamed from disk) joined back by file
    (:func:`by_file`).

    Args:
        model: a :class:`~wav2small.infer.Predictor`, or what it loads (``.onnx``,
            ``.safetensors``/``.ckpt``, a run folder, a torch module).
        paths: audio files (repeats allowed).
        progress: show a progress bar.
        threads: ONNX Runtime threads (see :class:`~wav2small.infer.Predictor`).
        name: the model's name in error messages.

    Raises:
        AudioError: an unreadable or too short file (named).
        ValueError: non-finite outputs (the file is named).
    """
    frame, label = _predict_frame(model, paths, progress=progress, threads=threads, name=name)
    if frame is None:
        return np.zeros((0, len(LABELS)))
    return by_file(frame, paths, model=label)


def _predict_frame(
    model,
    paths: Sequence[str | os.PathLike],
    *,
    progress: bool = False,
    threads: int | None = None,
    name: str | None = None,
    on_error: str = "raise",
) -> tuple[pd.DataFrame | None, str]:
    """:meth:`Predictor.predict` of the distinct ``paths`` (skipped files: NaN rows listed in
    ``frame.attrs["skipped"]``) and the model's display name."""
    from wav2small.infer import Predictor

    predictor = model if isinstance(model, Predictor) else Predictor(model, threads=threads)
    files = list(dict.fromkeys(os.fspath(p) for p in paths))
    label = name or repr(predictor)
    if not files:
        return None, label
    return predictor.predict(files, progress=progress, on_error=on_error), label


def teacher_values(teacher, manifest: pd.DataFrame, *, progress: bool = False) -> np.ndarray:
    """The teacher's (n, 3) outputs for ``manifest``: from a label table (Parquet/CSV written by
    ``wav2small label``), a teacher module, or a teacher name/folder, run through
    :func:`wav2small.backends.teacher_predict_files` (whole clips, bounded memory)."""
    from wav2small.data import attach_labels

    if isinstance(teacher, pd.DataFrame) or (
        isinstance(teacher, str | os.PathLike)
        and Path(teacher).is_file()
        and Path(teacher).suffix.lower() in _LABEL_TABLE_SUFFIXES
    ):
        values = attach_labels(manifest, teacher)[list(LABELS)].to_numpy(np.float64)
        bad = ~np.isfinite(values).all(axis=1)
        if bad.any():
            from wav2small.errors import NonFiniteError

            file = manifest["file"].iloc[int(np.argmax(bad))]
            raise NonFiniteError(
                f"{file}: non-finite teacher label in {getattr(teacher, 'name', teacher)}"
            )
        return values
    from wav2small.backends import teacher_predict_files

    if isinstance(teacher, str | os.PathLike):
        from wav2small.teachers import load_teacher

        teacher = load_teacher(teacher)
    paths = manifest["path"].tolist()
    return teacher_predict_files(teacher, paths, progress=progress).astype(np.float64)


# --- results ----------------------------------------------------------------------------------
@dataclass
class Evaluation:
    """CCC of every model against every available reference.

    Attributes:
        metrics: one row per (model, reference) with ``n`` and the CCC per dimension and mean.
        predictions: model name → (n, 3) predictions (the teacher's too, as ``"teacher"``).
        references: reference name → (n, 3) values.
        files: the clips, in the CSV's order (without skipped ones).
        skipped: (file, reason) of the clips left out with ``on_error="skip"``.
        cues: on the built-in corpus, one row per (model, dimension) — the references ``gold``
            and ``truth`` too — with the Pearson r of its outputs with each hidden control
            (:func:`cue_table`); ``None`` for other data.
        groups: with a ``gender`` column, each model's mean error and CCC per gender
            (:func:`group_table`); ``None`` otherwise.
    """

    metrics: pd.DataFrame
    predictions: dict[str, np.ndarray]
    references: dict[str, np.ndarray]
    files: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    cues: pd.DataFrame | None = None
    groups: pd.DataFrame | None = None

    def ccc(self, model: str, reference: str = "gold") -> dict[str, float]:
        """CCC per dimension (and ``mean``) of ``model`` against ``reference``.

        Raises:
            KeyError: no such row.
        """
        rows = self.metrics[(self.metrics.model == model) & (self.metrics.reference == reference)]
        if rows.empty:
            raise KeyError(f"no result for model {model!r} against {reference!r}")
        return {k: float(rows.iloc[0][k]) for k in (*LABELS, "mean")}

    def relative_to_teacher(self, reference: str = "gold") -> pd.DataFrame:
        """Each student's CCC against ``reference`` divided by the teacher's (empty without a
        teacher)."""
        rows = self.metrics[self.metrics.reference == reference].set_index("model")
        if TEACHER not in rows.index:
            return pd.DataFrame(columns=[*LABELS, "mean"])
        cols = [*LABELS, "mean"]
        return rows.drop(index=TEACHER)[cols] / rows.loc[TEACHER, cols]

    def table(self) -> str:
        """The results as aligned text (what the CLI prints)."""
        cols = ["model", "reference", "n", *LABELS, "mean"]
        text = self.metrics[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}")
        ratio = self.relative_to_teacher()
        if not ratio.empty:
            text += "\n\nstudent CCC ÷ teacher CCC (against gold)\n"
            text += ratio.to_string(float_format=lambda v: f"{v:.3f}")
        if self.groups is not None:
            for column, rows in self.groups.groupby("column", sort=False):
                reference = rows["reference"].iloc[0]
                errors = rows.pivot(index="model", columns="group", values=list(ERROR_COLUMNS))
                errors.columns = [f"{d.removeprefix('error_')} {g}" for d, g in errors.columns]
                text += f"\n\nmean error (prediction − {reference}) by {column}\n"
                text += errors.loc[rows["model"].unique()].to_string(
                    float_format=lambda v: f"{v:+.3f}"
                )
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: metrics rows, ratios to the teacher, and the number of clips."""
        ratio = self.relative_to_teacher()
        return {
            "n_clips": len(self.files),
            "labels": list(LABELS),
            "metrics": json.loads(self.metrics.to_json(orient="records")),
            "relative_to_teacher": json.loads(ratio.to_json(orient="index")) if len(ratio) else {},
        }

    def write_json(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_dict` to ``path`` (atomically)."""
        return _write_text(Path(path), json.dumps(self.to_dict(), indent=2))

    def write_csv(self, path: str | os.PathLike) -> Path:
        """Write the metrics table to ``path`` (atomically)."""
        return _write_text(Path(path), self.metrics.to_csv(index=False))

    def write_predictions(self, path: str | os.PathLike) -> Path:
        """Write every model's predictions as rows ``(model, file, arousal, dominance,
        valence)`` (atomically)."""
        frames = [
            pd.DataFrame(
                {
                    "model": name,
                    "file": self.files,
                    **{k: values[:, i] for i, k in enumerate(LABELS)},
                }
            )
            for name, values in self.predictions.items()
        ]
        return _write_text(Path(path), pd.concat(frames, ignore_index=True).to_csv(index=False))

    def plot(self, out_dir: str | os.PathLike) -> list[Path]:
        """Scatter plots (each model against gold, else truth, else the teacher) and CCC bar
        charts (one per reference) as PNG files in ``out_dir``."""
        from wav2small.report import plot_ccc_bars, plot_scatter

        out_dir = Path(out_dir)
        written = []
        reference = next((r for r in REFERENCES if r in self.references), None)
        for name, values in self.predictions.items():
            if reference is None or (name == TEACHER and reference == TEACHER):
                continue
            written.append(
                plot_scatter(
                    values,
                    self.references[reference],
                    out_dir / SCATTER_PNG.format(model=_safe(name)),
                    title=f"{name} vs {reference}",
                    reference=reference,
                )
            )
        for ref in sorted(set(self.metrics.reference), key=REFERENCES.index):
            written.append(
                plot_ccc_bars(self.metrics, out_dir / BARS_PNG.format(reference=ref), reference=ref)
            )
        if self.cues is not None:
            from wav2small.report import plot_cues

            written.append(plot_cues(self.cues, out_dir / CUES_PNG))
        return written

    def save(self, out_dir: str | os.PathLike, *, plots: bool = True) -> list[Path]:
        """Write metrics CSV/JSON, predictions and (optionally) plots into ``out_dir``."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        written = [
            self.write_csv(out_dir / METRICS_CSV),
            self.write_json(out_dir / METRICS_JSON),
            self.write_predictions(out_dir / PREDICTIONS_CSV),
        ]
        from wav2small.inputs import write_skipped

        report = write_skipped(out_dir / PREDICTIONS_CSV, self.skipped)  # predictions.skipped.csv
        written += [report] if report else []
        if self.cues is not None:
            written.append(_write_text(out_dir / CUES_CSV, self.cues.to_csv(index=False)))
        if self.groups is not None:
            written.append(_write_text(out_dir / GROUPS_CSV, self.groups.to_csv(index=False)))
        return written + (self.plot(out_dir) if plots else [])


def cue_table(predictions: Mapping[str, np.ndarray], manifest: pd.DataFrame) -> pd.DataFrame | None:
    """Pearson r of each model's outputs with the built-in corpus's hidden controls.

    Args:
        predictions: name → (n, 3) values in the manifest's order (models, the teacher, and
            references such as ``gold``).
        manifest: the clips, with the corpus's control columns (``wav2small synth`` writes them).

    Returns:
        Columns ``model, dimension`` and one per control (in docs/SYNTH.md's order), one row per
        (name, dimension); ``None`` when the manifest lacks a control column or one is not finite
        (data that is not the built-in corpus).
    """
    from wav2small.synth.analysis import control_correlations
    from wav2small.synth.constants import CONTROLS

    if not set(CONTROLS) <= set(manifest.columns):
        return None
    controls = manifest[list(CONTROLS)].to_numpy(dtype=np.float64)
    if len(controls) < 2 or not np.isfinite(controls).all():
        return None
    rows = []
    for name, values in predictions.items():
        r = control_correlations(values, controls)
        for i, dim in enumerate(LABELS):
            rows.append({"model": name, "dimension": dim, **dict(zip(CONTROLS, r[i], strict=True))})
    return pd.DataFrame(rows, columns=["model", "dimension", *CONTROLS])


def group_table(
    predictions: Mapping[str, np.ndarray],
    references: Mapping[str, np.ndarray],
    manifest: pd.DataFrame,
    *,
    columns: Sequence[str] = GROUP_COLUMNS,
) -> pd.DataFrame | None:
    """Each model's mean error and CCC within each group of clips (e.g. per speaker gender).

    A model can score well over the whole set and still rate one group of speakers higher
    than another for the same labels: a student whose valence partly follows a voice's pitch
    or formants — a shortcut, not an emotion cue — gives women and men mean errors of opposite
    sign, where its teacher gives none. The overall CCC hides such a gap; this table shows it.

    Args:
        predictions: name → (n, 3) values in the manifest's order (students and the teacher).
        references: reference name → (n, 3) values; the first of ``gold``, ``truth``,
            ``teacher`` present is the one compared with.
        manifest: the clips, with the group columns.
        columns: manifest columns to group by; missing ones, and those with fewer than two
            groups, are left out.

    Returns:
        Columns ``model, reference, column, group, n``, then ``error_<dim>`` (mean prediction −
        reference) and ``ccc_<dim>`` (within the group; NaN below 2 clips) per dimension, one row
        per (model, column, group); ``None`` when no column qualifies.
    """
    from wav2small.metrics import ccc

    reference = next((r for r in REFERENCES if r in references), None)
    used = [c for c in columns if c in manifest.columns and manifest[c].nunique() >= 2]
    if reference is None or not used:
        return None
    target = references[reference]
    rows = []
    for column in used:
        groups = manifest[column]
        for group in sorted(groups.dropna().unique(), key=str):
            mask = (groups == group).to_numpy()
            for name, values in predictions.items():
                if name == reference:
                    continue
                error = values[mask] - target[mask]
                scores = np.atleast_1d(ccc(values[mask], target[mask]))
                rows.append(
                    {
                        "model": name,
                        "reference": reference,
                        "column": column,
                        "group": str(group),
                        "n": int(mask.sum()),
                        **dict(zip(ERROR_COLUMNS, error.mean(0).tolist(), strict=True)),
                        **{f"ccc_{k}": float(v) for k, v in zip(LABELS, scores, strict=True)},
                    }
                )
    return pd.DataFrame(rows)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _write_text(path: Path, text: str) -> Path:
    from wav2small.inputs import write_text

    return write_text(path, text)


# --- evaluation -------------------------------------------------------------------------------
def references_of(manifest: pd.DataFrame) -> dict[str, np.ndarray]:
    """``gold`` (label columns) and ``truth`` (``*_true`` columns) of a manifest, when complete."""
    out = {}
    for name, cols in (("gold", list(LABELS)), ("truth", [k + TRUE_SUFFIX for k in LABELS])):
        if all(c in manifest.columns for c in cols) and not manifest[cols].isna().any().any():
            out[name] = manifest[cols].to_numpy(np.float64)
    return out


def _named(models) -> dict[str, Any]:
    if isinstance(models, Mapping):
        return dict(models)
    if isinstance(models, str | os.PathLike) or not isinstance(models, Sequence):
        models = [models]
    named: dict[str, Any] = {}
    for i, m in enumerate(models):
        base = (
            model_name(m) if isinstance(m, str | os.PathLike) else getattr(m, "preset", f"model{i}")
        )
        name, k = base, 2
        while name in named or name == TEACHER:
            name, k = f"{base}-{k}", k + 1
        named[name] = m
    return named


def evaluate(
    models,
    data: str | os.PathLike | pd.DataFrame,
    *,
    teacher=None,
    progress: bool = False,
    on_error: str = "raise",
    threads: int | None = None,
) -> Evaluation:
    """Score models on full utterances against gold, truth and a teacher.

    Args:
        models: one model or a list (paths, run folders or torch modules; names are derived
            from the paths) or a ``{name: model}`` mapping.
        data: a CSV/folder (see :func:`wav2small.data.load_manifest`) or a loaded manifest.
        teacher: a teacher name/folder, a torch teacher, or a label table (path or DataFrame).
        progress: show progress bars.
        on_error: ``"raise"`` at the first unusable clip (unreadable, too short, non-finite),
            or ``"skip"`` it: a clip any model cannot score is left out for every model and
            listed in :attr:`Evaluation.skipped`.
        threads: compute threads of the models' backends (see
            :class:`~wav2small.infer.Predictor`).

    Returns:
        The :class:`Evaluation`.

    Raises:
        AudioError: an unusable clip with ``on_error="raise"`` (named).
        InputError: ``on_error="skip"`` left no clip.
        ValueError: nothing to compare with (no gold columns and no teacher).
    """
    from wav2small.data import load_manifest
    from wav2small.inputs import check_any_good
    from wav2small.metrics import ccc

    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    manifest = data if isinstance(data, pd.DataFrame) else load_manifest(data, progress=progress)
    paths = manifest["path"].tolist()
    frames, failed = {}, {}
    for name, m in _named(models).items():
        frames[name] = _predict_frame(
            m, paths, progress=progress, name=name, on_error=on_error, threads=threads
        )
        if frames[name][0] is not None:
            failed.update(frames[name][0].attrs.get("skipped", {}))
    keep = np.array([os.fspath(p) not in failed for p in paths], bool)
    skipped = [
        (f, failed[os.fspath(p)])
        for f, p, k in zip(manifest["file"], paths, keep, strict=True)
        if not k
    ]
    check_any_good(int(keep.sum()), skipped)
    if skipped:
        manifest = manifest[keep].reset_index(drop=True)
        paths = manifest["path"].tolist()
    references = references_of(manifest)
    predictions = {
        name: by_file(frame, paths, model=label) if frame is not None else np.zeros((0, 3))
        for name, (frame, label) in frames.items()
    }
    if teacher is not None:
        references[TEACHER] = teacher_values(teacher, manifest, progress=progress)
    if not references:
        raise ValueError(
            f"{getattr(data, 'name', data)!s:.200}: nothing to compare with: no "
            f"{', '.join(LABELS)} columns and no teacher"
        )
    if TEACHER in references:
        predictions[TEACHER] = references[TEACHER]
    rows = []
    for name, values in predictions.items():
        for ref, target in references.items():
            if name == TEACHER and ref == TEACHER:
                continue
            scores = np.atleast_1d(ccc(values, target))
            rows.append(
                {
                    "model": name,
                    "reference": ref,
                    "n": len(values),
                    **dict(zip(LABELS, scores.tolist(), strict=True)),
                    "mean": float(np.mean(scores)),
                }
            )
    metrics = pd.DataFrame(rows, columns=["model", "reference", "n", *LABELS, "mean"])
    labels = {k: v for k, v in references.items() if k != TEACHER}
    cues = cue_table(labels | predictions, manifest)
    groups = group_table(predictions, references, manifest)
    return Evaluation(
        metrics, predictions, references, manifest["file"].tolist(), skipped, cues, groups
    )


def evaluate_cli(args) -> int:
    """``wav2small evaluate MODEL [MODEL ...] --data CSV [--teacher T] [--json F] [--out DIR]``."""
    result = evaluate(
        list(args.models),
        args.data,
        teacher=args.teacher,
        progress=args.progress,
        on_error=args.on_error,
        threads=args.threads,
    )
    print(result.table())
    if result.skipped:  # each reason was logged when the clip was skipped
        print(f"skipped {len(result.skipped)} clip(s) (every model)", file=sys.stderr)
    if args.json:
        print(f"wrote {result.write_json(args.json)}")
    if args.out:
        written = result.save(args.out, plots=not args.no_plots)
        print(f"wrote {len(written)} files to {args.out}")
    return 0
