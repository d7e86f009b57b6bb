"""The bad-input matrix (issue 16): every command, every kind of bad input, through the CLI.

Each case must end with exit code 2 and ONE stderr line ``wav2small <command>: error: ...``
that names the bad file (or option) and the problem, with no traceback. Bad inputs: missing,
empty and corrupt audio, NaN/Inf/1e20 samples, a 1-sample clip; manifests with a bad path,
NaN labels or a missing column; garbage and wrong-shape ``.onnx``/safetensors, a config of
absurd size. An 8 kHz clip and a manifest given from another working directory must work.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from wav2small import LABELS, SAMPLE_RATE
from wav2small.cli import main

#: Bad audio files (name → what the error line must say besides the name).
BAD_AUDIO = {
    "missing.wav": "does not exist",
    "empty.wav": "",
    "corrupt.wav": "",
    "nan.wav": "NaN",
    "inf.wav": "",
    "huge.wav": "",
    "one.wav": "",
}
#: Commands that read audio through a manifest or a path.
AUDIO_COMMANDS = (
    "predict", "evaluate", "label", "train", "distill", "train-teacher", "selfdistill", "export"
)  # fmt: skip
#: Training commands are slower; they read a manifest.
MANIFEST_COMMANDS = ("evaluate", "label", "train", "distill", "train-teacher", "selfdistill")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Good clips, every kind of bad clip, manifests that hold one bad row, bad models."""
    from safetensors.torch import save_file

    from wav2small.models import create_model, model_info, save_model
    from wav2small.signals import pseudo_speech_set
    from wav2small.teachers import load_teacher, save_teacher

    root = tmp_path_factory.mktemp("world")
    rng = np.random.default_rng(0)
    good = []
    for i, clip in enumerate(pseudo_speech_set(6, seed=4, seconds=(0.8, 1.2))):
        sf.write(root / f"good{i}.wav", clip, SAMPLE_RATE, subtype="PCM_16")
        good.append(f"good{i}.wav")
    (root / "empty.wav").write_bytes(b"")
    (root / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + bytes(range(256)) * 4)
    wave = 0.1 * rng.standard_normal(SAMPLE_RATE).astype(np.float32)
    for name, value in (("nan.wav", np.nan), ("inf.wav", np.inf), ("huge.wav", 1e20)):
        bad = wave.copy()
        bad[100:200] = value
        sf.write(root / name, bad, SAMPLE_RATE, subtype="FLOAT")
    sf.write(root / "one.wav", np.array([0.1], np.float32), SAMPLE_RATE, subtype="PCM_16")
    sf.write(root / "k8.wav", wave[:8000], 8000, subtype="PCM_16")

    def table(files):
        return pd.DataFrame({"file": files, **{k: rng.random(len(files)) for k in LABELS}})

    table(good).to_csv(root / "good.csv", index=False)
    for name in BAD_AUDIO:
        table([*good, name]).to_csv(root / f"with-{Path(name).stem}.csv", index=False)
    table([*good, "k8.wav"]).to_csv(root / "with-k8.csv", index=False)
    nan = table(good)
    nan.loc[2, "valence"] = np.nan
    nan.to_csv(root / "nanlabel.csv", index=False)
    table(good).drop(columns=["valence"]).to_csv(root / "nocolumn.csv", index=False)
    table(good).rename(columns={"file": "path"}).to_csv(root / "nofile.csv", index=False)

    model = create_model("wav2small-tiny")
    save_model(model, root / "student.safetensors")
    (root / "garbage.onnx").write_bytes(b"\x08\x07garbage, not a protobuf" * 10)
    (root / "garbage.safetensors").write_bytes(b"\x10" + b"\x00" * 7 + b"{not json}" + b"x" * 99)
    info = model_info(model)
    config = json.loads(info["config"])
    config["head"] = 10**9  # terabytes if it were allocated
    info["config"] = json.dumps(config)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, root / "huge.safetensors",
              metadata=info)  # fmt: skip
    _wrong_shape_onnx(root / "wrongshape.onnx")
    teacher = root / "huge-teacher"  # the shipped teacher's layout, with an absurd config
    save_teacher(load_teacher("synth"), teacher)
    config = json.loads((teacher / "config.json").read_text())
    config["channels"] = [10**9] * len(config["channels"])  # terabytes if it were allocated
    (teacher / "config.json").write_text(json.dumps(config))
    return root


