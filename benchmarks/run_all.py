"""Run every benchmark script in this folder (``make bench``) and print their figures.

    .venv/bin/python benchmarks/run_all.py [--only models synth ...]

Each ``bench_<name>.py`` runs in its own process, one after the other (timings on a shared
machine are noisy enough without two benchmarks competing), with the arguments of
:data:`BUDGET`; ``bench_results.py`` runs last: it writes docs/RESULTS.md and the README's
results block from its own measurements and from the JSON figures the earlier scripts wrote
into ``runs/bench/`` (speed ratios to the Dawn-size ONNX teacher, bounded memory, streams,
the wall time of each script). ``bench_reliability.py`` is ``make reliability``, not part of
this run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from wav2small.inputs import write_text

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: Where the scripts leave figures for bench_results.py (runs/ is not versioned).
FIGURES = ROOT / "runs" / "bench"
#: Scripts that ``make bench`` does not run, with the command that does (each is long or a study
#: with its own inputs; tests/test_bench.py checks that every bench_*.py is here or in BUDGET).
SEPARATE = {
    "bench_reliability": "make reliability",
    "bench_frontend": "python benchmarks/bench_frontend.py",
    "bench_mobilenets": "python benchmarks/bench_mobilenets.py --corpus runs/bench-demo/corpus …",
}
#: The scripts of ``make bench``, in order, with their arguments: the budget that keeps the whole
#: run near an hour on two idle cores (docs/RESULTS.md prints them with each script's wall time).
#: bench_results runs last: it reads what the others wrote.
BUDGET: dict[str, list[str]] = {
    "bench_models": ["--json", str(FIGURES / "models.json")],
    "bench_onnx_teacher": [],
    "bench_predict": ["--json", str(FIGURES / "predict.json")],
    "bench_scale": ["--quick"],  # the small teacher only; Dawn-size labelling: bench_*teacher
    "bench_backbone": ["--json", str(FIGURES / "backbone.json")],  # the pretrained backbone's probe
    "bench_selfdistill": [],
    "bench_synth": [],
    "bench_teacher": ["--quick"],
    "bench_results": ["--no-pool-study"],
}


def scripts(only: list[str] | None = None) -> list[Path]:
    """The benchmark scripts to run, in order (bench_results last)."""
    found = [HERE / f"{name}.py" for name in BUDGET]
    if only:
        found = [s for s in found if s.stem.removeprefix("bench_") in only]
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="names, e.g. models synth (default: all)")
    args = parser.parse_args()
    todo = scripts(args.only)
    FIGURES.mkdir(parents=True, exist_ok=True)
    for script in todo:  # figures of an earlier run must not pass for this run's
        for flag in BUDGET.get(script.stem, []):
            if flag.startswith(str(FIGURES)):
                Path(flag).unlink(missing_ok=True)
    failed, timings = [], {}
    # --only re-runs some scripts: the others' times from the earlier run stay in timings.json
    # (marked "earlier run"), so docs/RESULTS.md still lists every script's time.
    earlier = FIGURES / "timings.json"
    if args.only and earlier.is_file():
        for name, t in json.loads(earlier.read_text())["scripts"].items():
            if name not in {s.stem for s in todo} | {"bench_results"}:
                timings[name] = t | {"earlier run": True}
    earlier.unlink(missing_ok=True)
    if timings:  # bench_results reads them, even when it is the only script rerun
        write_text(earlier, json.dumps({"scripts": timings}, indent=2))
    start = time.perf_counter()
    for script in todo:
        extra = BUDGET.get(script.stem, [])
        print(f"\n=== {script.name} {' '.join(extra)} ===", flush=True)
        t0 = time.perf_counter()
        code = subprocess.call([sys.executable, str(script), *extra])
        seconds = time.perf_counter() - t0
        print(f"--- {script.name}: exit {code}, {seconds:.0f} s", flush=True)
        shown = [
            a if not a.startswith(str(ROOT)) else str(Path(a).relative_to(ROOT)) for a in extra
        ]
        timings[script.stem] = {"args": shown, "seconds": seconds, "exit": code}
        if script.stem != "bench_results":  # bench_results reads it
            write_text(FIGURES / "timings.json", json.dumps({"scripts": timings}, indent=2))
        if code:
            failed.append(script.name)
    print("\n## wall time of each script\n")
    for name, t in timings.items():
        if t.get("earlier run"):
            continue
        print(f"{name:<22} {t['seconds'] / 60:6.1f} min  exit {t['exit']}  {' '.join(t['args'])}")
    print(f"{'total':<22} {(time.perf_counter() - start) / 60:6.1f} min")
    for name, how in SEPARATE.items():
        print(f"({name}: not run here; `{how}`)")
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
