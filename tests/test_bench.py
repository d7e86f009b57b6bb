"""Tests for wav2small.bench: ONNX parameter counts, latency and peak-RSS helpers (sessions come
from wav2small.backends)."""

from __future__ import annotations

import pytest
import torch

from wav2small.bench import median_ms, onnx_ms_per_clip, onnx_parameters, rss_increase_mb, session


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    from wav2small.export import export_onnx
    from wav2small.models import count_parameters, create_model

    torch.manual_seed(0)
    model = create_model("wav2small-tiny").eval()
    path = export_onnx(model, tmp_path_factory.mktemp("bench") / "tiny.onnx")
    return path, count_parameters(model)


def _bench_script(name: str):
    """benchmarks/<name>.py as a module (the benchmarks folder is not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bench_results():
    return _bench_script("bench_results")


def test_bench_mobilenets_parses_every_kind_of_image_field():
    parse = _bench_script("bench_mobilenets").parse_image
    changes = parse(["stem_stride=2,2", "trend=0", "level=true", "low_fmax=900"])
    assert changes == {"stem_stride": (2, 2), "trend": 0, "level": True, "low_fmax": 900.0}
    assert type(changes["level"]) is bool and type(changes["trend"]) is int
    assert parse(["level=0"]) == {"level": False}
    with pytest.raises(SystemExit, match="unknown field"):
        parse(["stride=2"])


def test_session_has_the_requested_threads(tiny_onnx):
    sess = session(tiny_onnx[0], threads=2, arena=False)
    opts = sess.get_session_options()
    assert opts.intra_op_num_threads == 2
    assert opts.enable_cpu_mem_arena is False


def test_parameters_latency_and_rss(tiny_onnx):
    path, trainable = tiny_onnx
    counts = onnx_parameters(path)
    assert 0 < counts["graph_without_front_end"] < counts["graph"]
    assert counts["graph_without_front_end"] >= trainable * 0.9
    assert onnx_ms_per_clip(path, seconds=1.0, repeats=3) > 0
    assert median_ms(lambda: None, repeats=3, warmup=0) >= 0
    rss = rss_increase_mb(path, seconds=1.0)
    assert 0 < rss["session"] <= rss["total"] < 500


def test_make_bench_places_every_benchmark_script():
    """A new bench_*.py must be put in make bench's BUDGET or in SEPARATE, never run by accident."""
    import importlib.util
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    spec = importlib.util.spec_from_file_location("run_all", folder / "run_all.py")
    run_all = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_all)
    on_disk = {p.stem for p in folder.glob("bench_*.py")}
    assert on_disk == set(run_all.BUDGET) | set(run_all.SEPARATE)
    assert not set(run_all.BUDGET) & set(run_all.SEPARATE)
    assert [s.stem for s in run_all.scripts()][-1] == "bench_results"
    assert [s.stem for s in run_all.scripts(["models", "results"])] == [
        "bench_models",
        "bench_results",
    ]


def test_results_page_marks_times_of_an_earlier_run():
    """After ``run_all.py --only``, the scripts not re-run are listed as from the earlier run."""
    results = _bench_results()
    timings = {
        "scripts": {
            "bench_models": {"args": [], "seconds": 90, "exit": 0, "earlier run": True},
            "bench_predict": {"args": ["--json", "p.json"], "seconds": 60, "exit": 0},
        }
    }
    rows = [r for r in results.timings_section(timings) if r.startswith("| bench_")]
    assert rows == [
        "| bench_models | (defaults) | 1.5 (earlier run) |",
        "| bench_predict | --json p.json | 1.0 |",
    ]


def test_run_all_only_results_hands_the_earlier_times_to_bench_results(tmp_path, monkeypatch):
    """``run_all.py --only results`` reruns bench_results alone: the timings file it reads must
    still hold the earlier run's scripts (it once found none and dropped the table)."""
    import json
    import sys

    run_all = _bench_script("run_all")
    monkeypatch.setattr(run_all, "FIGURES", tmp_path)
    earlier = {"bench_models": {"args": [], "seconds": 66.0, "exit": 0}}
    (tmp_path / "timings.json").write_text(json.dumps({"scripts": earlier}))
    seen = []

    def fake_call(cmd):
        seen.append(json.loads((tmp_path / "timings.json").read_text())["scripts"])
        return 0

    monkeypatch.setattr(run_all.subprocess, "call", fake_call)
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--only", "results"])
    assert run_all.main() == 0
    assert seen == [{"bench_models": earlier["bench_models"] | {"earlier run": True}}]


def test_stream_ratio_is_the_median_of_rounds_or_the_ratio_of_medians():
    from wav2small.bench import stream_ratio

    new = {"stream": 0.2, "one pass": 0.1, "stream ÷ one pass": 1.3}
    new["trade-off"] = [{"chunk tokens": 682, "stream": 0.3, "÷ one pass": 2.5}]
    assert stream_ratio(new) == 1.3  # the rounds' ratios, not 0.2 / 0.1
    assert stream_ratio(new, new["trade-off"][0]) == 2.5
    old = {"stream": 0.2, "one pass": 0.1, "trade-off": [{"chunk tokens": 682, "stream": 0.3}]}
    assert stream_ratio(old) == pytest.approx(2.0)
    assert stream_ratio(old, old["trade-off"][0]) == pytest.approx(3.0)


def test_results_page_quotes_the_committed_selfdistill_study(tmp_path):
    """RESULTS.md quotes the seed study's committed table (labelled: not run by make bench)."""
    results = _bench_results()
    assert results.study_section(tmp_path / "missing.md") == []
    table = tmp_path / "results.md"
    table.write_text("| method | head |\n|---|---|\n| fine-tuning | deepest |\n")
    none = tmp_path / "none.md"
    lines = results.study_section(table, none, none)
    assert "not run by `make bench`" in lines[1] and "| fine-tuning | deepest |" in lines[5]
    assert lines[-1].endswith(f"({results.STUDY_PLOT})")
    control = tmp_path / "pretraining.md"
    control.write_text("| method | head | pretrained | random init |\n|---|---|---|---|\n")
    with_control = results.study_section(table, control, none)
    assert with_control[: len(lines)] == lines
    assert "random-init twin" in with_control[len(lines) + 1]
    assert with_control[-1].startswith("| method | head | pretrained | random init |")
    supervised = tmp_path / "versus.md"
    supervised.write_text("| method | head | supervised | self-supervised |\n|---|---|---|---|\n")
    both = results.study_section(table, control, supervised)
    assert both[: len(with_control)] == with_control
    assert "*supervised*" in both[len(with_control) + 1]
    assert both[-1].startswith("| method | head | supervised | self-supervised |")


def test_every_student_row_gets_its_ratio_to_the_teacher():
    results = _bench_results()
    teacher = {"CCC A gold": 0.8, "CCC D gold": 0.5, "CCC V gold": 0.4}
    rows = [{"model": "s", "CCC A gold": 0.4, "CCC D gold": 0.5, "CCC V gold": 0.1}, {"model": "u"}]
    got = results.with_ratios(rows, teacher)
    assert [got[0][f"{d} × teacher"] for d in "ADV"] == [0.5, 1.0, 0.25]
    assert got[1] == {"model": "u"}  # a student without CCC (not trained) gets no ratio
