// The page: load the model, decode audio to 16 kHz mono, run the timeline, draw it, offer the CSV.
import {
  LABELS, MIN_SAMPLES, SAMPLE_RATE, StagedModel, TimelineStream, TokenTimelineStream, onnxMetadata, reusesTokens,
  withRequiredInputs,
  seconds, timelineBounds, toCsv, toSamples,
} from "./timeline.js";

const COLORS = ["#d62728", "#1f77b4", "#2ca02c"];
const $ = (id) => document.getElementById(id);
// State the browser test reads: the rows exactly as drawn.
const state = (window.wav2small = {
  rows: [], done: false, ready: false, msPerSecond: null, modelBytes: null, timeline: null, inputNames: null,
});
const READ_BLOCK = SAMPLE_RATE; // a file is fed to a token stream in 1 s blocks, as predict reads it

ort.env.wasm.wasmPaths = new URL("vendor/", location.href).href; // absolute: dynamic import
ort.env.wasm.numThreads = 1; // no SharedArrayBuffer needed (no cross-origin isolation)

let session = null;
let staged = null; // the model's stages when its timeline computes each token once
let inputName = null, outputName = null; // of the plain signal → A/D/V call
let order = [0, 1, 2]; // model output index of arousal, dominance, valence
let runMs = 0;

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

// every model call, timed (ms per second of audio)
const timedRun = (s) => ({
  run: async (feeds, fetches) => {
    const t0 = performance.now();
    const out = await s.run(feeds, fetches);
    runMs += performance.now() - t0;
    return out;
  },
});
const timed = { run: (feeds, fetches) => timedRun(session).run(feeds, fetches) };

async function loadModel(bytes, name, labels = null) {
  const meta = onnxMetadata(bytes);
  labels = labels ?? (meta.labels ? meta.labels.split(",") : LABELS);
  session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
  order = LABELS.map((l) => labels.indexOf(l));
  if (order.some((i) => i < 0)) throw new Error(`model outputs ${labels}, expected ${LABELS}`);
  staged = null;
  if (reusesTokens(meta)) {
    // onnxruntime-web refuses feeds of optional inputs: the head runs on a variant whose
    // `pooled` input is required
    const headInputs = meta.stages.split("->")[0].split(",").slice(2); // pooled[, trend]
    const head = await ort.InferenceSession.create(withRequiredInputs(bytes, headInputs), {
      executionProviders: ["wasm"],
    });
    staged = new StagedModel(timed, meta, { order, headSession: timedRun(head) });
  }
  [inputName, outputName] = StagedModel.supports(meta)
    ? [meta.stages.split(",")[0], meta.stages.split("->")[1].split(",")[0]]
    : [session.inputNames[0], session.outputNames[0]];
  state.inputNames = [...session.inputNames];
  state.timeline = staged ? "tokens" : "windows";
  $("timeline-kind").textContent = staged
    ? `each token once (${meta.norm} normalisation)`
    : `model re-run per window${meta.norm ? ` (${meta.norm} normalisation)` : ""}`;
  state.modelBytes = bytes.byteLength;
  $("model-name").textContent = name;
  $("model-size").textContent = `${(bytes.byteLength / 1024).toFixed(1)} KB`;
  state.ready = true;
  status("Ready: drop an audio file or use the microphone.");
}

async function run(window) {
  const feeds = { [inputName]: new ort.Tensor("float32", Float32Array.from(window), [1, window.length]) };
  const out = (await timed.run(feeds, [outputName]))[outputName].data;
  const values = order.map((i) => out[i]);
  if (!values.every(Number.isFinite)) throw new Error("the model returned NaN or Inf");
  return values;
}

function showSpeed(audioSeconds) {
  state.msPerSecond = audioSeconds > 0 ? runMs / audioSeconds : null;
  if (state.msPerSecond !== null) $("speed").textContent = state.msPerSecond.toFixed(2);
}

function draw() {
  const c = $("chart"), g = c.getContext("2d"), rows = state.rows;
  const W = c.width, H = c.height, L = 90, R = 20, T = 20, B = 60;
  g.clearRect(0, 0, W, H);
  g.font = "24px system-ui";
  g.fillStyle = "#444";
  g.strokeStyle = "#ccc";
  // y range: the data's, padded, at least 0.2 wide (a trained model's outputs lie in ~[0, 1])
  const all = rows.length ? rows.flatMap((r) => r.values) : [0, 1];
  const mid = (Math.min(...all) + Math.max(...all)) / 2;
  const half = Math.max(0.1, 0.55 * (Math.max(...all) - Math.min(...all)));
  const lo = mid - half, hi = mid + half;
  const tMax = Math.max(1, ...rows.map((r) => r.end));
  const x = (t) => L + ((W - L - R) * t) / tMax;
  const y = (v) => H - B - ((H - T - B) * (v - lo)) / (hi - lo);
  for (let k = 0; k <= 4; k++) {
    const v = lo + ((hi - lo) * k) / 4;
    g.beginPath(); g.moveTo(L, y(v)); g.lineTo(W - R, y(v)); g.stroke();
    g.fillText(v.toFixed(2), 10, y(v) + 8);
  }
  const ticks = Math.min(10, Math.ceil(tMax));
  for (let k = 0; k <= ticks; k++) {
    const t = (tMax * k) / ticks;
    g.fillText(`${t.toFixed(1)} s`, x(t) - 20, H - 20);
  }
  LABELS.forEach((_, j) => {
    g.strokeStyle = COLORS[j];
    g.lineWidth = 4;
    g.beginPath();
    rows.forEach((r, i) => (i ? g.lineTo : g.moveTo).call(g, x(r.end), y(r.values[j])));
    g.stroke();
    g.lineWidth = 1;
  });
  g.strokeStyle = "#ccc";
}

