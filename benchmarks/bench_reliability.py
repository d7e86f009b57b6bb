"""Reliability probes that take time (issue 16): kill -9 and resume, concurrent writers, a full
disk, 1-hour files. Prints a table of probes tried and held and writes it to docs/RELIABILITY.md.

    python benchmarks/bench_reliability.py [--quick] [--hours 1] [--no-doc]

Every probe runs the real command line (``python -m wav2small.cli``) in a fresh process:

* **kill -9** of ``label`` (while the teacher loads, and after 2, 5, 9 shards of 8 rows) and
  of ``distill`` (after its 1st and 3rd checkpoint of 6, ``val_every=4`` steps), then a rerun
  (``label``) or ``--resume`` (``distill``): the label table must equal an uninterrupted run's
  (same rows, no duplicates, same values), the resumed student's outputs an uninterrupted run's;
* **two writers** of one ``--out``: the second fails fast (exit 2, "another wav2small process")
  while the first finishes complete;
* **a full disk**: a small tmpfs (``mount -t tmpfs``, needs root; the probe is reported as not
  run otherwise) as the output folder of ``label`` and ``predict``: the command fails with a
  non-zero exit, and no temporary file nor a truncated output is left;
* **a long file** (``--hours``, default 1) through ``predict``, ``evaluate`` and ``label``:
  peak RSS (kernel ``VmHWM`` of the process that ran the command) against the same command on a
  1 s file; held when the long file costs less than 100 MB more.

The fast probes (bad inputs, header lies, garbage models) are tests: tests/test_reliability.py.
``--quick`` uses 10-minute files and fewer kill points.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from wav2small import LABELS, SAMPLE_RATE
from wav2small.signals import pseudo_speech_set

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
DOC = ROOT / "docs" / "RELIABILITY.md"
ENV = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
#: Runs a command in-process and prints its peak RSS (VmHWM) as the last stderr line.
HWM = (
    "import sys; from wav2small.cli import main; rc = main(sys.argv[1:]); "
    "kb = next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]; "
    "print(f'HWM_KB={kb}', file=sys.stderr); sys.exit(rc)"
)
#: A long file may cost at most this much more peak RSS than a 1 s file.
RSS_SLACK_MB = 100.0

RESULTS: list[tuple[str, str, str]] = []  # (probe, held?, detail)


def record(probe: str, held: bool | None, detail: str) -> None:
    mark = "held" if held else ("not run" if held is None else "FAILED")
    RESULTS.append((probe, mark, detail))
    print(f"[{mark:>7}] {probe}: {detail}", flush=True)


def cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wav2small.cli", *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
    )


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "wav2small.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:160] if lines else ""


# --- data ---------------------------------------------------------------------------------------
def make_corpus(root: Path, n: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i, clip in enumerate(pseudo_speech_set(n, seed=11, seconds=(1.0, 2.5))):
        sf.write(root / f"c{i:03d}.wav", clip, SAMPLE_RATE, subtype="PCM_16")
        rows.append({"file": f"c{i:03d}.wav", **dict(zip(LABELS, rng.random(3), strict=True))})
    pd.DataFrame(rows).to_csv(root / "corpus.csv", index=False)
    return root / "corpus.csv"


def make_long(path: Path, seconds: float) -> Path:
    clip = np.concatenate(pseudo_speech_set(6, seed=1, seconds=(4.0, 6.0)))
    total = int(seconds * SAMPLE_RATE)
    with sf.SoundFile(path, "w", SAMPLE_RATE, 1, "PCM_16") as f:
        done = 0
        while done < total:
            k = min(len(clip), total - done)
            f.write(clip[:k])
            done += k
    pd.DataFrame({"file": [path.name], **{k: [0.5] for k in LABELS}}).to_csv(
        path.with_suffix(".csv"), index=False
    )
    return path


def read_table(path: Path) -> pd.DataFrame:
    table = pd.read_parquet(path)
    return table.sort_values(["file", "start"]).reset_index(drop=True)


# --- probes -------------------------------------------------------------------------------------
def probe_label_kill(work: Path, csv: Path, points: list[float]) -> Path:
    ref_out = work / "label-ref.parquet"
    run = cli("label", "--teacher", "synth", "--audio", str(csv), "--out", str(ref_out),
              "--shard-rows", "8", "--no-progress")  # fmt: skip
    if run.returncode:
        record("label reference run", False, last_line(run.stderr))
        return ref_out
    ref = read_table(ref_out)
    for t in points:  # 0: while the teacher loads; k: once k shards are written
        out = work / f"label-kill-{t:g}.parquet"
        proc = start("label", "--teacher", "synth", "--audio", str(csv), "--out", str(out),
                     "--shard-rows", "8", "--no-progress")  # fmt: skip
        parts = out.with_name(out.name + ".parts")
        time.sleep(1.5)
        while t and proc.poll() is None and len(list(parts.glob("*.parquet"))) < t:
            time.sleep(0.02)
        killed = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        shards = len(list(out.parent.glob(out.name + ".parts/*")))
        rerun = cli("label", "--teacher", "synth", "--audio", str(csv), "--out", str(out),
                    "--shard-rows", "8", "--no-progress")  # fmt: skip
        if rerun.returncode:
            record(f"label kill -9 (point {t:g}) + rerun", False, last_line(rerun.stderr))
            continue
        got = read_table(out)
        same = (
            len(got) == len(ref)
            and not got.duplicated(["file", "start", "end"]).any()
            and got["file"].tolist() == ref["file"].tolist()
            and np.allclose(got[list(LABELS)], ref[list(LABELS)], atol=1e-6)
        )
        leftovers = [p.name for p in work.glob(f".{out.name}*.tmp*")]
        record(
            f"label kill -9 {f'after {t:g} shards' if t else 'at start'} + rerun",
            same and not leftovers,
            f"{'killed mid-run' if killed else 'had finished'}, {shards} shard(s) kept; "
            f"rerun: {len(got)}/{len(ref)} rows, duplicates "
            f"{int(got.duplicated(['file', 'start', 'end']).sum())}, "
            f"{'same labels' if same else 'DIFFERENT labels'}, temp files left {leftovers}",
        )
    return ref_out


def _distill_args(csv: Path, labels: Path, out: Path, steps: int) -> list[str]:
    return ["distill", "--audio", str(csv), "--labels", str(labels), "--student",
            "wav2small-tiny", "--out", str(out), "--max-steps", str(steps), "--batch-size", "4",
            "--num-workers", "0", "--accelerator", "cpu", "--no-progress", "--set",
            "crop_seconds=1.0", "val_fraction=0.2", "val_every=4"]  # fmt: skip


def _student_outputs(weights: Path) -> np.ndarray:
    code = (
        "import sys, numpy as np, torch; from wav2small.models import load_model; "
        "from wav2small.signals import pseudo_speech; "
        "m = load_model(sys.argv[1]).eval(); "
        "x = torch.from_numpy(pseudo_speech(2.0, rng=np.random.default_rng(5)))[None]; "
        "print(','.join(map(repr, m(x).detach().numpy().ravel().tolist())))"
    )
    run = subprocess.run([sys.executable, "-c", code, str(weights)], capture_output=True,
                         text=True, env=ENV)  # fmt: skip
    return np.array([float(v) for v in run.stdout.strip().split(",")]) if run.stdout else None


def probe_distill_kill(work: Path, csv: Path, labels: Path, points: list[float], steps: int):
    ref_dir = work / "distill-ref"
    run = cli(*_distill_args(csv, labels, ref_dir, steps))
    if run.returncode:
        record("distill reference run", False, last_line(run.stderr))
        return
    ref = _student_outputs(ref_dir / "last.ckpt")
    for t in points:  # kill once the k-th checkpoint (last.ckpt) has been written
        out = work / f"distill-kill-{t:g}"
        proc = start(*_distill_args(csv, labels, out, steps))
        seen, stamp = 0, None
        while proc.poll() is None and seen < t:
            try:
                now = (out / "last.ckpt").stat().st_mtime_ns
            except FileNotFoundError:
                now = None
            if now is not None and now != stamp:
                seen, stamp = seen + 1, now
            time.sleep(0.02)
        killed = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        resumed = cli(*_distill_args(csv, labels, out, steps), "--resume")
        if resumed.returncode:
            name = f"distill kill -9 after checkpoint {t:g} + --resume"
            record(name, False, last_line(resumed.stderr))
            continue
        got = _student_outputs(out / "last.ckpt")
        metrics = pd.read_csv(out / "metrics.csv")
        steps_logged = (
            metrics.dropna(subset=["train/loss"])["step"] if "train/loss" in metrics else []
        )
        dup = int(pd.Series(steps_logged).duplicated().sum())
        summary = json.loads((out / "summary.json").read_text())
        same = got is not None and ref is not None and np.allclose(got, ref, atol=1e-5)
        diff = float(np.abs(got - ref).max()) if got is not None and ref is not None else np.nan
        record(
            f"distill kill -9 after checkpoint {t:g} + --resume",
            same and dup == 0,
            f"{'killed mid-run' if killed else 'had finished'}; resumed at step "
            f"{summary.get('start_step')} of {summary.get('global_step')}; student vs "
            f"uninterrupted: max |diff| {diff:.2e}; duplicated metric steps {dup}",
        )


def _writers(
    work: Path, long_file: Path, model: Path, corpus: Path
) -> dict[str, tuple[list[str], Path]]:
    """Every command that writes a table or an artefact to ``--out``: argv and the output.

    The first writer works on the long file, so it is still running when the second starts.
    """
    csv = long_file.with_suffix(".csv")
    w = work / "writers"
    return {
        "label": (["label", "--teacher", "synth", "--audio", str(csv), "--out",
                   str(w / "labels.parquet"), "--no-progress"], w / "labels.parquet"),
        "predict": (["predict", str(model), str(long_file), "--timeline", "0.5", "--out",
                     str(w / "timeline.csv"), "--no-progress"], w / "timeline.csv"),
        "evaluate": (["evaluate", str(model), "--data", str(csv), "--out", str(w / "eval"),
                      "--no-plots", "--no-progress"], w / "eval" / "metrics.csv"),
        "export": (["export", "wav2small-tiny", "--out", str(w / "export"), "--int8",
                    "--calibration", str(long_file), "--no-progress"],
                   w / "export" / "model.onnx"),
        "synth": (["synth", "--split", "test", "--n", "60", "--out", str(w / "synth"),
                   "--no-progress"], w / "synth" / "test.csv"),
        "distill": (["distill", "--teacher", "synth", "--audio", str(corpus), "--student",
                     "wav2small-tiny", "--out", str(w / "distill"), "--max-steps", "40",
                     "--batch-size", "4", "--num-workers", "0", "--accelerator", "cpu",
                     "--no-progress", "--set", "crop_seconds=1.0", "val_every=8"],
                    w / "distill" / "metrics.csv"),
    }  # fmt: skip


def _readable(path: Path) -> bool:
    try:
        if path.suffix == ".parquet":
            return len(pd.read_parquet(path)) > 0
        if path.suffix == ".csv":
            return len(pd.read_csv(path)) > 0
        if path.suffix == ".onnx":
            import onnx

            onnx.checker.check_model(onnx.load(str(path)))
            return True
    except Exception:  # noqa: BLE001 - any parse error means a corrupt output
        return False
    return path.is_file()


def probe_two_writers(work: Path, long_file: Path, model: Path, corpus: Path) -> None:
    """Two processes write one ``--out``: the second must fail fast (exit 2, naming the lock)
    while the first finishes with a whole output."""
    for name, (argv, final) in _writers(work, long_file, model, corpus).items():
        out = Path(argv[argv.index("--out") + 1])
        first = start(*argv)
        lock = out.with_name(out.name + ".lock")
        for _ in range(1200):  # wait until the first writer holds its lock (or ends)
            if lock.exists() or first.poll() is not None:
                break
            time.sleep(0.05)
        if not lock.exists():  # a writer without a lock: give it time to start writing
            time.sleep(3.0)
        t0 = time.perf_counter()
        second = cli(*argv)
        waited = time.perf_counter() - t0
        first_running = first.poll() is None
        _, err1 = first.communicate()
        whole = first.returncode == 0 and _readable(final)
        temps = [p.name for p in out.parent.rglob("*.tmp*")]
        held = (
            second.returncode == 2
            and "another wav2small process" in second.stderr
            and whole
            and not temps
        )
        record(
            f"two writers: {name}",
            held if first_running else None,
            f"second: exit {second.returncode} after {waited:.1f} s"
            f"{' (first still running)' if first_running else ' (FIRST HAD FINISHED)'}: "
            f"{last_line(second.stderr)!r}; first: exit {first.returncode}, output "
            f"{'whole' if whole else 'MISSING OR CORRUPT'}, temp files left {temps}",
        )


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        return False
    run = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True, text=True)  # fmt: skip
    return run.returncode == 0


def probe_full_disk(work: Path, csv: Path, long_file: Path, model: Path) -> None:
    """Every writer on a 64 KB tmpfs filled but for 4 KB: a non-zero exit naming the output,
    no temporary file, no truncated output."""
    disk = work / "full"
    if not _mount_tmpfs(disk, "64k"):
        record("full tmpfs", None, "could not mount a tmpfs (needs root or CAP_SYS_ADMIN)")
        return
    try:
        cases = {
            "label": ["label", "--teacher", "synth", "--audio", str(csv), "--out",
                      str(disk / "labels.parquet"), "--shard-rows", "1000", "--no-progress"],
            "predict": ["predict", str(model), str(long_file), "--timeline", "0.5",
                        "--out", str(disk / "timeline.csv"), "--no-progress"],
            "evaluate": ["evaluate", str(model), "--data", str(csv), "--out",
                         str(disk / "eval"), "--no-progress"],
            "export": ["export", "wav2small-tiny", "--out", str(disk / "export"),
                       "--no-progress"],
            "synth": ["synth", "--split", "test", "--n", "4", "--out", str(disk / "synth"),
                      "--no-progress"],
        }  # fmt: skip
        for name, argv in cases.items():
            for p in sorted(disk.iterdir()):  # empty, then fill but for 4 KB
                shutil.rmtree(p) if p.is_dir() else p.unlink()
            with open(disk / "filler", "wb") as f:
                try:
                    f.write(b"\0" * (60 * 1024))
                except OSError:
                    pass
            run = cli(*argv)
            left = sorted(str(p.relative_to(disk)) for p in disk.rglob("*") if p.name != "filler")
            temps = [p for p in left if ".tmp" in p]
            corrupt = [
                p for p in left
                if Path(p).suffix in (".parquet", ".csv", ".onnx") and not _readable(disk / p)
            ]  # fmt: skip
            line = last_line(run.stderr)
            record(
                f"full tmpfs: {name}",
                run.returncode == 2 and not temps and not corrupt and "Traceback" not in run.stderr,
                f"exit {run.returncode}: {line!r}; left {left}",
            )
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def _hwm(*argv: str) -> tuple[int, float, str]:
    run = subprocess.run([sys.executable, "-c", HWM, *argv], capture_output=True, text=True,
                         env=ENV, timeout=1800)  # fmt: skip
    kb = next((ln for ln in run.stderr.splitlines() if ln.startswith("HWM_KB=")), "HWM_KB=0")
    return run.returncode, int(kb.split("=")[1]) / 1024, last_line(run.stderr)


def probe_long_files(work: Path, long_file: Path, short_file: Path, model: Path) -> None:
    """predict, evaluate, label and export calibration on the long file vs a 1 s file."""
    hours = sf.info(long_file).duration / 3600
    commands = {
        "predict": lambda f: ["predict", str(model), str(f), "--no-progress"],
        "evaluate": lambda f: ["evaluate", str(model), "--data", str(f.with_suffix(".csv")),
                               "--no-progress"],
        "label": lambda f: ["label", "--teacher", "synth", "--audio", str(f), "--out",
                            str(work / f"long-{f.stem}.parquet"), "--no-progress"],
        "export calibration": lambda f: ["export", "wav2small-tiny", "--out",
                                         str(work / f"long-export-{f.stem}"), "--int8",
                                         "--calibration", str(f), "--no-progress"],
    }  # fmt: skip
    for name, argv in commands.items():
        rc_s, short_mb, _ = _hwm(*argv(short_file))
        t0 = time.perf_counter()
        rc_l, long_mb, line = _hwm(*argv(long_file))
        wall = time.perf_counter() - t0
        record(
            f"{hours:g} h file: {name}",
            rc_s == 0 and rc_l == 0 and long_mb - short_mb <= RSS_SLACK_MB,
            f"peak RSS {long_mb:.0f} MB vs {short_mb:.0f} MB for a 1 s file "
            f"(+{long_mb - short_mb:.0f} MB), {wall:.0f} s"
            + ("" if rc_l == 0 else f"; exit {rc_l}: {line!r}"),
        )


# --- report -------------------------------------------------------------------------------------
def table(results: list[tuple[str, str, str]], work: Path | None = None) -> str:
    """The markdown table of ``results``; paths under ``work`` are written as ``WORK/...``."""

    def detail(d: str) -> str:
        d = d if work is None else d.replace(str(work.resolve()), "WORK").replace(str(work), "WORK")
        return d.replace("|", "/")

    held = sum(mark == "held" for _, mark, _ in results)
    tried = sum(mark != "not run" for _, mark, _ in results)
    lines = [
        f"{held} of {tried} probes held"
        + (f" ({len(results) - tried} not run)" if tried < len(results) else ""),
        "",
        "| probe | result | detail |",
        "|---|---|---|",
        *[f"| {p} | {m} | {detail(d)} |" for p, m, d in results],
    ]
    return "\n".join(lines)


BEGIN, END = "<!-- probes: begin -->", "<!-- probes: end -->"


def write_doc(text: str, args: argparse.Namespace) -> None:
    """Replace the probe table between the markers of docs/RELIABILITY.md (the rest is kept)."""
    from wav2small.inputs import write_text

    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    command = "python benchmarks/bench_reliability.py" + " ".join(
        [""] + (["--quick"] if args.quick else []) + [f"--probe {p}" for p in args.probe or []]
    )
    if args.table_only:
        command = (
            "python benchmarks/bench_reliability.py --work DIR --probe NAME` (one probe at a "
            "time; results accumulated in DIR), then `... --work DIR --table-only"
        )
    block = f"{BEGIN}\nPrinted by `{command}` on {when}:\n\n{text}\n{END}"
    old = DOC.read_text(encoding="utf-8") if DOC.is_file() else ""
    if BEGIN in old and END in old:
        new = old[: old.index(BEGIN)] + block + old[old.index(END) + len(END) :]
    else:
        new = (old or "# Reliability\n") + "\n## Probe table\n\n" + block + "\n"
    write_text(DOC, new)


PROBES = ("label-kill", "distill-kill", "writers", "full-disk", "long")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10-minute files, fewer kill points")
    parser.add_argument("--hours", type=float, default=1.0, help="long-file length (default 1)")
    parser.add_argument(
        "--probe",
        action="append",
        choices=PROBES,
        help="run only this probe (repeatable; default: all, one after the other)",
    )
    parser.add_argument(
        "--work",
        type=Path,
        help="keep data and results here; results accumulate over runs (default: a temp folder)",
    )
    parser.add_argument("--no-doc", action="store_true", help="do not write docs/RELIABILITY.md")
    parser.add_argument(
        "--table-only",
        action="store_true",
        help="run nothing: print (and write) the table of the results accumulated in --work",
    )
    args = parser.parse_args()
    if args.table_only and not args.work:
        parser.error("--table-only needs --work")
    probes = [] if args.table_only else args.probe or list(PROBES)
    hours = 1 / 6 if args.quick else args.hours
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="w2s-rel-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        csv = work / "corpus" / "corpus.csv"
        long_file = work / f"long-{hours:g}h.wav"
        short_file = work / "short.wav"
        model = work / "student" / "model.onnx"
        if probes:  # the data, made once per --work
            if not csv.is_file():
                make_corpus(csv.parent, 60 if args.quick else 120)
            if not long_file.is_file() or not long_file.with_suffix(".csv").is_file():
                make_long(long_file, hours * 3600)
            if not short_file.is_file():
                make_long(short_file, 1.0)
            if not model.is_file():
                run = cli("export", "wav2small-tiny", "--out", str(model.parent))
                if run.returncode:
                    print(run.stderr)
                    return 1
        for name in probes:
            scratch = work / name
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir()
            if name == "label-kill":
                probe_label_kill(scratch, csv, [0, 3] if args.quick else [0, 2, 5, 9])
            elif name == "distill-kill":
                labels = scratch / "labels.parquet"
                run = cli("label", "--teacher", "synth", "--audio", str(csv), "--out",
                          str(labels), "--no-progress")  # fmt: skip
                if run.returncode:
                    record("distill: label the corpus", False, last_line(run.stderr))
                else:
                    probe_distill_kill(scratch, csv, labels, [2] if args.quick else [1, 3], 24)
            elif name == "writers":
                probe_two_writers(scratch, long_file, model, csv)
            elif name == "full-disk":
                probe_full_disk(scratch, csv, long_file, model)
            elif name == "long":
                probe_long_files(scratch, long_file, short_file, model)
        results = RESULTS
        if args.work:  # accumulate: the latest result of each probe, in first-seen order
            log = work / "results.json"
            old = json.loads(log.read_text()) if log.is_file() else []
            merged = {p: (p, m, d) for p, m, d in old}
            merged.update({p: (p, m, d) for p, m, d in RESULTS})
            results = list(merged.values())
            log.write_text(json.dumps(results, indent=1))
    text = table(results, work)
    print(f"\n{text}\n\n({time.perf_counter() - t0:.0f} s)")
    if not args.no_doc:
        write_doc(text, args)
        print(f"wrote {DOC}")
    return 0 if all(m != "FAILED" for _, m, _ in RESULTS) else 1


if __name__ == "__main__":
    sys.exit(main())
