"""Self-distillation: loss terms, training run (checkpoints, resume), per-exit evaluation,
ONNX export of one exit with parity, data errors."""

import math

import numpy as np
import onnx
import pandas as pd
import pytest
import soundfile as sf
import torch

from wav2small.cli import main
from wav2small.models.exits import DEEPEST, FUSION, create_exits_model, load_exits_model
from wav2small.selfdistill import (
    PARITY_MAX_ABS,
    LossWeights,
    SelfDistillConfig,
    evaluate_exits,
    export_exit,
    fit_selfdistill,
    kd_kl,
    self_distillation_loss,
    targets_of,
)
from wav2small.signals import pseudo_speech

CLASSES = ("neutral", "happy", "angry", "sad", "calm")


def tiny(task="classes", exits=(1, 3)):
    torch.manual_seed(0)
    classes = CLASSES if task == "classes" else ()
    return create_exits_model("random:wav2vec2-tiny", task=task, classes=classes, exits=exits)


def batch(task, n=6):
    g = torch.Generator().manual_seed(2)
    wave = 0.1 * torch.randn(n, 6400, generator=g)
    if task == "classes":
        return wave, torch.arange(n) % len(CLASSES)
    return wave, torch.rand(n, 3, generator=g)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """12 short labelled clips (both label kinds) and a 5-clip test CSV."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 5)):
        rows = []
        for i in range(n):
            name = f"{split}_{i:02d}.wav"
            sf.write(root / name, pseudo_speech(rng.uniform(0.8, 1.5), rng=rng), 16000)
            rows.append(
                {
                    "file": name,
                    "emotion": CLASSES[i % 5],
                    "arousal": rng.random(),
                    "dominance": rng.random(),
                    "valence": rng.random(),
                }
            )
        pd.DataFrame(rows).to_csv(root / f"{split}.csv", index=False)
    return root


# --- loss -----------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["classes", "adv"])
def test_every_loss_term_is_finite_nonzero_and_backpropagates(task):
    model = tiny(task).train()
    wave, target = batch(task)
    terms = self_distillation_loss(model.forward_all(wave), target, task=task)
    assert set(terms) == {"total", "deepest", "exit", "kd", "feature"}
    owners = {
        "deepest": model.deepest.classifier.weight,
        "exit": model.exit_heads["1"].classifier.weight,
        "kd": model.exit_heads["3"].classifier.weight,
        "feature": model.exit_heads["1"].gru.weight_hh_l0,
        "total": model.backbone.encoder.layers[0].attention.q_proj.weight,
    }
    for name, param in owners.items():
        value = terms[name]
        assert torch.isfinite(value) and float(value.detach()) > 0, name
        (grad,) = torch.autograd.grad(value, param, retain_graph=True)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    w = LossWeights()
    expected = terms["deepest"] + w.exit * terms["exit"] + terms["kd"] + terms["feature"]
    torch.testing.assert_close(terms["total"], expected)


def test_without_exits_the_loss_is_the_deepest_task_loss():
    model = tiny(exits=())
    wave, target = batch("classes")
    terms = self_distillation_loss(model.forward_all(wave), target, task="classes")
    assert set(terms) == {"total", "deepest"}
    torch.testing.assert_close(terms["total"], terms["deepest"])


def test_weights_scale_the_terms_and_detach_stops_teacher_gradients():
    model = tiny()
    wave, target = batch("classes")
    out = model.forward_all(wave)
    only_kd = LossWeights(deepest=0, exit=0, kd=2.0, feature=0)
    terms = self_distillation_loss(
        out, target, task="classes", weights=only_kd, detach_teacher=True
    )
    torch.testing.assert_close(terms["total"], 2.0 * terms["kd"])
    (grad,) = torch.autograd.grad(
        terms["total"], model.deepest.classifier.weight, allow_unused=True, retain_graph=True
    )
    assert grad is None or grad.abs().sum() == 0  # the deepest head is the teacher here
    terms = self_distillation_loss(out, target, task="classes", weights=only_kd)
    (grad,) = torch.autograd.grad(terms["total"], model.deepest.classifier.weight)
    assert grad.abs().sum() > 0  # the authors' code: not detached


def test_kd_kl_is_the_kl_divergence_with_temperature():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    p, q = t.softmax(-1), s.softmax(-1)
    manual = (p * (p.log() - q.log())).sum(-1).mean()
    torch.testing.assert_close(kd_kl(s, t), manual)
    assert float(kd_kl(t, t)) == pytest.approx(0.0, abs=1e-7)
    p2, q2 = (t / 2).softmax(-1), (s / 2).softmax(-1)
    manual2 = 4 * (p2 * (p2.log() - q2.log())).sum(-1).mean()
    torch.testing.assert_close(kd_kl(s, t, temperature=2.0), manual2)
    with pytest.raises(ValueError, match="temperature"):
        kd_kl(s, t, temperature=0)


# --- data -----------------------------------------------------------------------------------
def test_targets_and_their_errors():
    table = pd.DataFrame(
        {
            "file": ["a.wav", "b.wav"],
            "emotion": ["sad", "happy"],
            "arousal": [0.1, 0.2],
            "dominance": [0.3, 0.4],
            "valence": [0.5, 0.6],
        }
    )
    assert targets_of(table, task="classes", classes=CLASSES).tolist() == [3, 1]
    assert targets_of(table, task="adv").shape == (2, 3)
    with pytest.raises(ValueError, match="b.wav has class 'happy'"):
        targets_of(table, task="classes", classes=("sad", "calm"), name="x.csv")
    with pytest.raises(ValueError, match="needs a 'mood' column"):
        targets_of(table, task="classes", classes=CLASSES, label_column="mood")
    with pytest.raises(ValueError, match="label columns"):
        targets_of(table.drop(columns=["valence"]), task="adv")


# --- training, resume, evaluation ------------------------------------------------------------
def test_selfdistill_cli_trains_checkpoints_and_resumes(corpus, tmp_path):
    run = tmp_path / "run"
    args = [
        "selfdistill",
        "--backbone",
        "random:wav2vec2-tiny",
        "--data",
        str(corpus / "train.csv"),
        "--val",
        str(corpus / "test.csv"),
        "--exits",
        "1,3",
        "--out",
        str(run),
        "--max-steps",
        "3",
        "--batch-size",
        "4",
        "--crop-seconds",
        "1",
        "--lr",
        "1e-3",
        "--no-progress",
    ]
    assert main(args) == 0
    for name in (
        "best.ckpt",
        "last.ckpt",
        "best.safetensors",
        "config.yaml",
        "metrics.csv",
        "summary.json",
    ):
        assert (run / name).is_file(), name
    metrics = pd.read_csv(run / "metrics.csv")
    assert {"val/uar_1", "val/uar_3", "val/uar_deepest", "val/uar_fusion", "val/score"} <= set(
        metrics.columns
    )
    before = load_exits_model(run / "last.ckpt")
    assert before.exits == (1, 3) and before.config.classes == CLASSES
    args[args.index("--max-steps") + 1] = "5"
    assert main([*args, "--resume"]) == 0
    ckpt = torch.load(run / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 5
    after = load_exits_model(run / "last.ckpt")
    changed = any(
        not torch.equal(a, b)
        for a, b in zip(before.state_dict().values(), after.state_dict().values(), strict=True)
    )
    assert changed


def test_config_yaml_is_read_and_checked(tmp_path):
    from argparse import Namespace

    from wav2small.selfdistill import cli_config

    path = tmp_path / "c.yaml"
    path.write_text("data: a.csv\nexits: [2, 4]\nlr: 0.001\n")
    cfg = cli_config(Namespace(config=str(path), lr=0.01, exits=None, no_progress=True))
    assert cfg.data == "a.csv" and cfg.exits == (2, 4) and cfg.lr == 0.01 and not cfg.progress
    path.write_text("learning_rate: 0.1\n")
    with pytest.raises(ValueError, match="unknown settings \\['learning_rate'\\]"):
        cli_config(Namespace(config=str(path), exits=None))


def test_plain_fine_tuning_baseline_and_adv_task(corpus, tmp_path):
    cfg = SelfDistillConfig(
        backbone="random:wav2vec2-tiny",
        data=str(corpus / "train.csv"),
        val_fraction=0.25,
        task="adv",
        exits=(),
        out=str(tmp_path / "b"),
        max_steps=2,
        batch_size=4,
        crop_seconds=1.0,
        progress=False,
    )
    result = fit_selfdistill(cfg)
    model = load_exits_model(result.weights)
    assert model.exits == () and model.config.task == "adv"
    assert result.global_step == 2 and math.isfinite(result.best_score)


@pytest.mark.parametrize("scheduler", ["constant", "cosine"])
def test_scheduler_setting_reaches_the_learning_rate(corpus, tmp_path, scheduler):
    """scheduler=cosine decays the rate after warm-up (constant, the paper's, keeps it); a run
    without validation clips keeps its last weights."""
    from argparse import Namespace

    from wav2small.errors import UserError
    from wav2small.selfdistill import cli_config

    cfg = SelfDistillConfig(
        backbone="random:wav2vec2-tiny",
        data=str(corpus / "train.csv"),
        val_fraction=0.0,
        exits=(1,),
        out=str(tmp_path / scheduler),
        max_steps=4,
        batch_size=4,
        crop_seconds=1.0,
        lr=1e-3,
        scheduler=scheduler,
        log_every=1,
        progress=False,
    )
    result = fit_selfdistill(cfg)
    assert result.global_step == 4 and result.weights.is_file()
    logged = pd.concat(pd.read_csv(f) for f in (tmp_path / scheduler).rglob("metrics.csv"))
    lrs = logged.filter(like="lr-").to_numpy().ravel()
    lrs = lrs[np.isfinite(lrs)]
    assert lrs.max() == pytest.approx(1e-3)
    if scheduler == "cosine":
        assert lrs.min() < 0.6e-3
    else:
        assert lrs.min() == pytest.approx(1e-3)
    assert (
        cli_config(Namespace(config=None, data="a.csv", scheduler="cosine")).scheduler == "cosine"
    )
    with pytest.raises(UserError, match="scheduler must be one of"):
        SelfDistillConfig(data="a.csv", scheduler="linear").validate()


def test_evaluate_exits_reports_every_exit(corpus):
    model = tiny()
    table = evaluate_exits(model, corpus / "test.csv", repeats=1, progress=False)
    assert table["exit"].tolist() == ["1", "3", DEEPEST, FUSION]
    assert table["layers"].tolist() == [1, 3, 4, 3]
    assert table["params"].iloc[0] < table["params"].iloc[1] < table["params"].iloc[2]
    assert (table["ms_per_5s"] > 0).all() and table["uar"].between(0, 1).all()
    assert (table["n"] == 5).all()
    adv = evaluate_exits(
        tiny("adv"), corpus / "test.csv", exits=["3"], latency=False, progress=False
    )
    assert adv["exit"].tolist() == ["3"] and "ccc_mean" in adv and adv["ms_per_5s"].isna().all()


# --- export ---------------------------------------------------------------------------------
def test_exit_export_parity_and_truncation(tmp_path):
    model = tiny().eval()
    report = export_exit(model, tmp_path / "exit1.onnx", exit=1)
    assert report.passed and max(report.max_abs_diff.values()) <= PARITY_MAX_ABS
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "exit1.onnx")).metadata_props}
    assert meta["exit"] == "1" and meta["layers"] == "1" and meta["labels"] == ",".join(CLASSES)
    deep = export_exit(model, tmp_path / "deep.onnx", exit=DEEPEST, check=False)
    assert report.bytes < deep.bytes  # layers after the exit are not in the graph
    with pytest.raises(Exception, match="unknown exit"):
        export_exit(model, tmp_path / "x.onnx", exit=2)
    with pytest.raises(ValueError, match="dynamo exporter cannot export"):
        export_exit(model, tmp_path / "x.onnx", exit=1, exporter="dynamo")


def test_fusion_and_adv_exports_keep_parity(tmp_path):
    fusion = export_exit(tiny().eval(), tmp_path / "fusion.onnx", exit=FUSION)
    adv = export_exit(tiny("adv").eval(), tmp_path / "adv.onnx", exit=3)
    assert fusion.passed and adv.passed


def test_selfdistill_export_cli(tmp_path, capsys):
    from wav2small.models.exits import save_exits_model

    path = save_exits_model(tiny().eval(), tmp_path / "m.safetensors")
    out = tmp_path / "m.onnx"
    assert main(["selfdistill-export", str(path), "--exit", "3", "--out", str(out)]) == 0
    assert out.is_file() and "PASSED" in capsys.readouterr().out


def test_export_command_takes_early_exit_models_through_its_writer_and_gate(tmp_path, capsys):
    """`export` is the one command: an early-exit checkpoint (with or without --exit) goes
    through export's ONNX writer and parity gate; a failed gate leaves `<name>.rejected`."""
    import json

    import wav2small.export as export_module
    from wav2small.models.exits import save_exits_model

    path = save_exits_model(tiny().eval(), tmp_path / "m.safetensors")
    assert main(["export", str(path), "--exit", "1", "--out", str(tmp_path / "e1")]) == 0
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "e1" / "model.onnx")).metadata_props}
    assert meta["exit"] == "1" and meta["labels"] == ",".join(CLASSES)
    report = json.loads((tmp_path / "e1" / "export_report.json").read_text())
    assert report["exit"] == "1" and max(report["max_abs_diff"].values()) <= PARITY_MAX_ABS
    assert main(["export", str(path), "--out", str(tmp_path / "deep")]) == 0  # no --exit
    meta = export_module.read_metadata(tmp_path / "deep" / "model.onnx")
    assert meta["exit"] == DEEPEST
    assert main(["export", str(path), "--exit", "1", "--int8", "--out", str(tmp_path / "q")]) == 2
    assert "--int8 is not available" in capsys.readouterr().err
    original = export_module.PARITY_MAX_ABS
    try:
        export_module.PARITY_MAX_ABS = -1.0  # every export now fails its gate
        out = tmp_path / "bad.onnx"
        assert main(["selfdistill-export", str(path), "--exit", "3", "--out", str(out)]) == 1
    finally:
        export_module.PARITY_MAX_ABS = original
    assert not out.exists() and out.with_name("bad.onnx.rejected").is_file()


