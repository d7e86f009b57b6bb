"""The browser page and `wav2small serve`: a real headless chromium computes the timeline.

The browser test needs Playwright (the ``[browser]`` extra), Debian's ``chromium`` and the
onnxruntime-web files (``make web``). It skips when one is missing, unless
``WAV2SMALL_REQUIRE_BROWSER=1`` (set by ``.ci/run``), where a missing piece fails it.
``WAV2SMALL_SCREENSHOTS=DIR`` also saves the page's screenshot there (docs/web-page.png).
"""

import contextlib
import json
import os
import shutil
import subprocess
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from wav2small import LABELS, SAMPLE_RATE
from wav2small.cli import main
from wav2small.export import export_onnx, quantize_int8, read_metadata
from wav2small.infer import read_table, timeline_bounds
from wav2small.models import create_model
from wav2small.serve import check_vendor, make_server, web_root
from wav2small.signals import pseudo_speech, pseudo_speech_set

STEP, CONTEXT = 0.5, 2.0


def _require(what: str, ok: bool) -> None:
    if not ok:
        if os.environ.get("WAV2SMALL_REQUIRE_BROWSER") == "1":
            pytest.fail(f"browser test: {what} is missing (WAV2SMALL_REQUIRE_BROWSER=1)")
        pytest.skip(f"browser test: {what} is missing")


def _export(preset: str, folder: Path, *, int8: bool = False) -> Path:
    """An untrained ``preset`` whose outputs move along speech, exported (fp32 or int8)."""
    torch.manual_seed(3)
    m = create_model(preset)
    m.train()
    clips = pseudo_speech_set(3, seed=5)
    with torch.no_grad():  # BatchNorm statistics of speech: outputs that move along the file
        for clip in clips:
            m(torch.from_numpy(clip)[None])
        m.adv.weight.mul_(50.0)  # random weights barely move: make the timeline visibly move
        m.adv.bias.zero_()
    fp32 = export_onnx(m.eval(), folder / "model.onnx")
    return quantize_int8(fp32, folder / "model.int8.onnx", calibration=clips) if int8 else fp32


#: The models the browser must agree with `predict --timeline` on: wav2small-tiny normalises per
#: utterance (each row's window run on its own), wav2small-paper locally (each token once).
MODELS = {
    "tiny-fp32": ("wav2small-tiny", False),
    "tiny-int8": ("wav2small-tiny", True),
    "paper-fp32": ("wav2small-paper", False),
    "paper-int8": ("wav2small-paper", True),
}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    cache: dict[str, Path] = {}

    def get(key: str) -> Path:
        if key not in cache:
            preset, int8 = MODELS[key]
            cache[key] = _export(preset, tmp_path_factory.mktemp(key, numbered=False), int8=int8)
        return cache[key]

    return get


@pytest.fixture(scope="module")
def model(exports):
    return exports("tiny-fp32")


@pytest.fixture(scope="module")
def wav(tmp_path_factory):
    rng = np.random.default_rng(5)
    x = np.concatenate([pseudo_speech(s, rng=rng) * g for s, g in ((2.2, 1.0), (3.1, 0.3))])
    path = tmp_path_factory.mktemp("audio") / "speech.wav"
    sf.write(path, x, SAMPLE_RATE, subtype="PCM_16")
    return path


@contextlib.contextmanager
def _serving(model: Path):
    try:
        srv = make_server(model, port=0)
    except FileNotFoundError as exc:
        _require(f"onnxruntime-web ({exc})", False)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/"
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def server(model):
    with _serving(model) as url:
        yield url


def test_server_listens_on_localhost_and_serves_the_model(server, model):
    assert server.startswith("http://127.0.0.1:")
    facts = json.loads(urllib.request.urlopen(server + "model.json").read())
    assert facts["labels"] == list(LABELS) and facts["bytes"] == model.stat().st_size
    assert urllib.request.urlopen(server + "model.onnx").read() == model.read_bytes()
    page = urllib.request.urlopen(server).read().decode()
    assert "vendor/ort.wasm.min.js" in page and "app.js" in page
    with urllib.request.urlopen(server + "vendor/ort-wasm-simd-threaded.wasm") as wasm:
        assert wasm.headers["Content-Type"] == "application/wasm"
        assert wasm.read(4) == b"\0asm"
        wasm.read()


def test_serve_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "bad.onnx").write_bytes(b"nope")
    try:
        check_vendor()
    except FileNotFoundError:
        pytest.skip("onnxruntime-web not installed (make web)")
    assert main(["serve", str(tmp_path / "bad.onnx"), "--port", "0"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "serve" in line]
    assert len(err) == 1 and err[0].startswith("wav2small serve: ") and "bad.onnx" in err[0]
    assert main(["serve", str(tmp_path / "x.safetensors"), "--port", "0"]) == 2
    assert "ONNX" in capsys.readouterr().err


def test_check_vendor_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="make web"):
        check_vendor(tmp_path)


