"""Measurement helpers for the benchmarks: ONNX parameter counts, latency, peak RSS.

Timings here are medians of repeated runs on one thread: the machines this project is built on
are shared, and 2-thread timings swing several-fold when another job runs.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from wav2small import SAMPLE_RATE


def onnx_parameters(path: str | Path) -> dict[str, int]:
    """Parameters stored in an ONNX graph: all initializers, and without the float front end."""
    import onnx

    from wav2small.export import _front_end_nodes

    proto = onnx.load(str(path))
    front_inputs = {
        i for n in proto.graph.node if n.name in set(_front_end_nodes(proto)) for i in n.input
    }
    sizes = {t.name: int(np.prod(t.dims)) for t in proto.graph.initializer}
    total = sum(v for v in sizes.values() if v > 1)  # skip scalar constants
    front = sum(v for k, v in sizes.items() if k in front_inputs)
    return {"graph": total, "graph_without_front_end": total - front}


def session(path: str | Path, *, threads: int = 1, arena: bool = True):
    """An onnxruntime CPU session with a fixed thread count (see :mod:`wav2small.backends`)."""
    from wav2small.backends import onnx_session

    return onnx_session(path, threads=threads, mem_arena=arena)


def profile_by_op(path: str | Path, *, seconds: float = 5.0, runs: int = 5) -> dict[str, float]:
    """ONNX Runtime profile of ``runs`` calls on ``seconds``: µs per call by op type, largest first.

    The op types are those of the optimised graph (e.g. ``FusedConv``, ``QLinearConv``,
    ``NhwcMaxPool``), so the profile shows which fusions and layouts ONNX Runtime chose.
    """
    from wav2small.backends import onnx_session, session_options

    with tempfile.TemporaryDirectory() as tmp:
        opts = session_options(threads=1)
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "profile")
        sess = onnx_session(path, options=opts)
        x = np.random.default_rng(0).normal(0, 0.1, (1, int(seconds * SAMPLE_RATE)))
        x = x.astype(np.float32)
        sess.run(None, {"signal": x})
        for _ in range(runs):
            sess.run(None, {"signal": x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    totals: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            totals[op] = totals.get(op, 0.0) + e["dur"] / (runs + 1)
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def median_ms(fn, *, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def onnx_ms_per_clip(
    path: str | Path, *, seconds: float = 5.0, threads: int = 1, repeats: int = 20
) -> float:
    """Median onnxruntime latency (ms) for one clip of ``seconds``."""
    sess = session(path, threads=threads)
    x = np.random.default_rng(0).normal(0, 0.1, (1, int(seconds * SAMPLE_RATE)))
    x = x.astype(np.float32)
    return median_ms(lambda: sess.run(None, {"signal": x}), repeats=repeats)


_RSS_SCRIPT = r"""
import json, sys
import numpy as np
import onnxruntime
from wav2small.backends import onnx_session
def status_kb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])
x = np.random.default_rng(0).normal(0, 0.1, (1, int(float(sys.argv[2]) * 16000))).astype(np.float32)
with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current RSS
    f.write("5")
before = status_kb("VmRSS:")
sess = onnx_session(sys.argv[1], threads=1, mem_arena=sys.argv[3] == "1")
loaded = status_kb("VmHWM:")
sess.run(None, {"signal": x})
print(json.dumps({"before_kb": before, "loaded_kb": loaded, "after_kb": status_kb("VmHWM:")}))
"""


def rss_increase_mb(
    path: str | Path, *, seconds: float = 5.0, arena: bool = False
) -> dict[str, float]:
    """Peak-RSS increase (MB) of loading a model, and of loading and running it once.

    Returns ``{"session": MB after creating the session, "total": MB after one run}``.

    Measured in a fresh process (Linux): its peak RSS (VmHWM, reset through
    ``/proc/self/clear_refs`` once numpy and onnxruntime are imported and the input allocated)
    minus its RSS at that point.
    """
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(path), str(seconds), "1" if arena else "0"],
        capture_output=True,
        text=True,
        check=True,
    )
    rss = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "session": (rss["loaded_kb"] - rss["before_kb"]) / 1024,
        "total": (rss["after_kb"] - rss["before_kb"]) / 1024,
    }


def stream_ratio(figures: dict, row: dict | None = None) -> float:
    """A stream's CPU ÷ one whole-file pass, from bench_predict.py's ``stream`` figures (or one
    of their ``trade-off`` rows): the median of the interleaved rounds' ratios (figures of older
    runs: the ratio of the medians)."""
    row = figures if row is None else row
    if "stream ÷ one pass" in row or "÷ one pass" in row:
        return row.get("stream ÷ one pass", row.get("÷ one pass"))
    return row["stream"] / figures["one pass"]
