"""Ray Data labelling engine: equal to the local engine, resumable, errors, CLI (local 2-CPU Ray).

Tests that start Ray are marked slow: on this shared 2-core machine starting Ray takes ~15 s and
each run ~10-30 s (actor processes import torch), ~2 min in all; `pytest -m slow` runs them.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from wav2small import LABELS, SAMPLE_RATE, labels_ray
from wav2small.audio import AudioError
from wav2small.labels import COLUMNS, label, parts_dir, skipped_path
from wav2small.labels_ray import label_ray
from wav2small.signals import pseudo_speech_set
from wav2small.teachers import SynthTeacher, load_teacher, save_teacher

N_FILES = 10
#: Two teacher actors + decoding fit in the 2 CPUs of the test cluster.
TWO_WORKERS = {"workers": 2, "cpus_per_worker": 0.75, "decode_cpus": 0.5}


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = SynthTeacher({"channels": [4, 8, 8, 8], "gru_hidden": 8}).eval()
    return save_teacher(model, tmp_path_factory.mktemp("t") / "tiny-teacher")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio")
    for i, clip in enumerate(pseudo_speech_set(N_FILES, seed=2, seconds=(0.3, 1.2))):
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        sf.write(sub / f"clip{i:02d}.wav", clip, SAMPLE_RATE, subtype="PCM_16")
    return root


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus, teacher_dir):
    """The local engine's table of the corpus."""
    out = tmp_path_factory.mktemp("ref") / "local.parquet"
    label(load_teacher(teacher_dir), corpus, out, batch_seconds=2.0, progress=False)
    return pd.read_parquet(out)


def _assert_same(table: pd.DataFrame, reference: pd.DataFrame) -> None:
    assert list(table.columns) == list(COLUMNS)
    assert table["file"].tolist() == reference["file"].tolist()  # manifest order, no duplicates
    pd.testing.assert_frame_equal(
        table.drop(columns=list(LABELS)), reference.drop(columns=list(LABELS))
    )
    np.testing.assert_allclose(
        table[list(LABELS)].to_numpy(), reference[list(LABELS)].to_numpy(), atol=1e-5, rtol=0
    )


@pytest.mark.slow
def test_two_workers_equal_the_local_engine(ray_cluster, tmp_path, corpus, teacher_dir, reference):
    out = tmp_path / "ray.parquet"
    result = label_ray(
        str(teacher_dir),
        corpus,
        out,
        batch_seconds=1.5,
        shard_rows=2,
        progress=False,
        **TWO_WORKERS,
    )
    table = pd.read_parquet(out)
    _assert_same(table, reference)
    assert result.rows == result.labelled == N_FILES and not result.skipped
    assert result.audio_seconds == pytest.approx(reference["end"].sum(), rel=1e-6)
    assert not parts_dir(out).exists() and not list(tmp_path.glob("*.tmp"))
    again = label_ray(str(teacher_dir), corpus, out, progress=False)  # done: Ray is not needed
    assert again.labelled == 0 and again.rows == N_FILES
    pd.testing.assert_frame_equal(pd.read_parquet(out), table)


class _Interrupt(RuntimeError):
    pass


@pytest.mark.slow
def test_resume_after_interrupted_run_has_no_duplicates(
    ray_cluster, tmp_path, corpus, teacher_dir, reference, monkeypatch
):
    out = tmp_path / "resume.parquet"
    real_add = labels_ray._ShardWriter.add
    calls = []

    def add_then_die(self, rows):  # the driver dies after two result batches
        if len(calls) == 2:
            raise _Interrupt("driver interrupted")
        calls.append(len(rows))
        real_add(self, rows)

    monkeypatch.setattr(labels_ray._ShardWriter, "add", add_then_die)
    teacher = load_teacher(teacher_dir)  # a module this time: shipped to the actors as files
    with pytest.raises(_Interrupt):
        label_ray(
            teacher, corpus, out, batch_seconds=1.0, shard_rows=1, progress=False, **TWO_WORKERS
        )
    monkeypatch.undo()
    shards = sorted(parts_dir(out).glob("part-*.parquet"))
    done = sum(len(pd.read_parquet(s)) for s in shards)
    assert not out.exists() and done == sum(calls) and 0 < done < N_FILES
    result = label_ray(teacher, corpus, out, batch_seconds=1.0, progress=False, **TWO_WORKERS)
    assert result.labelled == N_FILES - done and result.rows == N_FILES
    _assert_same(pd.read_parquet(out), reference.assign(teacher=str(teacher_dir)))
    assert not parts_dir(out).exists()