def _wrong_shape_onnx(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.save(proto, path)


#: Enough steps for one pass over the 7 clips (a bad clip is read, whichever batch holds it).
_TRAIN = ["--max-steps", "6", "--batch-size", "2", "--num-workers", "0", "--no-progress"]


def _argv(command: str, d: Path, *, audio: str | None = None, csv: str | None = None) -> list:
    """The command line of ``command`` on one audio file or one manifest (in ``d``)."""
    one = str(d / (audio or "good0.wav"))
    data = str(d / (csv or (f"with-{Path(audio).stem}.csv" if audio else "good.csv")))
    out = str(d / "out" / f"{command}-{Path(audio or csv or 'good').stem}")
    student = str(d / "student.safetensors")
    return {
        "predict": ["predict", student, one, "--no-progress"],
        "evaluate": ["evaluate", student, "--data", data, "--no-progress"],
        "label": ["label", "--teacher", "synth", "--audio", data, "--out", out + ".parquet",
                  "--no-progress"],
        "train": ["train", "--data", data, "--student", "wav2small-tiny", "--out", out, *_TRAIN],
        "distill": ["distill", "--teacher", "synth", "--audio", data, "--student",
                    "wav2small-tiny", "--out", out, *_TRAIN],
        "train-teacher": ["train-teacher", "--data", data, "--out", out, "--epochs", "1",
                          "--batch-size", "2", "--model", '{"channels": [4, 8, 8, 8]}',
                          "--no-progress"],
        "selfdistill": ["selfdistill", "--backbone", "random:wav2vec2-tiny", "--data", data,
                        "--task", "adv", "--exits", "1,3", "--out", out, *_TRAIN[:4],
                        "--no-progress"],
        "export": ["export", "wav2small-tiny", "--out", out, "--int8", "--calibration", one,
                   "--no-progress"],
    }[command]  # fmt: skip


class _LiveStderr:
    """Whatever ``sys.stderr`` is when written to (pytest swaps it per test and phase)."""

    closed = False

    def write(self, text: str) -> int:
        import sys

        return sys.stderr.write(text)

    def flush(self) -> None:
        import sys

        sys.stderr.flush()


@pytest.fixture(autouse=True, scope="module")
def _library_logs_to_live_stderr():
    """Lightning (and huggingface_hub) attach a console handler bound to the stderr of the
    moment they are imported, a capture stream that pytest closes after that test; in a real
    process there is one stderr."""
    import logging

    import lightning.pytorch  # noqa: F401 - its handlers exist before they are re-pointed

    for name, logger in logging.root.manager.loggerDict.items():
        if name.split(".")[0] not in ("lightning", "huggingface_hub"):
            continue
        for handler in getattr(logger, "handlers", []):
            if type(handler) is logging.StreamHandler:
                handler.stream = _LiveStderr()  # not setStream: it flushes the old one


def _one_error_line(capsys, command: str) -> str:
    """The error line: the last one on stderr, the only error line, no traceback (log lines of
    a run that started may precede it)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert lines and lines[-1].startswith(f"wav2small {command}: error: "), err
    assert sum(": error: " in line for line in lines) == 1, err
    assert "a bug?" not in lines[-1], lines[-1]  # a user error, not an internal failure
    return lines[-1]


# --- bad audio ------------------------------------------------------------------------------
@pytest.mark.parametrize("command", AUDIO_COMMANDS)
@pytest.mark.parametrize("audio", list(BAD_AUDIO))
def test_bad_audio_is_one_line_naming_the_file(world, capsys, command, audio):
    assert main(_argv(command, world, audio=audio)) == 2
    line = _one_error_line(capsys, command)
    assert audio in line, line
    assert BAD_AUDIO[audio].lower() in line.lower(), line


@pytest.mark.parametrize("command", ["predict", "evaluate", "label", "export"])
def test_a_1_sample_clip_is_too_short_in_every_inference_command(world, capsys, command):
    assert main(_argv(command, world, audio="one.wav")) == 2
    line = _one_error_line(capsys, command)
    assert "one.wav" in line and "too short" in line, line


@pytest.mark.parametrize("command", ["train", "distill", "train-teacher", "selfdistill"])
def test_a_1_sample_clip_is_too_short_for_every_trainer(world, capsys, command):
    assert main(_argv(command, world, audio="one.wav")) == 2
    line = _one_error_line(capsys, command)
    assert "one.wav" in line and ("too short" in line or "shorter than" in line), line


@pytest.mark.parametrize("command", ["predict", "evaluate", "label"])
def test_an_8_khz_clip_is_resampled_not_refused(world, capsys, command):
    argv = _argv(command, world, audio="k8.wav")
    assert main(argv) == 0, capsys.readouterr().err


# --- bad manifests --------------------------------------------------------------------------
@pytest.mark.parametrize("command", MANIFEST_COMMANDS)
@pytest.mark.parametrize(
    ("csv", "words"),
    [
        ("with-missing.csv", ["missing.wav"]),
        ("nanlabel.csv", ["nanlabel.csv", "nan"]),
        ("nocolumn.csv", ["nocolumn.csv", "valence"]),
        ("nofile.csv", ["nofile.csv", "file"]),
    ],
)
def test_a_bad_manifest_is_one_line_naming_it(world, capsys, command, csv, words):
    if command in ("label", "distill") and csv in ("nanlabel.csv", "nocolumn.csv"):
        pytest.skip(f"{command} reads no labels from its manifest (the teacher labels)")
    assert main(_argv(command, world, csv=csv)) == 2
    line = _one_error_line(capsys, command)
    for word in words:
        assert word.lower() in line.lower(), line


@pytest.mark.parametrize("command", ["evaluate", "label"])
def test_a_manifest_given_from_another_working_directory_names_the_same_audio(
    world, tmp_path, monkeypatch, capsys, command
):
    (tmp_path / "good0.wav").write_bytes(b"a decoy of the same name, in the working directory")
    monkeypatch.chdir(tmp_path)
    argv = [os.path.relpath(a) if a.startswith(str(world)) and a.endswith(".csv") else a
            for a in _argv(command, world)]  # fmt: skip
    assert any(a.startswith("..") for a in argv)
    assert main(argv) == 0, capsys.readouterr().err


# --- bad models -----------------------------------------------------------------------------
def _model_argv(command: str, model: str, d: Path) -> list[str]:
    out = str(d / "out" / f"{command}-{Path(model).stem}")
    return {
        "predict": ["predict", model, str(d / "good0.wav"), "--no-progress"],
        "evaluate": ["evaluate", model, "--data", str(d / "good.csv"), "--no-progress"],
        "export": ["export", model, "--out", out],
        "serve": ["serve", model, "--port", "0"],
        "selfdistill-eval": ["selfdistill-eval", model, "--data", str(d / "good.csv"),
                             "--no-latency", "--no-progress"],
        "selfdistill-export": ["selfdistill-export", model, "--exit", "1", "--out",
                               out + ".onnx"],
        "label": ["label", "--teacher", model, "--audio", str(d / "good.csv"), "--out",
                  out + ".parquet", "--no-progress"],
    }[command]  # fmt: skip


@pytest.mark.parametrize(
    "command",
    ["predict", "evaluate", "export", "serve", "selfdistill-eval", "selfdistill-export", "label"],
)
@pytest.mark.parametrize(
    "model",
    ["missing.onnx", "garbage.onnx", "wrongshape.onnx", "garbage.safetensors", "huge.safetensors"],
)
def test_a_bad_model_is_one_line_naming_it(world, capsys, command, model):
    if command in ("export", "selfdistill-export") and model.endswith(".onnx"):
        pytest.skip("export takes a checkpoint, not an .onnx")
    assert main(_model_argv(command, str(world / model), world)) == 2
    line = _one_error_line(capsys, command)
    assert model in line, line


def test_a_teacher_folder_with_an_absurd_config_is_refused_before_allocating(world, capsys):
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert main(_model_argv("label", str(world / "huge-teacher"), world)) == 2
    line = _one_error_line(capsys, "label")
    assert "huge-teacher/config.json" in line and "cannot be built" in line, line
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000  # KB


# --- bad option values ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        ["synth", "--split", "test", "--n", "0", "--out", "{d}/s"],
        ["synth", "--split", "test", "--n", "-3", "--out", "{d}/s"],
        ["predict", "{d}/student.safetensors", "{d}/good0.wav", "--timeline", "nan"],
        ["train", "--data", "{d}/good.csv", "--lr", "inf", "--out", "{d}/t"],
        [
            "train",
            "--data",
            "{d}/good.csv",
            "--set",
            "batch_size=1000000000000",
            "--out",
            "{d}/t",
            "--no-progress",
        ],
    ],
)
def test_a_bad_option_value_is_one_line(world, capsys, argv):
    command = argv[0]
    assert main([a.format(d=world) for a in argv]) == 2
    _one_error_line(capsys, command)