def test_js_timeline_mirrors_python(tmp_path):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    sizes, steps = (0, 63, 64, 100, 8000, 8001, 40000), ((64, 64), (8000, 64000), (3000, 500))
    cases = [(n, s, c) for n in sizes for s, c in steps]
    module = json.dumps((web_root() / "timeline.js").as_uri())
    script = tmp_path / "t.mjs"
    # a stream fed in uneven chunks; the model call returns the window's length, first, last sample
    script.write_text(
        f"import {{ timelineBounds, TimelineStream }} from {module};\n"
        f"const cases = {json.dumps(cases)};\n"
        """const out = [];
for (const [n, s, c] of cases) {
  const bounds = timelineBounds(n, s, c);
  const x = Float32Array.from({length: n}, (_, i) => i);
  const run = async (w) => [w.length, w[0] ?? -1, w[w.length - 1] ?? -1];
  const st = new TimelineStream(run, {step: s / 16000, context: c / 16000});
  const rows = [];
  for (let i = 0, k = 1; i < n; i += 37 * k, k = (k % 5) + 1)
    rows.push(...await st.push(x.subarray(i, Math.min(n, i + 37 * k))));
  rows.push(...await st.close());
  out.push({bounds, rows: rows.map((r) => r.values)});
}
console.log(JSON.stringify(out));
"""
    )
    run = subprocess.run([node, str(script)], capture_output=True, text=True, check=True)
    for (n, s, c), got in zip(cases, json.loads(run.stdout), strict=True):
        want = [list(b) for b in timeline_bounds(n, s, c)]
        assert got["bounds"] == want, (n, s, c)
        assert got["rows"] == [[e - b, b, e - 1] for b, e in want], (n, s, c)


def _playwright_chromium():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _require("playwright (pip install 'wav2small[browser]')", False)
    chromium = shutil.which("chromium")
    _require("chromium (apt-get install chromium)", chromium is not None)
    return sync_playwright, chromium


#: Page tests in the fast suite (CI time): each family once, int8 and fp32 each once; the other
#: two (tiny-int8, paper-fp32: ≈ 15 and 22 s) run with the slow tests.
FAST_PAGE = ("tiny-fp32", "paper-int8")


@pytest.mark.browser
@pytest.mark.parametrize(
    "key", [k if k in FAST_PAGE else pytest.param(k, marks=pytest.mark.slow) for k in MODELS]
)
def test_page_in_headless_chromium_equals_predict_timeline(
    key, exports, wav, tmp_path, monkeypatch
):
    """The drawn rows equal `wav2small predict --timeline` within 1e-3.

    int8: onnxruntime-web runs the QDQ graph as its reference semantics (quantise/dequantise
    around float kernels), as native ONNX Runtime does at the BASIC optimisation level; native
    ALL (what predict uses) fuses QLinearConv integer kernels whose results differ (on this
    fixture, whose head is scaled ×50, by up to ~0.08 on AVX2 without VNNI). So int8 rows are
    compared with `predict --timeline` run at the BASIC level; the gap to the default is printed.
    """
    import onnxruntime as ort

    from wav2small import backends

    sync_playwright, chromium = _playwright_chromium()
    model = exports(key)
    int8 = MODELS[key][1]

    def predict_timeline(level=None):
        csv = tmp_path / f"cli-{level}.csv"
        args = ["--timeline", str(STEP), "--context", str(CONTEXT), "--out", str(csv)]
        with monkeypatch.context() as mp:
            if level is not None:
                plain = backends.session_options

                def options(**kwargs):
                    opts = plain(**kwargs)
                    opts.graph_optimization_level = level
                    return opts

                mp.setattr(backends, "session_options", options)
            assert main(["predict", str(model), str(wav), *args]) == 0
        return read_table(csv)

    default = predict_timeline()
    want = predict_timeline(ort.GraphOptimizationLevel.ORT_ENABLE_BASIC) if int8 else default

    with _serving(model) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server)
            page.wait_for_function("window.wav2small && window.wav2small.ready", timeout=60_000)
            page.fill("#step", str(STEP))
            page.fill("#context", str(CONTEXT))
            page.set_input_files("#file", str(wav))
            page.wait_for_function("window.wav2small.done", timeout=120_000)
            state = page.evaluate("window.wav2small")
            with page.expect_download() as download:
                page.click("#csv")
            csv_text = Path(download.value.path()).read_text()
            shot = tmp_path / "web-page.png"
            page.screenshot(path=str(shot), full_page=True)
            speed = page.inner_text("#speed")
            size = page.inner_text("#model-size")
            kind = page.inner_text("#timeline-kind")
            status = page.inner_text("#status")
        finally:
            browser.close()
    assert not errors, errors
    assert "rows over" in status, status  # finished without an error message
    assert shot.stat().st_size > 10_000
    if os.environ.get("WAV2SMALL_SCREENSHOTS") and key in ("tiny-fp32", "paper-fp32"):
        name = "web-page.png" if key == "paper-fp32" else "web-page-utterance.png"
        shutil.copy(shot, Path(os.environ["WAV2SMALL_SCREENSHOTS"]) / name)

    # onnxruntime-web accepts the staged graph: only `signal` is required (norm/pooled optional)
    assert state["inputNames"][0] == "signal"
    local = MODELS[key][0] == "wav2small-paper"
    assert state["timeline"] == ("tokens" if local else "windows")
    assert ("each token once" in kind) == local and ("local" if local else "utterance") in kind
    rows = state["rows"]
    assert [(r["start"], r["end"]) for r in rows] == [(s, e) for _, s, e in want.index.to_list()]
    got = np.array([r["values"] for r in rows])
    diff = np.abs(got - want.to_numpy()).max()
    print(
        f"{key}: browser vs predict --timeline{' (ORT BASIC)' if int8 else ''}: max |diff| "
        f"{diff:.2e} over {got.size} values (vs default predict "
        f"{np.abs(got - default.to_numpy()).max():.2e}); range {np.ptp(got, axis=0).round(3)}; "
        f"{state['msPerSecond']:.2f} ms per audio second"
    )
    assert diff <= 1e-3
    assert np.ptp(got, axis=0).max() > 1e-2  # the values move along the file: a real comparison
    assert state["msPerSecond"] > 0 and float(speed) > 0
    assert size == f"{model.stat().st_size / 1024:.1f} KB"
    lines = csv_text.strip().splitlines()
    assert lines[0] == "file,start,end,arousal,dominance,valence" and len(lines) == len(rows) + 1
    assert np.allclose([float(v) for v in lines[1].split(",")[3:]], got[0], atol=1e-6)