def test_export_backbone_writes_the_fine_tuned_backbone_in_the_public_layout(tmp_path, capsys):
    """Supervised pretraining: `export MODEL --backbone` writes the fine-tuned backbone so that
    another run loads it like a hub folder, with exactly the fine-tuned weights (heads dropped)."""
    import json

    from wav2small.models.exits import load_backbone, save_exits_model

    model = tiny(task="adv", exits=()).eval()
    with torch.no_grad():  # "fine-tuned": weights that no random init reproduces
        for p in model.backbone.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = save_exits_model(model, tmp_path / "run" / "best.safetensors")
    (tmp_path / "run" / "config.yaml").write_text("task: adv\nlr: 0.0003\n")
    out = tmp_path / "backbone-adv"
    assert main(["export", str(path), "--backbone", "--out", str(out)]) == 0
    assert "Hugging Face layout" in capsys.readouterr().out
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {
        f.name for f in out.iterdir()
    }
    loaded = load_backbone(str(out)).state_dict()
    for k, v in model.backbone.state_dict().items():
        torch.testing.assert_close(loaded[k], v, rtol=0, atol=0)
    recipe = json.loads((out / "pretrain.json").read_text())
    assert recipe["task"] == "adv" and recipe["run_config"]["lr"] == 0.0003
    again = create_exits_model(str(out), task="classes", classes=CLASSES, exits=(1,))
    torch.testing.assert_close(
        again.backbone.encoder.layers[0].attention.q_proj.weight,
        model.backbone.encoder.layers[0].attention.q_proj.weight,
    )
    # not for students, and not with --exit
    student = tmp_path / "student.safetensors"
    from wav2small.models import create_model, save_model

    save_model(create_model("wav2small-tiny"), student)
    assert main(["export", str(student), "--backbone", "--out", str(tmp_path / "x")]) == 2
    assert "--backbone is for early-exit models" in capsys.readouterr().err
    assert main(["export", str(path), "--backbone", "--exit", "1", "--out", str(out)]) == 2
    assert "no --exit" in capsys.readouterr().err


