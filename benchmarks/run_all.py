"""Run every benchmark script in this folder (``make bench``) and print their figures.

    .venv/bin/python benchmarks/run_all.py [--only models synth ...]

Each ``bench_<name>.py`` runs in its own process, one after the other (timings on a shared
machine are noisy enough without two benchmarks competing); ``bench_results.py`` runs last, as it
collects the self-distillation table into docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    scripts = sorted(HERE.glob("bench_*.py"), key=lambda s: (s.stem == "bench_results", s.name))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="names, e.g. models synth (default: all)")
    args = parser.parse_args()
    if args.only:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in args.only]
    failed = []
    for script in scripts:
        print(f"\n=== {script.name} ===", flush=True)
        t0 = time.perf_counter()
        code = subprocess.call([sys.executable, str(script)])
        print(f"--- {script.name}: exit {code}, {time.perf_counter() - t0:.0f} s", flush=True)
        if code:
            failed.append(script.name)
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
