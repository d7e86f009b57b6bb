"""The way in and out: extensions, folder listing, the manifest path rule, atomic writes, locks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from wav2small import LABELS, SAMPLE_RATE
from wav2small.audio import AudioError, read_audio
from wav2small.inputs import (
    AUDIO_EXTENSIONS,
    EXTENSION_FORMATS,
    InputError,
    LockedError,
    MissingInputError,
    UserError,
    atomic_write,
    check_any_good,
    expand_paths,
    list_audio,
    lock_path,
    output_lock,
    read_manifest,
    resolve,
    skipped_path,
    write_skipped,
    write_text,
)


def _tone(seconds: float = 0.5, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# --- extensions and folders ---------------------------------------------------------------------
def test_every_extension_is_a_format_libsndfile_reads():
    formats = sf.available_formats()
    assert set(AUDIO_EXTENSIONS) == set(EXTENSION_FORMATS)
    for ext in AUDIO_EXTENSIONS:
        assert ext == ext.lower() and ext.startswith(".")
        assert EXTENSION_FORMATS[ext] in formats, ext
    for ext in (".wav", ".flac", ".ogg", ".mp3"):
        assert ext in AUDIO_EXTENSIONS


@pytest.mark.parametrize(
    ("ext", "fmt", "subtype"),
    [
        (".wav", "WAV", "PCM_16"),
        (".flac", "FLAC", "PCM_16"),
        (".ogg", "OGG", "VORBIS"),
        (".mp3", "MP3", "MPEG_LAYER_III"),
        (".aiff", "AIFF", "PCM_16"),
        (".au", "AU", "PCM_16"),
        (".caf", "CAF", "PCM_16"),
    ],
)
def test_listed_formats_are_read(tmp_path, ext, fmt, subtype):
    path = tmp_path / f"x{ext.upper()}"  # endings are matched case-insensitively
    sf.write(path, _tone(), SAMPLE_RATE, format=fmt, subtype=subtype)
    assert list_audio(tmp_path) == [path]
    wave = read_audio(path)
    assert wave.dtype == np.float32 and abs(len(wave) - SAMPLE_RATE // 2) < 0.2 * SAMPLE_RATE


def test_list_audio_is_sorted_recursive_and_skips_other_and_hidden_files(tmp_path):
    for rel in ("b/2.wav", "a/1.flac", "c.ogg", "a/z/3.wav"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(tmp_path / rel, _tone(0.1), SAMPLE_RATE)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden").mkdir()
    sf.write(tmp_path / ".hidden" / "h.wav", _tone(0.1), SAMPLE_RATE)
    sf.write(tmp_path / ".x.wav.abc.tmp.wav", _tone(0.1), SAMPLE_RATE)  # a writer's temp file
    expected = [tmp_path / r for r in ("a/1.flac", "a/z/3.wav", "b/2.wav", "c.ogg")]
    assert list_audio(tmp_path) == expected
    one = tmp_path / "c.ogg"
    assert expand_paths([one, tmp_path / "b"]) == [str(one), str(tmp_path / "b/2.wav")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty: no audio files"):
        list_audio(tmp_path / "empty")
    with pytest.raises(MissingInputError, match="nope: no such folder"):
        list_audio(tmp_path / "nope")


# --- the path rule ------------------------------------------------------------------------------
@pytest.fixture
def two_folders(tmp_path, monkeypatch):
    """data/clip.wav + data/set.csv naming it relatively; elsewhere/clip.wav with other audio.

    The working directory is ``elsewhere``, where a file of the same name exists: every reader
    must still read data/clip.wav.
    """
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    data.mkdir()
    elsewhere.mkdir()
    sf.write(data / "clip.wav", _tone(0.5, 220), SAMPLE_RATE)
    sf.write(elsewhere / "clip.wav", _tone(1.5, 440), SAMPLE_RATE)
    pd.DataFrame({"file": ["clip.wav"], **{k: [0.5] for k in LABELS}}).to_csv(
        data / "set.csv", index=False
    )
    monkeypatch.chdir(elsewhere)
    return data


def test_relative_paths_resolve_against_the_manifest_not_the_working_directory(two_folders):
    data = two_folders
    assert resolve("clip.wav", data / "set.csv") == str(data / "clip.wav")
    assert resolve("/abs/x.wav", data / "set.csv") == "/abs/x.wav"
    table = read_manifest(data / "set.csv")
    assert table["file"].tolist() == ["clip.wav"] and table["path"].tolist() == [
        str(data / "clip.wav")
    ]
    # the manifest given relative to the working directory resolves the same way
    rel = os.path.relpath(data / "set.csv")
    assert os.path.samefile(read_manifest(rel)["path"][0], data / "clip.wav")


def test_every_command_reads_the_same_files_from_another_working_directory(two_folders):
    from wav2small.data import load_manifest
    from wav2small.labels import probe
    from wav2small.labels import read_manifest as label_manifest
    from wav2small.teacher_train import read_labelled

    data = two_folders
    expected = str(data / "clip.wav")
    train = load_manifest(data / "set.csv")  # train, distill, evaluate, selfdistill
    assert train["path"].tolist() == [expected] and train["duration"][0] == pytest.approx(0.5)
    segments, skipped = probe(label_manifest(data / "set.csv"))  # label (both engines)
    assert [s.path for s in segments] == [expected] and not skipped
    assert segments[0].end == pytest.approx(0.5)  # not the 1.5 s file of the working directory
    files, targets = read_labelled(data / "set.csv")  # train-teacher
    assert files == [expected] and targets.shape == (1, 3)


def test_label_cli_labels_the_manifest_folder_files_from_another_directory(two_folders, tmp_path):
    from wav2small.cli import main

    data = two_folders
    assert main(["label", "--teacher", "synth", "--audio", str(data / "set.csv"),
                 "--out", str(tmp_path / "l.parquet"), "--no-progress"]) == 0  # fmt: skip
    table = pd.read_parquet(tmp_path / "l.parquet")
    assert table["file"].tolist() == ["clip.wav"]
    assert table["end"][0] == pytest.approx(0.5)


def test_manifest_errors_are_user_errors_naming_the_file(tmp_path):
    cases = {
        "nofile.csv": ("name\nx.wav\n", "nofile.csv: a manifest needs a 'file' column"),
        "norows.csv": ("file\n", "norows.csv: the manifest has no rows"),
        "blank.csv": ("", "blank.csv: not a readable CSV manifest"),
        "hole.csv": ("file,x\na.wav,1\n,2\n", "hole.csv: line 3 has an empty 'file'"),
        "binary.csv": (b"\xff\xfe\x00bad\x00\xff", "binary.csv: not a readable CSV"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        with pytest.raises(InputError, match=message):
            read_manifest(path)
    with pytest.raises(InputError, match=r"missing column\(s\) \['valence'\]"):
        (tmp_path / "l.csv").write_text("file,arousal,dominance\na.wav,1,2\n")
        read_manifest(tmp_path / "l.csv", required=LABELS)
    with pytest.raises(FileNotFoundError, match="gone.csv: no such manifest"):
        read_manifest(tmp_path / "gone.csv")
    assert issubclass(MissingInputError, UserError) and issubclass(AudioError, UserError)


# --- atomic writes ------------------------------------------------------------------------------
def test_atomic_write_replaces_whole_files_and_leaves_no_temp_on_error(tmp_path):
    path = tmp_path / "sub" / "table.csv"
    write_text(path, "old\n")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_write(path) as tmp:
            tmp.write_text("half a tab")
            raise RuntimeError("disk full")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["table.csv"]
    umask = os.umask(0)
    os.umask(umask)
    with atomic_write(path) as tmp:
        assert tmp.parent == path.parent and tmp.suffix == ".csv" and tmp.name != path.name
        pd.DataFrame({"a": [1]}).to_csv(tmp, index=False)
    assert path.read_text() == "a\n1\n"
    assert (path.stat().st_mode & 0o777) == 0o666 & ~umask  # not mkstemp's owner-only 0600
    assert sorted(p.name for p in path.parent.iterdir()) == ["table.csv"]


def test_concurrent_atomic_writers_never_share_a_temp_name(tmp_path):
    path = tmp_path / "out.json"
    with atomic_write(path) as a, atomic_write(path) as b:
        assert a != b
        a.write_text("a")
        b.write_text("b")
    assert path.read_text() in ("a", "b")
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


# --- locks --------------------------------------------------------------------------------------
def test_a_second_writer_fails_fast_and_a_dead_one_does_not_block(tmp_path):
    out = tmp_path / "labels.parquet"
    with output_lock(out):
        with pytest.raises(LockedError, match="labels.parquet: another wav2small process"):
            with output_lock(out):
                pass
    with output_lock(out):  # released
        pass
    holder = textwrap.dedent(
        f"""
        import os, sys
        from wav2small.inputs import output_lock
        with output_lock({str(out)!r}):
            print("locked", flush=True)
            sys.stdin.read()  # hold until killed
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(LockedError):
            with output_lock(out):
                pass
        assert lock_path(out).read_text().strip() == str(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    with output_lock(out):  # a killed writer leaves no stale lock
        pass


# --- skipped-file reports -----------------------------------------------------------------------
def test_skipped_report_and_nothing_good(tmp_path):
    out = tmp_path / "pred.csv"
    assert skipped_path(out) == tmp_path / "pred.skipped.csv"
    assert write_skipped(out, [("a.wav", "a.wav: is empty")]) == skipped_path(out)
    assert pd.read_csv(skipped_path(out)).to_dict("list") == {
        "file": ["a.wav"],
        "reason": ["a.wav: is empty"],
    }
    assert write_skipped(out, []) is None and not skipped_path(out).exists()  # stale report gone
    check_any_good(1, [("a.wav", "bad")])
    check_any_good(0, [])
    with pytest.raises(InputError, match=r"a.wav: bad \(and every other input: 2 skipped"):
        check_any_good(0, [("a.wav", "bad"), ("b.wav", "b.wav: worse")])