def test_exit_export_card_states_measured_speed_and_test_scores(corpus, tmp_path, capsys):
    """`export --exit K --test CSV` writes MODEL_CARD.md with the ONNX ms per 5 s and the
    exit's scores, equal to selfdistill-eval's; without --test the card says it was not scored."""
    from wav2small.models.exits import save_exits_model

    model = tiny().eval()
    path = save_exits_model(model, tmp_path / "m.safetensors")
    test = corpus / "test.csv"
    assert (
        main(
            ["export", str(path), "--exit", "1", "--out", str(tmp_path / "e1"), "--test", str(test)]
        )
        == 0
    )
    card = (tmp_path / "e1" / "MODEL_CARD.md").read_text()
    want = evaluate_exits(model, test, exits=["1"], latency=False, progress=False).iloc[0]
    assert f"| {want['uar']:.3f} | {want['accuracy']:.3f} |" in card
    assert "5 clips" in card and "truncated after layer 1 of 4" in card
    ms = float(card.split("* **")[1].split(" ms**")[0])
    assert 0 < ms < 1e4
    assert main(["export", str(path), "--exit", "fusion", "--out", str(tmp_path / "f")]) == 0
    card = (tmp_path / "f" / "MODEL_CARD.md").read_text()
    assert "Not evaluated at export time" in card and " ms** per 5 s" in card
    capsys.readouterr()
    args = [
        "export",
        str(path),
        "--exit",
        "1",
        "--out",
        str(tmp_path / "x.onnx"),
        "--test",
        str(test),
    ]
    assert main(args) == 2
    assert "needs a folder --out" in capsys.readouterr().err
    assert (
        main(["export", "wav2small-tiny", "--out", str(tmp_path / "s"), "--test", str(test)]) == 2
    )
    assert "--test is for early-exit models" in capsys.readouterr().err