function addRows(rows) {
  state.rows.push(...rows);
  $("csv").disabled = state.rows.length === 0;
  draw();
}

function reset() {
  state.rows = [];
  state.done = false;
  runMs = 0;
  draw();
}

async function decode(file) {
  // An OfflineAudioContext at 16 kHz decodes (and, for other rates, resamples) to 16 kHz.
  const ctx = new OfflineAudioContext(1, 1, SAMPLE_RATE);
  const audio = await ctx.decodeAudioData(await file.arrayBuffer());
  const mono = new Float32Array(audio.length);
  for (let ch = 0; ch < audio.numberOfChannels; ch++) {
    const data = audio.getChannelData(ch);
    for (let i = 0; i < mono.length; i++) mono[i] += data[i] / audio.numberOfChannels;
  }
  return mono;
}

async function processFile(file) {
  if (!session) return status("Load a model first.", true);
  reset();
  try {
    const x = await decode(file);
    const step = +$("step").value, context = +$("context").value;
    const stepN = toSamples(step, "step");
    const contextN = toSamples(context, "context");
    if (x.length < MIN_SAMPLES) throw new Error(`${file.name}: shorter than one 4 ms frame`);
    const progress = async (e) => {
      showSpeed(Math.min(e, x.length) / SAMPLE_RATE);
      status(`${file.name}: ${seconds(e).toFixed(1)} / ${seconds(x.length).toFixed(1)} s`);
      await new Promise((r) => setTimeout(r)); // let the page draw
    };
    if (staged) {
      // each token once, chunk by chunk, as `wav2small predict --timeline` (file: chunkTokens())
      const stream = new TokenTimelineStream(staged, {
        step, context, name: file.name, chunkTokens: staged.chunkTokens(),
      });
      for (let i = 0; i < x.length; i += READ_BLOCK) {
        addRows(await stream.push(x.subarray(i, i + READ_BLOCK)));
        await progress(Math.min(x.length, i + READ_BLOCK));
      }
      addRows(await stream.close());
    } else {
      for (const [s, e] of timelineBounds(x.length, stepN, contextN)) {
        addRows([{ file: file.name, start: seconds(s), end: seconds(e), values: await run(x.subarray(s, e)) }]);
        await progress(e);
      }
    }
    showSpeed(x.length / SAMPLE_RATE);
    status(`${file.name}: ${state.rows.length} rows over ${seconds(x.length)} s.`);
  } catch (e) {
    status(`${file.name}: ${e.message}`, true);
  }
  state.done = true;
}

let mic = null;
async function toggleMic() {
  if (mic) {
    const m = mic;
    mic = null;
    m.node.disconnect();
    m.source.mediaStream.getTracks().forEach((t) => t.stop());
    await m.chain;
    addRows(await m.stream.close());
    await m.ctx.close();
    $("mic").textContent = "Use the microphone";
    state.done = true;
    return status(`microphone: ${state.rows.length} rows.`);
  }
  if (!session) return status("Load a model first.", true);
  reset();
  const media = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1 } });
  const ctx = new AudioContext({ sampleRate: SAMPLE_RATE });
  const source = ctx.createMediaStreamSource(media);
  const node = ctx.createScriptProcessor(4096, 1, 1);
  const step = +$("step").value, context = +$("context").value;
  const stream = staged
    ? new TokenTimelineStream(staged, { step, context }) // latency: stream.latency seconds
    : new TimelineStream(run, { step, context });
  mic = { ctx, source, node, stream, chain: Promise.resolve(), received: 0 };
  node.onaudioprocess = (ev) => {
    const chunk = Float32Array.from(ev.inputBuffer.getChannelData(0));
    const m = mic;
    if (!m) return;
    m.received += chunk.length;
    m.chain = m.chain.then(async () => {
      addRows(await m.stream.push(chunk));
      showSpeed(m.received / SAMPLE_RATE);
      status(`microphone: ${(m.received / SAMPLE_RATE).toFixed(1)} s`);
    });
  };
  source.connect(node);
  node.connect(ctx.destination);
  $("mic").textContent = "Stop the microphone";
}

function downloadCsv() {
  const blob = new Blob([toCsv(state.rows)], { type: "text/csv" });
  const a = Object.assign(document.createElement("a"), {
    href: URL.createObjectURL(blob),
    download: "timeline.csv",
  });
  a.click();
  URL.revokeObjectURL(a.href);
}

$("file").addEventListener("change", (e) => e.target.files[0] && processFile(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files[0]) processFile(e.dataTransfer.files[0]);
});
$("mic").addEventListener("click", () => toggleMic().catch((e) => status(`microphone: ${e.message}`, true)));
$("csv").addEventListener("click", downloadCsv);
$("model-file").addEventListener("change", async (e) => {
  const f = e.target.files[0];
  if (f) await loadModel(new Uint8Array(await f.arrayBuffer()), f.name).catch((err) => status(err.message, true));
});

(async () => {
  draw();
  const info = await fetch("model.json").then((r) => (r.ok ? r.json() : null)).catch(() => null);
  if (!info) {
    $("model-picker").hidden = false;
    $("model-name").textContent = "none (pick an .onnx file)";
    return status("No model served: pick a wav2small .onnx file.");
  }
  status(`loading ${info.name} …`);
  const bytes = new Uint8Array(await (await fetch(info.url)).arrayBuffer());
  await loadModel(bytes, info.name, info.labels).catch((e) => status(`${info.name}: ${e.message}`, true));
})();
