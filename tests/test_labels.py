"""Teacher labelling to Parquet: rows, batching, errors, resume after a crash and after kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from wav2small import LABELS, SAMPLE_RATE
from wav2small.audio import AudioError
from wav2small.labels import (
    COLUMNS,
    Segment,
    batches,
    label,
    parts_dir,
    read_manifest,
    skipped_path,
)
from wav2small.signals import pseudo_speech_set
from wav2small.teachers import SynthTeacher, load_teacher, save_teacher

N_FILES = 12


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = SynthTeacher({"channels": [4, 8, 8, 8], "gru_hidden": 8}).eval()
    return save_teacher(model, tmp_path_factory.mktemp("t") / "tiny-teacher")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio")
    for i, clip in enumerate(pseudo_speech_set(N_FILES, seed=1, seconds=(0.3, 1.2))):
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        sf.write(sub / f"clip{i:02d}.wav", clip, SAMPLE_RATE, subtype="PCM_16")
    return root


def _expected(teacher, path, start=0.0, end=None):
    from wav2small.audio import read_audio

    wave = read_audio(path, offset=start, duration=None if end is None else end - start)
    with torch.no_grad():
        return teacher(torch.from_numpy(wave)[None])[0].numpy()


def test_label_folder_writes_every_file_once(tmp_path, corpus, teacher_dir):
    teacher = load_teacher(teacher_dir)
    out = tmp_path / "labels.parquet"
    result = label(teacher, corpus, out, batch_seconds=3.0, shard_rows=5, progress=False)
    table = pd.read_parquet(out)
    assert list(table.columns) == list(COLUMNS)
    assert len(table) == result.rows == result.labelled == N_FILES
    assert table["file"].tolist() == sorted(table["file"])  # manifest order
    assert (table["teacher"] == str(teacher_dir)).all()
    assert (table["start"] == 0).all()
    for row in table.itertuples():
        assert row.end == pytest.approx(sf.info(row.file).duration)
        np.testing.assert_allclose(
            [getattr(row, k) for k in LABELS], _expected(teacher, row.file), atol=1e-5
        )
    assert not parts_dir(out).exists() and not list(tmp_path.glob("*.tmp"))
    assert result.audio_seconds == pytest.approx(table["end"].sum(), rel=1e-6)
    again = label(teacher, corpus, out, progress=False)  # complete: nothing left to do
    assert again.labelled == 0 and again.rows == N_FILES
    pd.testing.assert_frame_equal(pd.read_parquet(out), table)


def test_csv_manifest_with_segments_and_relative_paths(tmp_path, corpus, teacher_dir):
    teacher = load_teacher(teacher_dir)
    files = sorted(corpus.rglob("*.wav"))[:2]
    rel = [os.path.relpath(f, tmp_path) for f in files]
    manifest = pd.DataFrame(
        {"file": [rel[0], rel[0], rel[1]], "start": [0.0, 0.1, np.nan], "end": [0.2, 0.25, np.nan]}
    )
    manifest.to_csv(tmp_path / "m.csv", index=False)
    out = tmp_path / "seg.parquet"
    label(teacher, tmp_path / "m.csv", out, progress=False)
    table = pd.read_parquet(out)
    assert table["file"].tolist() == [rel[0], rel[0], rel[1]]
    assert table["start"].tolist() == [0.0, 0.1, 0.0]
    assert table["end"].tolist()[:2] == [0.2, 0.25]
    np.testing.assert_allclose(
        table.loc[1, list(LABELS)].to_numpy(float),
        _expected(teacher, files[0], 0.1, 0.25),
        atol=1e-5,
    )


def test_batches_stay_within_budget_and_are_sorted():
    segs = [Segment(f"f{i}", f"f{i}", 0.0, d) for i, d in enumerate([3.0, 0.5, 1.0, 2.0, 0.4])]
    groups = list(batches(segs, 2.5))
    assert sorted(s.file for g in groups for s in g) == sorted(s.file for s in segs)
    for g in groups:
        assert len(g) == 1 or max(s.duration for s in g) * len(g) <= 2.5
    flat = [s.duration for g in groups for s in g]
    assert flat == sorted(flat)


class _Crash(RuntimeError):
    pass


class _CrashingTeacher(torch.nn.Module):
    """Delegates to a teacher and dies (like a killed process) on call number ``crash_at``."""

    def __init__(self, teacher, crash_at):
        super().__init__()
        self.inner, self.crash_at, self.calls, self.rows = teacher, crash_at, 0, 0
        self.name = teacher.name

    def forward(self, wave, lengths):
        self.calls += 1
        if self.calls == self.crash_at:
            raise _Crash("simulated crash")
        self.rows += wave.shape[0]
        return self.inner(wave, lengths)


def test_resume_after_crash_has_no_duplicates_or_gaps(tmp_path, corpus, teacher_dir):
    teacher = load_teacher(teacher_dir)
    out = tmp_path / "labels.parquet"
    first = _CrashingTeacher(teacher, crash_at=4)
    with pytest.raises(_Crash):
        label(first, corpus, out, batch_seconds=1.5, shard_rows=2, progress=False)
    shards = sorted(parts_dir(out).glob("part-*.parquet"))
    assert shards and not out.exists()
    done = sum(len(pd.read_parquet(s)) for s in shards)
    assert 0 < done < N_FILES
    (parts_dir(out) / "part-00042.parquet.tmp").write_bytes(b"half a shard")  # killed mid-write
    second = _CrashingTeacher(teacher, crash_at=-1)
    result = label(second, corpus, out, batch_seconds=1.5, shard_rows=2, progress=False)
    table = pd.read_parquet(out)
    assert len(table) == N_FILES == table["file"].nunique()
    assert sorted(table["file"]) == sorted(str(p) for p in corpus.rglob("*.wav"))
    assert second.rows == result.labelled == N_FILES - done  # only the rest was labelled
    for row in table.itertuples():
        np.testing.assert_allclose(
            [getattr(row, k) for k in LABELS], _expected(teacher, row.file), atol=1e-5
        )
    assert not parts_dir(out).exists()


SLOW_LABEL = textwrap.dedent(
    """
    import sys, time, torch
    from wav2small.labels import label
    from wav2small.teachers import load_teacher

    teacher = load_teacher(sys.argv[1])
    inner = teacher.forward_batch

    def slow(wave, lengths):
        time.sleep(0.3)
        return inner(wave, lengths)

    teacher.forward_batch = slow
    label(teacher, sys.argv[2], sys.argv[3], batch_seconds=0.5, shard_rows=1, progress=False)
    """
)


def test_kill_9_then_rerun_finishes_without_duplicates(tmp_path, corpus, teacher_dir):
    out = tmp_path / "killed.parquet"
    script = tmp_path / "slow_label.py"
    script.write_text(SLOW_LABEL)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(teacher_dir), str(corpus), str(out)], env=env
    )
    try:
        deadline = time.time() + 60
        while len(list(parts_dir(out).glob("part-*.parquet"))) < 2:
            assert proc.poll() is None, "labelling finished before it could be killed"
            assert time.time() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    result = label(load_teacher(teacher_dir), corpus, out, progress=False)
    table = pd.read_parquet(out)
    assert len(table) == N_FILES == table["file"].nunique() == result.rows
    assert result.labelled < N_FILES


def test_on_error_skip_lists_bad_files_and_raise_names_them(tmp_path, corpus, teacher_dir):
    teacher = load_teacher(teacher_dir)
    bad = tmp_path / "audio"
    bad.mkdir()
    good = sorted(corpus.rglob("*.wav"))[:3]
    for f in good:
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "corrupt.wav").write_bytes(b"RIFF....WAVEfmt garbage" * 10)
    (bad / "empty.flac").write_bytes(b"")
    out = tmp_path / "l.parquet"
    result = label(teacher, bad, out, on_error="skip", progress=False)
    assert sorted(os.path.basename(f) for f, _ in result.skipped) == ["corrupt.wav", "empty.flac"]
    assert len(pd.read_parquet(out)) == 3
    listed = pd.read_csv(skipped_path(out))
    assert sorted(listed["file"].map(os.path.basename)) == ["corrupt.wav", "empty.flac"]
    assert listed["reason"].str.contains("corrupt|empty").all()
    with pytest.raises(AudioError, match="corrupt.wav"):
        label(teacher, bad, tmp_path / "r.parquet", on_error="raise", progress=False)
    assert not (tmp_path / "r.parquet").exists()


def test_bad_arguments(tmp_path, teacher_dir):
    teacher = load_teacher(teacher_dir)
    with pytest.raises(ValueError, match="on_error"):
        label(teacher, tmp_path, tmp_path / "x.parquet", on_error="ignore")
    with pytest.raises(ValueError, match="no audio files"):
        read_manifest(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope"):
        read_manifest(tmp_path / "nope")
    pd.DataFrame({"path": ["a.wav"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="'file' column"):
        read_manifest(tmp_path / "bad.csv")


def test_cli_label(tmp_path, corpus, teacher_dir, capsys):
    from wav2small.cli import main

    out = tmp_path / "cli.parquet"
    code = main(
        [
            "label",
            "--teacher",
            str(teacher_dir),
            "--audio",
            str(corpus),
            "--out",
            str(out),
            "--threads",
            "1",
        ]
    )
    assert code == 0 and len(pd.read_parquet(out)) == N_FILES
    assert f"{N_FILES} rows" in capsys.readouterr().out


# --- embeddings ---------------------------------------------------------------------------------
def test_embeddings_column_equals_the_teacher_embedding(tmp_path, corpus, teacher_dir):
    from wav2small.audio import read_audio
    from wav2small.labels import EMBEDDING_COLUMN

    teacher = load_teacher(teacher_dir)
    teacher.window_seconds = 0.5  # clips over 0.5 s are windowed (and streamed from disk)
    out = tmp_path / "emb.parquet"
    result = label(teacher, corpus, out, shard_rows=5, progress=False, embeddings=True)
    table = pd.read_parquet(out)
    assert result.rows == N_FILES and list(table.columns) == [*COLUMNS, EMBEDDING_COLUMN]
    import pyarrow.parquet as pq

    assert str(pq.read_schema(out).field(EMBEDDING_COLUMN).type) == "list<element: float>"
    for row in table.itertuples():
        wave = torch.from_numpy(read_audio(row.file))[None]
        with torch.no_grad():
            adv, emb = teacher(wave, embedding=True)
        got = np.asarray(row.embedding)
        assert got.shape == (teacher.embedding_dim,) and np.isfinite(got).all()
        np.testing.assert_allclose(got, emb[0].numpy(), atol=1e-5)
        np.testing.assert_allclose([getattr(row, k) for k in LABELS], adv[0].numpy(), atol=1e-5)


def test_embeddings_resume_keeps_the_column_and_refuses_a_changed_flag(
    tmp_path, corpus, teacher_dir
):
    import json

    from wav2small.inputs import ResumeError
    from wav2small.labels import EMBEDDING_COLUMN, job_path

    teacher = load_teacher(teacher_dir)
    files = sorted(str(p) for p in corpus.rglob("*.wav"))
    out = tmp_path / "emb.parquet"
    label(teacher, files[:5], out, shard_rows=2, progress=False, embeddings=True)
    with pytest.raises(ResumeError, match="embeddings True → False"):
        label(teacher, files, out, progress=False)
    result = label(teacher, files, out, shard_rows=2, progress=False, embeddings=True)
    assert result.labelled == N_FILES - 5
    table = pd.read_parquet(out)
    assert list(table["file"]) == files and table[EMBEDDING_COLUMN].map(len).nunique() == 1
    # plain output: no column; asking for embeddings on it is refused, with or without a record
    plain = tmp_path / "plain.parquet"
    label(teacher, files[:3], plain, progress=False)
    assert list(pd.read_parquet(plain).columns) == list(COLUMNS)
    with pytest.raises(ResumeError, match="embeddings False → True"):
        label(teacher, files, plain, progress=False, embeddings=True)
    job = json.loads(job_path(plain).read_text())
    del job["embeddings"]  # a record written before the flag existed means "no embeddings"
    job_path(plain).write_text(json.dumps(job))
    label(teacher, files[:4], plain, progress=False)
    job_path(plain).unlink()
    with pytest.raises(ResumeError, match=f"without an '{EMBEDDING_COLUMN}' column"):
        label(teacher, files, plain, progress=False, embeddings=True)


def test_embeddings_need_a_teacher_that_gives_them(tmp_path, corpus):
    from wav2small.errors import UserError

    class Plain(torch.nn.Module):  # (wave, lengths) → A/D/V only
        name = "plain"

        def forward(self, wave, lengths):
            return wave.new_zeros(len(wave), 3)

    out = tmp_path / "x.parquet"
    with pytest.raises(UserError, match="'plain' gives no embedding"):
        label(Plain(), corpus, out, progress=False, embeddings=True)
    assert not out.exists()


def test_non_finite_embedding_stops_naming_the_file(tmp_path, corpus):
    from wav2small.errors import NonFiniteError

    class NanEmbedding(torch.nn.Module):  # finite A/D/V, NaN embedding
        name = "nan-emb"
        embedding_dim = 2

        def forward(self, wave, lengths, embedding=False):
            adv = wave.new_zeros(len(wave), 3)
            return (adv, wave.new_full((len(wave), 2), float("nan"))) if embedding else adv

    out = tmp_path / "x.parquet"
    with pytest.raises(NonFiniteError, match=r"clip\d\d\.wav: teacher 'nan-emb' .*non-finite"):
        label(NanEmbedding(), corpus, out, progress=False, embeddings=True)
    assert not out.exists()
    label(NanEmbedding(), corpus, tmp_path / "y.parquet", progress=False)  # A/D/V alone: fine


def test_cli_label_embeddings(tmp_path, corpus, teacher_dir, capsys):
    from wav2small.cli import main

    out = tmp_path / "cli.parquet"
    args = ["label", "--teacher", str(teacher_dir), "--audio", str(corpus), "--out", str(out)]
    assert main([*args, "--embeddings", "--threads", "1"]) == 0
    table = pd.read_parquet(out)
    assert len(table) == N_FILES and table["embedding"].map(len).eq(32).all()
    capsys.readouterr()
    assert main(args) == 2  # resume without --embeddings: one line, exit 2
    err = capsys.readouterr().err.strip()
    assert "embeddings True → False" in err and "\n" not in err