@pytest.mark.parametrize("task", ["classes", "adv"])
def test_exit_scores_run_through_the_predictor_and_equal_one_full_pass(corpus, task):
    """selfdistill-eval's outputs come from the Predictor (one truncated model per exit, as
    `evaluate` runs a model) and equal every head of one untruncated padded-batch pass."""
    from wav2small.data import UtteranceDataset, load_manifest, pad_collate
    from wav2small.selfdistill import _all_heads, exit_names, exit_outputs

    model = tiny(task).eval()
    table = load_manifest(corpus / "test.csv")
    names = exit_names(model)
    got = exit_outputs(model, table["path"].tolist(), names)
    data = UtteranceDataset(table)
    batch = pad_collate([data[i] for i in range(len(data))])
    with torch.inference_mode():
        heads = _all_heads(model, batch["wave"], batch["lengths"])
    assert set(got) == set(heads) == {str(n) for n in names}
    for head, values in got.items():
        assert values.shape == (len(table), len(model.config.labels))
        np.testing.assert_allclose(values, heads[head].numpy(), atol=1e-4, err_msg=head)


def test_selfdistill_eval_cli_scores_an_exit_as_evaluate_scores_that_model(corpus, tmp_path):
    from wav2small.evaluate import evaluate
    from wav2small.models.exits import save_exits_model

    model = tiny("adv").eval()
    path = save_exits_model(model, tmp_path / "adv.safetensors")
    out = tmp_path / "exits.csv"
    args = ["selfdistill-eval", str(path), "--data", str(corpus / "test.csv"), "--out", str(out)]
    assert main([*args, "--no-latency", "--no-progress", "--exit", "1", "deepest"]) == 0
    table = pd.read_csv(out).set_index("exit")
    assert list(table.index) == ["1", DEEPEST] and (table["n"] == 5).all()
    reference = evaluate({"deep": model.at_exit(DEEPEST)}, corpus / "test.csv").ccc("deep")
    assert table.loc[DEEPEST, "ccc_mean"] == pytest.approx(reference["mean"], abs=1e-6)
    assert table.loc[DEEPEST, "ccc_valence"] == pytest.approx(reference["valence"], abs=1e-6)


