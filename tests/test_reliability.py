"""Reliability probes (issue 16) that run fast: fixed temp names, full disks, header lies,
tiny clips, garbage model files, ``--on-error skip``. The slow probes (kill -9 resumes,
concurrent writers, a full tmpfs, 1-hour files) are in ``benchmarks/bench_reliability.py``.
"""

from __future__ import annotations

import errno
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "wav2small"


def _full_disk(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


# --- temporary names ----------------------------------------------------------------------------
def test_no_fixed_or_pid_temporary_names_outside_inputs():
    """Every writer goes through inputs.atomic_write (unique mkstemp names, removed on error)."""
    pattern = re.compile(r"""(getpid\(\)\}?\.tmp|\+ ?["']\.tmp["']|["']\.tmp["']\)|mkstemp)""")
    bad = [
        f"{p.relative_to(SRC)}:{i}"
        for p in SRC.rglob("*.py")
        if p.name != "inputs.py"
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not bad, f"fixed/pid temp names or raw mkstemp: {bad}"


def test_a_full_disk_while_saving_a_teacher_checkpoint_leaves_no_temp(tmp_path, monkeypatch):
    import torch

    from wav2small import teacher_train

    (tmp_path / "state.pt").write_bytes(b"old")
    monkeypatch.setattr(teacher_train, "save_checked", lambda model, folder: None)

    def half_then_full(blob, path):
        Path(path).write_bytes(b"half")
        _full_disk()

    monkeypatch.setattr(torch, "save", half_then_full)
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    state = dict(epoch=1, step=2, best_epoch=1, best_score=0.5, elapsed=1.0)
    with pytest.raises(OSError, match="No space left"):
        teacher_train._save_checkpoint(tmp_path, model, opt, sched, torch.Generator(), state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]
    assert (tmp_path / "state.pt").read_bytes() == b"old"


# --- bad inputs: one line naming the file, exit 2 ---------------------------------------------
@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """Good clips, a header lie (1 Hz), a 1-sample clip, garbage and wrong-shape models."""
    import numpy as np
    import onnx
    import pandas as pd
    import soundfile as sf
    import torch
    from onnx import TensorProto, helper
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from wav2small import LABELS, SAMPLE_RATE
    from wav2small.models import create_model, save_model
    from wav2small.signals import pseudo_speech_set

    root = tmp_path_factory.mktemp("bad")
    for i, clip in enumerate(pseudo_speech_set(3, seed=3, seconds=(0.6, 1.0))):
        sf.write(root / f"good{i}.wav", clip, SAMPLE_RATE, subtype="PCM_16")
    sf.write(root / "liar.wav", np.zeros(200_000, np.float32), 1, subtype="PCM_16")  # 400 KB
    sf.write(root / "one.wav", np.array([0.1], np.float32), SAMPLE_RATE, subtype="PCM_16")
    gold = {k: [0.2, 0.5, 0.7] for k in LABELS}
    for name, files in (("withone", ["good0.wav", "one.wav", "good1.wav"]), ("onlyone", None)):
        if files is None:
            pd.DataFrame({"file": ["one.wav"], **{k: [0.5] for k in LABELS}}).to_csv(
                root / f"{name}.csv", index=False
            )
        else:
            pd.DataFrame({"file": files, **gold}).to_csv(root / f"{name}.csv", index=False)
    pd.DataFrame({"file": ["good0.wav", "liar.wav"], **{k: [0.1, 0.9] for k in LABELS}}).to_csv(
        root / "liar.csv", index=False
    )
    save_model(create_model("wav2small-tiny"), root / "student.safetensors")
    (root / "garbage.onnx").write_bytes(b"\x08\x07garbage, not a protobuf" * 10)
    (root / "garbage.safetensors").write_bytes(b"\x10" + b"\x00" * 7 + b"{not json}" + b"x" * 99)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.save(proto, root / "wrongshape.onnx")
    with safe_open(root / "student.safetensors", "pt") as f:
        meta = f.metadata()
    state = load_file(root / "student.safetensors")
    key = next(k for k, v in state.items() if v.ndim >= 1)
    state[key] = torch.zeros(*[s + 1 for s in state[key].shape])
    save_file(state, root / "wrongshape.safetensors", metadata=meta)
    state[key] = load_file(root / "student.safetensors")[key].half()
    save_file(state, root / "fp16.safetensors", metadata=meta)
    return root


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "WARNING" not in line]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"wav2small {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


def _argv(command: str, model: str, d: Path) -> list[str]:
    return {
        "predict": ["predict", model, str(d / "good0.wav"), "--no-progress"],
        "evaluate": ["evaluate", model, "--data", str(d / "withone.csv"), "--no-progress"],
        "export": ["export", model, "--out", str(d / f"exp-{Path(model).stem}")],
    }[command]


@pytest.mark.parametrize("command", ["predict", "evaluate", "export"])
@pytest.mark.parametrize(
    ("model", "words"),
    [
        ("garbage.onnx", ["garbage.onnx"]),
        ("wrongshape.onnx", ["wrongshape.onnx"]),
        ("garbage.safetensors", ["garbage.safetensors", "not a readable safetensors"]),
        ("wrongshape.safetensors", ["wrongshape.safetensors", "expected"]),
        ("fp16.safetensors", ["fp16.safetensors", "float16"]),
    ],
)
def test_a_garbage_or_wrong_shape_model_is_one_line_naming_the_file(
    bad, capsys, command, model, words
):
    from wav2small.cli import main

    assert main(_argv(command, str(bad / model), bad)) == 2
    line = _one_error_line(capsys, command)
    for word in words:
        assert word in line, line
    assert "a bug?" not in line, line  # a user error, not an internal one


def test_a_wrong_interface_onnx_is_refused_when_loaded(bad):
    from wav2small.backends import OnnxBackend
    from wav2small.errors import UserError

    with pytest.raises(UserError, match=r"wrongshape\.onnx: not a wav2small audio .* fixed length"):
        OnnxBackend(bad / "wrongshape.onnx")


@pytest.mark.parametrize(
    "args",
    [
        ["predict", "{d}/student.safetensors", "{d}/liar.wav", "--no-progress"],
        ["evaluate", "{d}/student.safetensors", "--data", "{d}/liar.csv", "--no-progress"],
        ["label", "--teacher", "synth", "--audio", "{d}/liar.csv", "--out", "{d}/l.parquet"],
    ],
)
def test_a_header_claiming_1_hz_is_refused_not_planned_as_55_hours(bad, capsys, args):
    from wav2small.cli import main

    assert main([a.format(d=bad) for a in args]) == 2
    line = _one_error_line(capsys, args[0])
    assert "liar.wav" in line and "implausible sample rate 1 Hz" in line, line


def test_audio_info_refuses_implausible_sample_rates(bad):
    from wav2small.audio import AudioError, audio_info, iter_blocks, read_audio

    for reader in (audio_info, read_audio, iter_blocks):
        with pytest.raises(AudioError, match=r"liar\.wav: implausible sample rate 1 Hz.*55\.6 h"):
            reader(bad / "liar.wav")
    assert audio_info(bad / "good0.wav").sample_rate == 16000


# --- too-short clips, --on-error skip ---------------------------------------------------------
def test_evaluate_names_a_1_sample_clip_or_skips_it(bad, capsys, tmp_path):
    from wav2small.cli import main
    from wav2small.evaluate import evaluate

    args = ["evaluate", str(bad / "student.safetensors"), "--data", str(bad / "withone.csv")]
    assert main([*args, "--no-progress"]) == 2
    line = _one_error_line(capsys, "evaluate")
    assert "one.wav" in line and "too short" in line, line

    out = tmp_path / "ev"
    assert main([*args, "--no-progress", "--on-error", "skip", "--out", str(out)]) == 0
    assert "skipped 1 clip" in capsys.readouterr().err
    report = (out / "predictions.skipped.csv").read_text()
    assert "one.wav" in report and "too short" in report
    result = evaluate(str(bad / "student.safetensors"), bad / "withone.csv", on_error="skip")
    assert result.files == ["good0.wav", "good1.wav"]
    assert result.metrics["n"].tolist() == [2]
    assert [f for f, _ in result.skipped] == ["one.wav"]
    assert all(v.shape == (2, 3) for v in [*result.predictions.values()])


def test_evaluate_skip_with_nothing_good_exits_2(bad, capsys):
    from wav2small.cli import main

    argv = ["evaluate", str(bad / "student.safetensors"), "--data", str(bad / "onlyone.csv")]
    assert main([*argv, "--no-progress", "--on-error", "skip"]) == 2
    line = _one_error_line(capsys, "evaluate")
    assert "one.wav" in line and "nothing to write" in line, line


@pytest.mark.parametrize(
    "command", ["label", "predict", "evaluate", "train", "distill", "train-teacher"]
)
def test_every_batch_command_has_the_same_on_error_choice(command):
    from wav2small.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command" or a.choices)  # subparsers
    action = next(a for a in sub.choices[command]._actions if a.dest == "on_error")
    assert list(action.choices) == ["raise", "skip"], command


# --- bounded memory -----------------------------------------------------------------------------
def test_label_streams_a_file_longer_than_the_teacher_window(tmp_path, monkeypatch):
    """A whole long file is never read at once (memory bounded); the label is unchanged."""
    import numpy as np
    import pandas as pd
    import soundfile as sf
    import torch

    from wav2small import SAMPLE_RATE, audio
    from wav2small.backends import teacher_predict
    from wav2small.labels import label
    from wav2small.models.teacher import SynthTeacher
    from wav2small.signals import pseudo_speech_set

    torch.manual_seed(0)
    teacher = SynthTeacher({"channels": [4, 8, 8, 8], "gru_hidden": 8}).eval()
    wave = np.tile(np.concatenate(pseudo_speech_set(4, seed=2, seconds=(2.0, 3.0))), 6)[
        : 47 * SAMPLE_RATE
    ]
    sf.write(tmp_path / "long.wav", wave, SAMPLE_RATE, subtype="FLOAT")
    sf.write(tmp_path / "short.wav", wave[: 2 * SAMPLE_RATE], SAMPLE_RATE, subtype="FLOAT")
    whole = teacher_predict(teacher, [audio.read_audio(tmp_path / "long.wav")])[0]
    reads, real = [], audio.read_audio

    def spy(path, *args, **kwargs):
        out = real(path, *args, **kwargs)
        reads.append(len(out))
        return out

    monkeypatch.setattr(audio, "read_audio", spy)
    label(teacher, tmp_path, tmp_path / "labels.parquet", progress=False)
    table = pd.read_parquet(tmp_path / "labels.parquet").set_index("file")
    assert len(table) == 2 and max(reads) <= teacher.window_seconds * SAMPLE_RATE
    np.testing.assert_allclose(
        table.loc[str(tmp_path / "long.wav"), ["arousal", "dominance", "valence"]].to_numpy(
            np.float32
        ),
        whole,
        atol=2e-5,
    )


def test_export_calibration_reads_a_bounded_piece_of_each_file(tmp_path):
    import numpy as np
    import soundfile as sf

    from wav2small import SAMPLE_RATE
    from wav2small.export import CALIBRATION_READ_SECONDS, load_calibration_clips

    rng = np.random.default_rng(0)
    sf.write(tmp_path / "long.wav", 0.1 * rng.standard_normal(60 * SAMPLE_RATE), SAMPLE_RATE)
    sf.write(tmp_path / "short.wav", 0.1 * rng.standard_normal(SAMPLE_RATE), SAMPLE_RATE)
    clips = load_calibration_clips([str(tmp_path)])
    assert [len(c) for c in clips] == [CALIBRATION_READ_SECONDS * SAMPLE_RATE, SAMPLE_RATE]


def test_a_full_disk_error_names_the_output(tmp_path, capsys):
    from wav2small.cli import error_line
    from wav2small.inputs import atomic_write

    out = tmp_path / "labels.parquet"
    with pytest.raises(OSError) as info:
        with atomic_write(out) as tmp:
            tmp.write_bytes(b"half")
            _full_disk()
    code, line = error_line(info.value)
    assert code == 2 and str(out) in line and "No space left on device" in line, line
    assert list(tmp_path.iterdir()) == []


# --- label: lock first, too-short clips -------------------------------------------------------
def test_label_takes_its_lock_before_loading_the_teacher(bad, capsys, monkeypatch):
    """A second writer fails at once, without spending minutes loading a large teacher."""
    from wav2small import labels
    from wav2small.cli import main
    from wav2small.inputs import output_lock

    loaded = []
    monkeypatch.setattr(labels, "_load_cli_teacher", lambda args: loaded.append(args))
    out = bad / "locked.parquet"
    with output_lock(out):
        argv = ["label", "--teacher", "synth", "--audio", str(bad / "withone.csv"), "--out"]
        assert main([*argv, str(out), "--no-progress"]) == 2
    line = _one_error_line(capsys, "label")
    assert "another wav2small process" in line and str(out) in line, line
    assert loaded == []


def test_label_skips_a_clip_too_short_for_the_teacher_by_name(bad, capsys, tmp_path):
    import pandas as pd

    from wav2small.cli import main

    out = tmp_path / "labels.parquet"
    argv = ["label", "--teacher", "synth", "--audio", str(bad / "withone.csv"), "--out", str(out)]
    assert main([*argv, "--no-progress", "--on-error", "skip"]) == 0
    assert sorted(pd.read_parquet(out)["file"]) == ["good0.wav", "good1.wav"]
    report = pd.read_csv(tmp_path / "labels.skipped.csv")
    assert report["file"].tolist() == ["one.wav"]
    assert "too short: 1 samples" in report["reason"][0] and "teacher needs" in report["reason"][0]
    capsys.readouterr()
    argv[argv.index(str(bad / "withone.csv"))] = str(bad / "onlyone.csv")
    argv[-1] = str(tmp_path / "only.parquet")
    assert main([*argv, "--no-progress", "--on-error", "skip"]) == 2
    line = _one_error_line(capsys, "label")
    assert "one.wav" in line and "too short" in line and "nothing to write" in line, line


def test_the_shortest_input_of_an_ensemble_is_its_largest_members():
    from types import SimpleNamespace

    from wav2small.labels import shortest_input
    from wav2small.teachers.onnx import MIN_SAMPLES, OnnxTeacher

    members = [SimpleNamespace(min_samples=400), SimpleNamespace(min_samples=1024)]
    assert shortest_input(SimpleNamespace(min_samples=1, members=members)) == 1024
    assert shortest_input(object()) == 1
    assert OnnxTeacher.min_samples == MIN_SAMPLES


def test_a_full_disk_in_a_synth_render_child_is_reraised_as_an_oserror(monkeypatch):
    """A clip is rendered in a forked child; its full disk reaches the CLI as an OSError (exit 2,
    one line naming the file), not as a RuntimeError carrying the child's traceback."""
    from wav2small.cli import error_line
    from wav2small.synth import plan_clip, pool

    def full(plan, job, data_dir):
        raise OSError(errno.ENOSPC, "No space left on device", f"/full/{plan.name}")

    monkeypatch.setattr(pool, "_render_task", full)
    with pytest.raises(OSError) as info:
        pool._in_fresh_process((plan_clip("test", 0), "unused"))
    assert info.value.errno == errno.ENOSPC
    code, line = error_line(info.value)
    assert code == 2 and "/full/test_000000.wav" in line and "No space left" in line, line
    assert "Traceback" not in line
