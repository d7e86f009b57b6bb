"""wav2small.config: one resolution for every trainer (dataclass ← YAML ← flags ← --set)."""

from __future__ import annotations

from argparse import Namespace

import pytest
import yaml

from wav2small.cli import build_parser
from wav2small.config import (
    LightningConfig,
    RunConfig,
    SelfDistillConfig,
    StudentConfig,
    TeacherConfig,
    from_cli,
    parse_overrides,
    resolve,
)
from wav2small.errors import UserError


def test_the_three_trainers_share_one_base():
    for cls in (StudentConfig, TeacherConfig, SelfDistillConfig):
        assert issubclass(cls, RunConfig)
        cfg = cls()
        for name in ("out", "seed", "val", "val_fraction", "batch_size", "lr", "on_error"):
            assert hasattr(cfg, name)
    assert issubclass(StudentConfig, LightningConfig)
    assert issubclass(SelfDistillConfig, LightningConfig)
    # the historical names are aliases of the shared classes
    from wav2small import selfdistill, teacher_train, train

    assert train.TrainConfig is StudentConfig and teacher_train.TrainConfig is TeacherConfig
    assert selfdistill.SelfDistillConfig is SelfDistillConfig


def test_repeated_set_keeps_every_pair_and_coerces_to_the_field_type():
    args = build_parser().parse_args(
        ["distill", "--audio", "a", "--teacher", "t"]
        + ["--set", "crop_seconds=1", "--set", "devices=2", "aug_ratio=0.25"]
    )
    cfg = from_cli(StudentConfig, args, {"mode": "distill"})
    assert cfg.crop_seconds == 1.0 and isinstance(cfg.crop_seconds, float)
    assert cfg.devices == 2 and isinstance(cfg.devices, int)
    assert cfg.aug_ratio == 0.25
    assert parse_overrides([["a=1", "b=2"], ["c=3"]]) == {"a": "1", "b": "2", "c": "3"}


def test_layers_win_in_order_and_types_are_checked(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 0.01\nbatch_size: 8\nmax_steps: 50\n")
    args = Namespace(config=str(path), lr=0.02, batch_size=None, set=[["max_steps=60"]])
    cfg = from_cli(StudentConfig, args)
    assert (cfg.lr, cfg.batch_size, cfg.max_steps) == (0.02, 8, 60)
    assert StudentConfig().batch_size == 16  # untouched defaults come from the dataclass
    with pytest.raises(UserError, match="unknown setting 'learning_rate'"):
        resolve(StudentConfig, {"learning_rate": 1})
    with pytest.raises(UserError, match="max_steps.*expected int"):
        resolve(StudentConfig, {"max_steps": "many"})
    with pytest.raises(UserError, match="max_steps.*expected int"):
        resolve(StudentConfig, {"max_steps": "2.5"})
    with pytest.raises(UserError, match="progress.*expected bool"):
        resolve(StudentConfig, {"progress": "maybe"})
    with pytest.raises(UserError, match="lr.*finite"):
        resolve(StudentConfig, {"lr": "nan"})
    with pytest.raises(UserError, match="key=value"):
        parse_overrides(["lr"])
    assert resolve(StudentConfig, {"noise_dir": "null", "progress": "false"}).progress is False


def test_special_field_types():
    sd = resolve(SelfDistillConfig, {"exits": "2,4"})
    assert sd.exits == (2, 4)
    assert resolve(SelfDistillConfig, {"exits": "none"}).exits == ()
    assert resolve(SelfDistillConfig, {"exits": [1, 3]}).exits == (1, 3)
    teacher = resolve(TeacherConfig, {"model": '{"gru_hidden": 8}', "resume": True})
    assert teacher.model == {"gru_hidden": 8} and teacher.resume is True
    with pytest.raises(UserError, match="model.*mapping"):
        resolve(TeacherConfig, {"model": "[1, 2]"})
    assert resolve(StudentConfig, {"devices": "auto"}).devices == "auto"


def test_validation_names_the_setting():
    with pytest.raises(UserError, match="on_error"):
        StudentConfig(mode="train", data="x", on_error="ignore").validate()
    with pytest.raises(UserError, match="val_fraction"):
        TeacherConfig(data="x", val_fraction=1.5).validate()
    with pytest.raises(UserError, match="temperature"):
        SelfDistillConfig(data="x", temperature=0).validate()
    with pytest.raises(UserError, match="data"):
        TeacherConfig().validate()


def test_cli_defaults_come_from_the_dataclasses():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    names = ("distill", "train-teacher", "selfdistill")
    helps = {name: sub.choices[name].format_help() for name in names}
    assert f"default {StudentConfig.max_steps}" in helps["distill"]
    assert f"default {TeacherConfig.epochs}" in helps["train-teacher"]
    assert f"default {SelfDistillConfig.lr}" in helps["selfdistill"]
    # unset flags stay None, so the dataclass (or the YAML) decides
    args = parser.parse_args(["train-teacher", "--data", "d.csv"])
    assert from_cli(TeacherConfig, args).epochs == TeacherConfig.epochs


def test_saved_config_round_trips(tmp_path):
    from wav2small.config import save_config

    cfg = resolve(SelfDistillConfig, {"data": "a.csv", "exits": "1,3"})
    save_config(cfg, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["exits"] == [1, 3] and resolve(SelfDistillConfig, saved) == cfg
    assert not list(tmp_path.glob("*.tmp"))


def test_crop_seconds_zero_means_whole_clips_and_negative_is_an_error():
    from wav2small.train import resolve_config

    settings = {"mode": "distill", "teacher": "synth", "audio": "pool.csv"}
    whole = resolve_config(settings, {"crop_seconds": 0})
    whole.validate()
    assert whole.crop_seconds is None  # None in a layer means "not set": 0 says whole clips
    default = resolve_config(settings, {"crop_seconds": None})
    default.validate()
    assert default.crop_seconds == 4.0
    with pytest.raises(UserError, match="crop_seconds must be > 0"):
        resolve_config(settings, {"crop_seconds": -1}).validate()
