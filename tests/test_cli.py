"""The command line's contract: one line and exit 2 for user errors, --debug, single log lines,
shared options, safe concurrent writers and resumes that refuse another teacher."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from wav2small import SAMPLE_RATE
from wav2small.cli import build_parser, main, non_negative_int
from wav2small.config import (
    ON_ERROR,
    CommonOptions,
    PretrainConfig,
    SelfDistillConfig,
    StudentConfig,
    TeacherConfig,
)
from wav2small.labels import job_path, parts_dir
from wav2small.models import create_model, save_model
from wav2small.signals import pseudo_speech_set
from wav2small.teachers import SynthTeacher, save_teacher

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Good clips, and one each: empty, corrupt, NaN, text; manifests good and bad."""
    root = tmp_path_factory.mktemp("cli")
    for i, clip in enumerate(pseudo_speech_set(3, seed=3, seconds=(0.6, 1.0))):
        sf.write(root / f"good{i}.wav", clip, SAMPLE_RATE, subtype="PCM_16")
    (root / "empty.wav").write_bytes(b"")
    (root / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk that is not audio")
    nan = np.full(3 * SAMPLE_RATE // 2, 0.1, np.float32)  # the longest clip: labelled last
    nan[100] = np.nan
    sf.write(root / "nan.wav", nan, SAMPLE_RATE, subtype="FLOAT")
    (root / "nofile.csv").write_text("name\ngood0.wav\n")
    (root / "garbage.csv").write_bytes(b"\xff\xfe\x00\x01\x02bad\x00")
    pd.DataFrame({"file": ["good0.wav", "nan.wav"]}).to_csv(root / "withnan.csv", index=False)
    pd.DataFrame({"file": ["good0.wav", "good1.wav"]}).to_csv(root / "good.csv", index=False)
    model = create_model("wav2small-tiny")
    save_model(model, root / "student.safetensors")
    return root


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = SynthTeacher({"channels": [4, 8, 8, 8], "gru_hidden": 8}).eval()
        out.append(str(save_teacher(model, root / f"teacher{seed}")))
    return out


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"wav2small {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


BAD_INPUTS = [
    # (args relative to the fixture folder, command, words the line must contain)
    (["predict", "{s}", "{d}/missing.wav"], "predict", ["missing.wav", "does not exist"]),
    (["predict", "{s}", "{d}/empty.wav"], "predict", ["empty.wav", "empty"]),
    (["predict", "{s}", "{d}/corrupt.wav"], "predict", ["corrupt.wav", "not a readable"]),
    (["predict", "{s}", "{d}/nan.wav"], "predict", ["nan.wav", "NaN"]),
    (["predict", "{d}/missing.safetensors", "{d}/good0.wav"], "predict", ["missing.safetensors"]),
    (["predict", "{s}", "{d}/good0.wav", "--win", "-1"], "predict", ["--win", "> 0"]),
    (["predict", "{s}", "{d}/good0.wav", "--win", "abc"], "predict", ["--win", "'abc'"]),
    (["predict", "{s}", "{d}/good0.wav", "--out", "{d}/x.txt"], "predict", ["x.txt", ".csv"]),
    (["predict", "{s}", "{d}/good0.wav", "--on-error", "maybe"], "predict", ["--on-error"]),
    (
        ["label", "--teacher", "synth", "--audio", "{d}/nofile.csv", "--out", "{d}/o1.parquet"],
        "label",
        ["nofile.csv", "'file' column"],
    ),  # fmt: skip
    (
        ["label", "--teacher", "synth", "--audio", "{d}/garbage.csv", "--out", "{d}/o2.parquet"],
        "label",
        ["garbage.csv", "not a readable CSV"],
    ),  # fmt: skip
    (
        ["label", "--teacher", "synth", "--audio", "{d}/withnan.csv", "--out", "{d}/o3.parquet"],
        "label",
        ["nan.wav", "NaN"],
    ),  # fmt: skip
    (
        ["label", "--teacher", "synth", "--audio", "{d}/nope", "--out", "{d}/o4.parquet"],
        "label",
        ["nope", "no such"],
    ),  # fmt: skip
    (
        ["label", "--teacher", "{d}/no-teacher", "--audio", "{d}/good.csv", "--out", "{d}/o5.pq"],
        "label",
        ["no-teacher"],
    ),  # fmt: skip
    (
        [
            "label",
            "--teacher",
            "synth",
            "--audio",
            "{d}/good.csv",
            "--out",
            "{d}/o6.parquet",
            "--batch-seconds",
            "0",
        ],
        "label",
        ["--batch-seconds"],
    ),  # fmt: skip
    (["evaluate", "{s}", "--data", "{d}/missing.csv"], "evaluate", ["missing.csv"]),
    (["export", "{d}/missing.safetensors", "--out", "{d}/exp"], "export", ["missing.safetensors"]),
    (
        ["train-teacher", "--data", "{d}/nofile.csv", "--out", "{d}/t"],
        "train-teacher",
        ["nofile.csv"],
    ),  # fmt: skip
]


@pytest.mark.parametrize(("args", "command", "words"), BAD_INPUTS)
def test_bad_input_is_one_line_and_exit_2(files, capsys, args, command, words):
    argv = [a.format(d=files, s=files / "student.safetensors") for a in args]
    assert main([*argv, "--no-progress"] if command in ("label", "predict") else argv) == 2
    line = _one_error_line(capsys, command)
    for word in words:
        assert word in line, line


def _run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run(
        [sys.executable, "-m", "wav2small.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def test_no_traceback_without_debug_and_a_traceback_with_it(files):
    plain = _run("predict", str(files / "student.safetensors"), str(files / "corrupt.wav"))
    assert plain.returncode == 2
    lines = plain.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in plain.stderr
    assert lines[0].startswith(f"wav2small predict: error: {files / 'corrupt.wav'}: not a readable")
    debug = _run(
        "--debug", "predict", str(files / "student.safetensors"), str(files / "corrupt.wav")
    )
    assert debug.returncode == 2
    assert "Traceback (most recent call last)" in debug.stderr
    assert "wav2small.audio.AudioError" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1].startswith("wav2small predict: error: ")
    after = _run("predict", str(files / "student.safetensors"), str(files / "nan.wav"), "--debug")
    assert after.returncode == 2 and "Traceback" in after.stderr  # --debug after the command too


def test_each_log_record_is_printed_once():
    """Lightning attaches its own console handler and propagates to the root as well."""
    code = textwrap.dedent(
        """
        import logging
        from wav2small.cli import configure_logging
        configure_logging()
        configure_logging()  # twice: still one handler
        import lightning.pytorch  # adds a StreamHandler to the 'lightning' logger
        logging.getLogger("lightning.pytorch.utilities.rank_zero").info("probe-lightning")
        logging.getLogger("wav2small.train").warning("probe-ours")
        """
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    err = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    ).stderr
    assert err.count("probe-lightning") == 1, err
    assert err.count("probe-ours") == 1, err
    assert "WARNING wav2small.train: probe-ours" in err


def _commands() -> dict:
    parser = build_parser()
    return next(a for a in parser._actions if a.dest == "command").choices


def _option(p, option: str):
    return next((a for a in p._actions if option in a.option_strings), None)


TRAINERS = {
    "distill": StudentConfig,
    "train": StudentConfig,
    "train-teacher": TeacherConfig,
    "selfdistill": SelfDistillConfig,
    "pretrain": PretrainConfig,
}
#: Subcommands that have each shared option (the trainers included).
HAVE = {
    "--threads": {"label", "predict", "plot-timeline", "evaluate", "selfdistill-eval", *TRAINERS},
    "--jobs": {"demo", "synth", "predict", "label", "distill", "train", "selfdistill"},
    "--progress": {"label", "predict", "export", "synth", "evaluate", "selfdistill-eval"}
    | {"selfdistill-export", *TRAINERS},
    "--on-error": {"label", "predict", "evaluate", *TRAINERS},
    "--resume": set(TRAINERS),
}


def test_shared_options_mean_the_same_everywhere():
    commands = _commands()
    for option, names in HAVE.items():
        for name in names:
            assert _option(commands[name], option) is not None, (name, option)
    for name, p in commands.items():
        assert _option(p, "--debug") is not None, name
        cls = TRAINERS.get(name)
        threads, jobs = _option(p, "--threads"), _option(p, "--jobs")
        progress, on_error = _option(p, "--progress"), _option(p, "--on-error")
        if threads:  # one type, one meaning, one default
            assert threads.type is non_negative_int and threads.metavar == "N", name
            assert threads.default is CommonOptions.threads, name
            assert threads.help.startswith("compute threads of this process"), name
        if jobs:
            assert jobs.help.startswith("parallel workers over independent items"), name
            if cls is None and name != "demo":  # demo: two students side by side
                assert jobs.default == CommonOptions.jobs, name
        if progress:
            assert isinstance(progress, argparse.BooleanOptionalAction), name
            assert "--no-progress" in progress.option_strings, name
            assert progress.default == (CommonOptions.progress if cls is None else None), name
        if on_error:
            assert tuple(on_error.choices) == ON_ERROR, name
            assert on_error.default == (CommonOptions.on_error if cls is None else None), name
            assert on_error.help.startswith("raise: stop at the first bad input"), name
    parser = build_parser()
    args = parser.parse_args(["predict", "m.onnx", "a.wav", "--no-progress", "--jobs", "3"])
    assert args.progress is False and args.jobs == 3 and args.debug is False
    assert parser.parse_args(["predict", "m", "a", "--workers", "2"]).jobs == 2  # old name
    assert parser.parse_args(["--debug", "models"]).debug is True
    assert parser.parse_args(["models", "--debug"]).debug is True


def test_cli_repeats_no_default_the_config_dataclasses_hold():
    """Numbers in `default=` of cli.py are read from wav2small.config, not written again there;
    the few left are options no module or dataclass has (Ray resources, latency repeats)."""
    import re

    import wav2small.cli as cli_module

    source = Path(cli_module.__file__).read_text(encoding="utf-8")
    literals = re.findall(r"default=(-?[0-9][0-9.e-]*)", source)
    assert sorted(literals) == ["0.0", "1.0", "10"], literals
    commands = _commands()

    def default(name: str, dest: str):
        return next(a.default for a in commands[name]._actions if a.dest == dest)

    from wav2small.config import DemoOptions, LabelOptions, SynthOptions, TimelineOptions

    assert default("label", "batch_seconds") == LabelOptions.batch_seconds
    assert default("synth", "rater_noise") == SynthOptions.rater_noise
    assert default("plot-timeline", "step") == TimelineOptions.step
    assert default("demo", "jobs") == DemoOptions.jobs
    assert default("export", "seed") == default("synth", "seed") == CommonOptions.seed


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_trainer_flags_default_to_their_dataclass_and_set_the_same_fields(name):
    from wav2small.config import from_cli

    cls, parser = TRAINERS[name], build_parser()
    needed = {"train": ["--data", "d.csv"], "distill": ["--audio", "a", "--teacher", "t"]}
    needed["pretrain"] = ["--audio", "a.csv"]
    base = [name, *needed.get(name, ["--data", "d.csv"])]
    cfg = from_cli(cls, parser.parse_args(base))  # unset flags: the dataclass decides
    default = cls(**{k: getattr(cfg, k) for k in ("data", "audio", "teacher") if hasattr(cfg, k)})
    assert cfg == default
    shared = ["--no-progress", "--threads", "2", "--on-error", "skip"]
    shared += ["--jobs", "3"] if hasattr(cfg, "num_workers") else []
    cfg = from_cli(cls, parser.parse_args([*base, *shared]))
    assert (cfg.progress, cfg.threads, cfg.on_error) == (False, 2, "skip")
    assert getattr(cfg, "num_workers", 3) == 3
    # YAML and --set still win over unset flags: --progress is None unless given
    args = parser.parse_args([*base, "--set", "progress=false"])
    assert args.progress is None and from_cli(cls, args).progress is False


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_every_default_a_trainer_help_shows_is_its_dataclass_default(name):
    import re

    from wav2small.config import cli_default, fields

    cls, p = TRAINERS[name], _commands()[name]
    checked = 0
    for action in p._actions:
        # "default X" states a value ("default: ..." describes one, e.g. "default: torch's own")
        match = re.search(r"[Dd]efault ([^\s;)]+)", action.help or "")
        if not match or action.dest not in fields(cls):
            continue
        shown, value = match.group(1).rstrip(":"), cli_default(cls, action.dest)
        if isinstance(value, tuple):
            value = ",".join(map(str, value))
        assert shown == str(value), (name, action.dest, action.help)
        checked += 1
    assert checked >= 8, name


def test_models_table_counts_parameters_and_tokens(capsys):
    from wav2small.models import count_parameters

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line[:1].islower()}
    assert int(rows["wav2small-paper"][1].replace(",", "")) == count_parameters(
        create_model("wav2small-paper")
    )
    assert float(rows["wav2small-paper"][3]) == 250.0
    from wav2small.models.mobilenet import DEFAULT_CONFIG

    # 32x down-sampling in time of the MobileNet image's frames
    frames_per_s = SAMPLE_RATE / DEFAULT_CONFIG.hop
    assert float(rows["mobilenetv4-small"][3]) == pytest.approx(frames_per_s / 32, abs=0.6)
    assert main(["models", "--names"]) == 0
    assert "wav2small-tiny" in capsys.readouterr().out.split()


def test_card_names_a_command_that_exists():
    from wav2small.card import model_card
    from wav2small.export import ExportReport

    report = ExportReport("model.onnx", 2048, max_abs_diff={"1 s": 1e-7})
    text = model_card(info={"preset": "wav2small-tiny"}, report=report)
    line = next(x for x in text.splitlines() if "wav2small evaluate" in x)
    command = line[line.index("`wav2small ") + 1 : line.rindex("`")].split()
    parsed = build_parser().parse_args(command[1:])  # argparse exits on an unknown option
    assert parsed.command == "evaluate" and parsed.models == ["MODEL"]


# --- safe writers ------------------------------------------------------------------------------
def test_a_second_label_writer_fails_fast(files, tmp_path, capsys):
    out = tmp_path / "labels.parquet"
    holder = textwrap.dedent(
        f"""
        import sys
        from wav2small.inputs import output_lock
        with output_lock({str(out)!r}):
            print("locked", flush=True)
            sys.stdin.read()
        """
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen(
        [sys.executable, "-c", holder],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    argv = ["label", "--teacher", "synth", "--audio", str(files / "good.csv"), "--out", str(out)]
    try:
        assert proc.stdout.readline().strip() == "locked"
        assert main([*argv, "--no-progress"]) == 2
        line = _one_error_line(capsys, "label")
        assert f"{out}: another wav2small process is writing this output" in line
        assert not out.exists() and not parts_dir(out).exists()
    finally:
        proc.kill()
        proc.wait()
    assert main([*argv, "--no-progress"]) == 0  # the killed writer left no stale lock
    assert len(pd.read_parquet(out)) == 2


def test_tables_of_predict_evaluate_and_export_take_the_lock(files, tmp_path, capsys):
    from wav2small.inputs import output_lock

    table = tmp_path / "pred.csv"
    student = str(files / "student.safetensors")
    with output_lock(table):
        assert main(["predict", student, str(files / "good0.wav"), "--out", str(table)]) == 2
        assert "another wav2small process" in _one_error_line(capsys, "predict")
    with output_lock(tmp_path / "ev"):
        argv = [
            "evaluate",
            student,
            "--data",
            str(files / "good.csv"),
            "--out",
            str(tmp_path / "ev"),
        ]
        assert main(argv) == 2
        assert "another wav2small process" in _one_error_line(capsys, "evaluate")
    with output_lock(tmp_path / "exp"):
        assert main(["export", student, "--out", str(tmp_path / "exp")]) == 2
        assert "another wav2small process" in _one_error_line(capsys, "export")
    assert not table.exists() and not (tmp_path / "exp").exists()


def test_resumed_label_refuses_another_teacher(files, teachers, tmp_path, capsys):
    out = tmp_path / "labels.parquet"
    first, other = teachers
    # an interrupted run: one shard per row, the NaN clip (longest, labelled last) stops it
    interrupted = ["label", "--teacher", first, "--audio", str(files / "withnan.csv")]
    argv = ["--out", str(out), "--shard-rows", "1", "--batch-seconds", "1.2", "--no-progress"]
    assert main([*interrupted, *argv]) == 2
    assert "nan.wav" in _one_error_line(capsys, "label")
    assert len(list(parts_dir(out).glob("part-*.parquet"))) == 1 and not out.exists()
    assert job_path(out).is_file()

    resume = ["label", "--audio", str(files / "good.csv"), "--out", str(out), "--no-progress"]
    assert main([*resume, "--teacher", other]) == 2
    line = _one_error_line(capsys, "label")
    assert "started with another teacher" in line and "teacher1" in line and "teacher0" in line
    assert len(list(parts_dir(out).glob("part-*.parquet"))) == 1 and not out.exists()

    # the same folder with other weights (a retrained teacher) is refused too
    torch.manual_seed(5)
    retrained = SynthTeacher({"channels": [4, 8, 8, 8], "gru_hidden": 8}).eval()
    save_teacher(retrained, first)
    assert main([*resume, "--teacher", first]) == 2
    assert "fingerprint" in _one_error_line(capsys, "label")


def test_resume_with_the_same_teacher_completes_and_a_finished_table_is_checked_too(
    files, teachers, tmp_path, capsys
):
    out = tmp_path / "labels.parquet"
    first, other = teachers
    argv = ["label", "--audio", str(files / "good.csv"), "--out", str(out), "--no-progress"]
    assert main([*argv, "--teacher", first]) == 0
    assert main([*argv, "--teacher", first]) == 0  # resume of a finished job: nothing to do
    table = pd.read_parquet(out)
    assert len(table) == 2 and set(table["teacher"]) == {first}
    assert main([*argv, "--teacher", other]) == 2
    assert "started with another teacher" in _one_error_line(capsys, "label")
    pd.testing.assert_frame_equal(pd.read_parquet(out), table)


def test_on_error_skip_with_nothing_good_exits_2_and_writes_no_table(files, tmp_path, capsys):
    bad = [str(files / n) for n in ("empty.wav", "corrupt.wav", "nan.wav")]
    out = tmp_path / "pred.csv"
    student = str(files / "student.safetensors")
    argv = ["predict", student, *bad, "--on-error", "skip", "--out", str(out), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "nothing to write" in err.splitlines()[-1] and "Traceback" not in err
    assert not out.exists()
    pd.DataFrame({"file": bad}).to_csv(tmp_path / "bad.csv", index=False)
    labels = tmp_path / "l.parquet"
    argv = ["label", "--teacher", "synth", "--audio", str(tmp_path / "bad.csv")]
    assert main([*argv, "--out", str(labels), "--on-error", "skip", "--no-progress"]) == 2
    assert "nothing to write" in capsys.readouterr().err.splitlines()[-1]
    assert not labels.exists()
    assert len(pd.read_csv(tmp_path / "l.skipped.csv")) == 3  # the reasons are kept
    good = [str(files / "good0.wav"), *bad]
    argv = ["predict", student, *good, "--on-error", "skip", "--out", str(out), "--no-progress"]
    assert main(argv) == 0 and out.exists()  # one good file is enough