@pytest.mark.browser
def test_token_stream_in_chromium_any_chunking_equals_predict(exports, wav, tmp_path):
    """timeline.js's TokenRunner/WindowPool/TokenTimelineStream in the browser, fed uneven blocks
    with short trunk chunks (overlap recomputed, tokens trimmed and compacted), equal `predict
    --timeline` on a local-normalisation model with the trend pooling (wav2small-paper: its
    windowed trend from prefix sums, its head's `trend` input)."""
    sync_playwright, chromium = _playwright_chromium()
    model = exports("paper-fp32")
    assert "trend" in read_metadata(model)["stages"]
    csv = tmp_path / "cli.csv"
    args = ["--timeline", "0.25", "--context", "1.0", "--out", str(csv)]
    assert main(["predict", str(model), str(wav), *args]) == 0
    want = read_table(csv)
    x, _ = sf.read(wav, dtype="float32")
    with _serving(model) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(server)
            page.wait_for_function("window.wav2small && window.wav2small.ready", timeout=60_000)
            rows = page.evaluate(
                """async (x) => {
  const t = await import("./timeline.js");
  const bytes = new Uint8Array(await (await fetch("model.onnx")).arrayBuffer());
  const meta = t.onnxMetadata(bytes);
  const opts = { executionProviders: ["wasm"] };
  const session = await ort.InferenceSession.create(bytes, opts);
  const heads = meta.stages.split("->")[0].split(",").slice(2);
  const head = await ort.InferenceSession.create(t.withRequiredInputs(bytes, heads), opts);
  const staged = new t.StagedModel(session, meta, { headSession: head });
  const stream = new t.TokenTimelineStream(staged, { step: 0.25, context: 1.0, chunkTokens: 60 });
  const rows = [];
  for (let i = 0, k = 1; i < x.length; i += 997 * k, k = (k % 7) + 1)
    rows.push(...await stream.push(Float32Array.from(x.slice(i, i + 997 * k))));
  rows.push(...await stream.close());
  return rows;
}""",
                x.tolist(),
            )
        finally:
            browser.close()
    assert [(r["start"], r["end"]) for r in rows] == [(s, e) for _, s, e in want.index.to_list()]
    got = np.array([r["values"] for r in rows])
    assert np.abs(got - want.to_numpy()).max() <= 1e-3
    assert np.ptp(got, axis=0).max() > 1e-2


@pytest.mark.browser
@pytest.mark.parametrize("key", ["tiny-fp32", "paper-fp32"])
def test_page_microphone_stream_gives_timeline_rows(key, exports):
    sync_playwright, chromium = _playwright_chromium()
    fake_mic = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
    with _serving(exports(key)) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", *fake_mic])
        try:
            page = browser.new_context(permissions=["microphone"]).new_page()
            page.goto(server)
            page.wait_for_function("window.wav2small && window.wav2small.ready", timeout=60_000)
            page.fill("#step", "0.5")
            page.fill("#context", "1")
            page.click("#mic")
            page.wait_for_function("window.wav2small.rows.length >= 3", timeout=60_000)
            page.click("#mic")  # stop: the last row ends at the end of the stream
            page.wait_for_function("window.wav2small.done", timeout=60_000)
            state = page.evaluate("window.wav2small")
        finally:
            browser.close()
    rows = state["rows"]
    assert state["timeline"] == ("tokens" if key.startswith("paper") else "windows")
    n = round(rows[-1]["end"] * SAMPLE_RATE)
    want = [
        (round(s / SAMPLE_RATE, 6), round(e / SAMPLE_RATE, 6))
        for s, e in timeline_bounds(n, 8000, 16000)
    ]
    assert len(rows) >= 4 and [(r["start"], r["end"]) for r in rows] == want
    assert all(np.isfinite(r["values"]).all() for r in rows)