@pytest.mark.slow
def test_on_error_skip_and_raise(ray_cluster, tmp_path, corpus, teacher_dir):
    bad = tmp_path / "audio"
    bad.mkdir()
    for f in sorted(corpus.rglob("*.wav"))[:2]:
        (bad / f.name).write_bytes(f.read_bytes())
    # a valid header over NaN samples: probing passes, decoding (in a Ray task) fails
    nan = np.full(SAMPLE_RATE // 2, np.nan, dtype=np.float32)
    sf.write(bad / "nan.wav", nan, SAMPLE_RATE, subtype="FLOAT")
    out = tmp_path / "skip.parquet"
    result = label_ray(str(teacher_dir), bad, out, on_error="skip", progress=False)
    assert [os.path.basename(f) for f, _ in result.skipped] == ["nan.wav"]
    assert len(pd.read_parquet(out)) == 2 == result.labelled
    assert pd.read_csv(skipped_path(out))["file"].str.endswith("nan.wav").all()
    with pytest.raises(AudioError, match="nan.wav"):
        label_ray(str(teacher_dir), bad, tmp_path / "raise.parquet", progress=False)
    assert not (tmp_path / "raise.parquet").exists()


def test_bad_arguments_fail_before_ray_starts(tmp_path, corpus, teacher_dir):
    with pytest.raises(ValueError, match="on_error"):
        label_ray(str(teacher_dir), corpus, tmp_path / "x.parquet", on_error="ignore")
    with pytest.raises(ValueError, match="workers"):
        label_ray(str(teacher_dir), corpus, tmp_path / "x.parquet", workers=0)
    with pytest.raises(ValueError, match="decode_cpus"):
        label_ray(str(teacher_dir), corpus, tmp_path / "x.parquet", decode_cpus=0)
    assert not list(tmp_path.iterdir())


def test_embeddings_are_refused_in_one_line(tmp_path, corpus, teacher_dir, capsys):
    from wav2small.cli import main
    from wav2small.errors import UserError
    from wav2small.inputs import ResumeError

    with pytest.raises(UserError, match="--embeddings is not supported by --engine ray"):
        label_ray(str(teacher_dir), corpus, tmp_path / "x.parquet", embeddings=True)
    assert not list(tmp_path.iterdir())
    argv = ["label", "--teacher", str(teacher_dir), "--audio", str(corpus), "--out"]
    assert main([*argv, str(tmp_path / "x.parquet"), "--engine", "ray", "--embeddings"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not supported by --engine ray" in err and "\n" not in err
    # a local --embeddings job is not resumed by the Ray engine (it would drop the column)
    pytest.importorskip("ray")
    files = sorted(str(p) for p in corpus.rglob("*.wav"))
    out = tmp_path / "emb.parquet"
    label(load_teacher(teacher_dir), files[:2], out, progress=False, embeddings=True)
    with pytest.raises(ResumeError, match="embeddings True → False"):
        label_ray(str(teacher_dir), files, out, progress=False)


def test_missing_ray_is_a_clear_error(tmp_path, corpus, teacher_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
    with pytest.raises(ImportError, match=r"wav2small\[scale\]"):
        label_ray(str(teacher_dir), corpus, tmp_path / "x.parquet")


def test_cli_dispatches_engine(monkeypatch):
    from wav2small import cli, labels

    seen = []
    monkeypatch.setattr(labels_ray, "label_ray_cli", lambda a: seen.append(("ray", a)) or 0)
    monkeypatch.setattr(labels, "label_cli", lambda a: seen.append(("local", a)) or 0)
    base = ["label", "--teacher", "t", "--audio", "a", "--out", "o.parquet"]
    assert cli.main(base) == 0
    argv = [
        *base,
        "--engine",
        "ray",
        "--address",
        "auto",
        "--workers",
        "3",
        "--num-gpus-per-worker",
        "0.5",
        "--cpus-per-worker",
        "2",
    ]
    assert cli.main(argv) == 0
    assert [engine for engine, _ in seen] == ["local", "ray"]
    args = seen[1][1]
    assert (args.address, args.workers, args.num_gpus_per_worker, args.cpus_per_worker) == (
        "auto",
        3,
        0.5,
        2.0,
    )


@pytest.mark.slow
def test_more_than_the_cluster_has(ray_cluster, tmp_path, corpus, teacher_dir):
    with pytest.raises(ValueError, match="the Ray cluster has 2"):
        label_ray(str(teacher_dir), corpus, tmp_path / "x.parquet", workers=2, progress=False)
    with pytest.raises(ValueError, match="GPUs"):
        label_ray(
            str(teacher_dir), corpus, tmp_path / "x.parquet", num_gpus_per_worker=1, progress=False
        )
    assert not (tmp_path / "x.parquet").exists()


@pytest.mark.slow
def test_cli_engine_ray(ray_cluster, tmp_path, corpus, teacher_dir, reference, capsys):
    from wav2small.cli import main

    out = tmp_path / "cli.parquet"
    code = main(
        [
            "label",
            "--engine",
            "ray",
            "--workers",
            "1",
            "--teacher",
            str(teacher_dir),
            "--audio",
            str(corpus),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert f"{N_FILES} rows" in capsys.readouterr().out
    _assert_same(pd.read_parquet(out), reference)


def test_a_clip_too_short_for_a_named_teacher_is_refused_by_name(tmp_path, teacher_dir):
    """The driver reads the named teacher's shortest input from its config (no weights), so a
    clip shorter than it is refused (or skipped) by name before Ray starts, as in `label`."""
    from wav2small.teachers import load_teacher, teacher_min_samples

    shortest = teacher_min_samples(str(teacher_dir))
    assert shortest == load_teacher(teacher_dir).min_samples > 1
    folder = tmp_path / "audio"
    folder.mkdir()
    sf.write(folder / "short.wav", np.zeros(shortest - 1, np.float32), SAMPLE_RATE)
    with pytest.raises(AudioError, match="short.wav"):
        label_ray(str(teacher_dir), folder, tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()
    assert teacher_min_samples(f"ensemble:{teacher_dir}+{teacher_dir}") == shortest
