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