@pytest.mark.slow
def test_deepest_exports_with_the_dynamo_exporter_too(tmp_path):
    report = export_exit(tiny().eval(), tmp_path / "deep.onnx", exit=DEEPEST, exporter="dynamo")
    assert report.passed and report.exporter == "dynamo"


def test_a_pretrained_backbone_trains_in_train_mode(corpus, tmp_path, monkeypatch):
    # from_pretrained returns eval mode (dropout and LayerDrop off): training must switch it on
    import wav2small.selfdistill as sd

    tiny("adv", exits=(1,)).backbone.save_pretrained(tmp_path / "backbone")
    seen = []
    build = sd.build_model

    def spy(cfg, classes):
        model = build(cfg, classes)
        assert not model.backbone.training  # as loaded
        forward_all = model.forward_all

        def recording(*args, **kwargs):
            if torch.is_grad_enabled():
                seen.append(all(m.training for m in model.modules()))
            return forward_all(*args, **kwargs)

        model.forward_all = recording
        return model

    monkeypatch.setattr(sd, "build_model", spy)
    cfg = SelfDistillConfig(
        backbone=str(tmp_path / "backbone"),
        data=str(corpus / "train.csv"),
        task="adv",
        exits=(1,),
        out=str(tmp_path / "run"),
        max_steps=2,
        batch_size=4,
        crop_seconds=1.0,
        progress=False,
    )
    fit_selfdistill(cfg)
    assert seen == [True, True]


def test_selfdistill_config_comes_from_the_shared_resolution(tmp_path):
    from argparse import Namespace

    from wav2small.selfdistill import cli_config

    cfg = cli_config(Namespace(config=None, data="a.csv", set=[["exits=2,4"], ["lr=0.001"]]))
    assert cfg.exits == (2, 4) and cfg.lr == 0.001


def test_non_finite_adv_labels_are_named(corpus):
    from wav2small.errors import NonFiniteError

    table = pd.read_csv(corpus / "train.csv")
    table.loc[3, "dominance"] = np.inf
    with pytest.raises(NonFiniteError, match="t.csv: 1 rows .*non-finite labels, e.g. train_03"):
        targets_of(table, task="adv", name="t.csv")
