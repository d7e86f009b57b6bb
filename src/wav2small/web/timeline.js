// wav2small timeline — the ONE place the page defines what a timeline row computes.
//
// Mirrors wav2small.infer.Predictor.timeline (`wav2small predict MODEL FILE --timeline STEP
// --context C`). Rows: at 16 kHz, with stepN = round(step·16000) and contextN =
// round(context·16000), rows end at t = stepN, 2·stepN, … ≤ n, plus one last row ending at n when
// n ≥ 64 samples and the last end is < n; a row covers [max(0, t − contextN), t); times are
// seconds rounded to 1e-6 (timelineBounds). What a row's values are depends on the model:
//
// * a staged Wav2Small export with LOCAL normalisation (metadata `stages`, `norm=local`, e.g.
//   wav2small-paper): every token is computed once, in the context of the whole signal
//   (TokenRunner: the trunk chunk by chunk with the receptive field as overlap), each row pools
//   the tokens whose start lies in its window (WindowPool: prefix sums of the windowed softmax)
//   and runs only the head (the graph's optional `pooled` input; a trend model's also its
//   `trend` input: the slope of its per-token `trd` map over the window, from prefix sums of
//   x and x·r). Port of wav2small/tokens.py
//   (StagedModel, TokenRunner, WindowPool) and infer.py's TokenTimelineStream, same names.
// * any other model (utterance normalisation, e.g. wav2small-tiny; non-staged exports): the
//   model is run ONCE on the samples of each row's window on its own (TimelineStream).
//
// If Python's timeline changes, change this file and keep tests/test_serve.py's browser check
// (drawn values == `wav2small predict --timeline` within 1e-3) passing.

export const SAMPLE_RATE = 16000;
export const MIN_SAMPLES = 64; // one analysis frame (4 ms); shorter audio has no row

/** Sample bounds [start, end) of the timeline rows of an n-sample signal. */
export function timelineBounds(n, stepN, contextN) {
  const ends = [];
  for (let t = stepN; t <= n; t += stepN) ends.push(t);
  if (n >= MIN_SAMPLES && (ends.length === 0 || ends[ends.length - 1] < n)) ends.push(n);
  return ends.map((t) => [Math.max(0, t - contextN), t]);
}

export function toSamples(seconds, what) {
  const n = Math.max(1, Math.round(seconds * SAMPLE_RATE));
  if (!(seconds > 0) || n < MIN_SAMPLES) throw new Error(`${what} must be at least 4 ms`);
  return n;
}

export const seconds = (n) => Math.round((n / SAMPLE_RATE) * 1e6) / 1e6;

/**
 * Live timeline: push 16 kHz chunks, get rows as soon as their window is complete; close()
 * gives the last row (ending at the end of the stream). Same rows as timelineBounds on the
 * whole signal. `run(window) -> Promise<[a, d, v]>` is the model call.
 */
export class TimelineStream {
  constructor(run, { step, context, name = "<microphone>" }) {
    this.run = run;
    this.stepN = toSamples(step, "step");
    this.contextN = toSamples(context, "context");
    this.name = name;
    this.chunks = [];
    this.first = 0; // absolute index of the first kept sample
    this.total = 0;
    this.nextEnd = this.stepN;
    this.lastEnd = 0;
  }

  _window(start, end) {
    const out = new Float32Array(end - start);
    let pos = this.first;
    for (const c of this.chunks) {
      const a = Math.max(start, pos), b = Math.min(end, pos + c.length);
      if (b > a) out.set(c.subarray(a - pos, b - pos), a - start);
      pos += c.length;
    }
    return out;
  }

  async _emit(end) {
    const start = Math.max(0, end - this.contextN);
    const values = await this.run(this._window(start, end));
    this.lastEnd = end;
    return { file: this.name, start: seconds(start), end: seconds(end), values };
  }

  async push(chunk) {
    this.chunks.push(Float32Array.from(chunk));
    this.total += chunk.length;
    const rows = [];
    while (this.nextEnd <= this.total) {
      rows.push(await this._emit(this.nextEnd));
      this.nextEnd += this.stepN;
    }
    // drop what no later row needs: the next row starts at nextEnd − contextN at the earliest
    let keepFrom = Math.max(0, this.nextEnd - this.stepN - this.contextN);
    while (this.chunks.length && this.first + this.chunks[0].length <= keepFrom) {
      this.first += this.chunks.shift().length;
    }
    return rows;
  }

  async close() {
    if (this.total > this.lastEnd && this.total >= MIN_SAMPLES) return [await this._emit(this.total)];
    return [];
  }
}

/** CSV in wav2small's table layout: file,start,end,arousal,dominance,valence. */
export function toCsv(rows, labels = ["arousal", "dominance", "valence"]) {
  const quote = (s) => (/[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s);
  const lines = [["file", "start", "end", ...labels].join(",")];
  for (const r of rows) lines.push([quote(r.file), r.start, r.end, ...r.values].join(","));
  return lines.join("\n") + "\n";
}

// --- ONNX metadata (the page has no protobuf library: a minimal reader of ModelProto) --------
function readVarint(buf, pos) {
  let value = 0, scale = 1, b;
  do {
    if (pos >= buf.length) throw new Error("not an ONNX file (truncated protobuf)");
    b = buf[pos++];
    value += (b & 0x7f) * scale;
    scale *= 128;
  } while (b & 0x80);
  return [value, pos];
}

/** Fields of a protobuf message: [fieldNumber, wireType, value (number or Uint8Array), raw
 * bytes of the whole field]. */
function protoFields(buf) {
  const out = [];
  let pos = 0, key, len;
  while (pos < buf.length) {
    const at = pos;
    [key, pos] = readVarint(buf, pos);
    const field = Math.floor(key / 8), wire = key % 8;
    let value = null;
    if (wire === 0) {
      [value, pos] = readVarint(buf, pos);
    } else if (wire === 2) {
      [len, pos] = readVarint(buf, pos);
      if (pos + len > buf.length) throw new Error("not an ONNX file (truncated protobuf)");
      value = buf.subarray(pos, pos + len);
      pos += len;
    } else if (wire === 1 || wire === 5) {
      pos += wire === 1 ? 8 : 4;
    } else {
      throw new Error("not an ONNX file (bad protobuf wire type)");
    }
    out.push([field, wire, value, buf.subarray(at, pos)]);
  }
  return out;
}

function concatBytes(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let pos = 0;
  for (const p of parts) {
    out.set(p, pos);
    pos += p.length;
  }
  return out;
}

function varintBytes(n) {
  const out = [];
  do {
    out.push((n % 128) + (n >= 128 ? 128 : 0));
    n = Math.floor(n / 128);
  } while (n > 0);
  return Uint8Array.from(out);
}

/**
 * The ONNX model with the default values (initializers) of the graph inputs `names` removed, so
 * that they become required inputs. onnxruntime-web only accepts feeds named in
 * `session.inputNames`, which omits optional inputs (inputs with a default initializer): the
 * page runs a staged export's head through `pooled` on a session of this variant.
 */
export function withRequiredInputs(bytes, names) {
  const text = new TextDecoder();
  const tensorName = (t) => {
    for (const [f, w, v] of protoFields(t)) if (f === 8 && w === 2) return text.decode(v);
    return "";
  };
  const parts = protoFields(bytes).map(([field, wire, value, raw]) => {
    if (field !== 7 || wire !== 2) return raw; // ModelProto.graph
    const graph = protoFields(value)
      .filter(([f, w, v]) => !(f === 5 && w === 2 && names.includes(tensorName(v)))) // initializer
      .map((g) => g[3]);
    const body = concatBytes(graph);
    return concatBytes([varintBytes(7 * 8 + 2), varintBytes(body.length), body]);
  });
  return concatBytes(parts);
}

/** The metadata_props of an ONNX model (ModelProto field 14) as {key: value}. */
export function onnxMetadata(bytes) {
  const text = new TextDecoder();
  const meta = {};
  for (const [field, wire, value] of protoFields(bytes)) {
    if (field !== 14 || wire !== 2) continue;
    let key = "", val = "";
    for (const [f, w, v] of protoFields(value)) {
      if (w === 2 && f === 1) key = text.decode(v);
      if (w === 2 && f === 2) val = text.decode(v);
    }
    meta[key] = val;
  }
  return meta;
}

// --- tokens.py: the stages of a staged export ---------------------------------------------------
export const LABELS = ["arousal", "dominance", "valence"];
/** Tokens per trunk call for a file (tokens.CHUNK_TOKENS), ≥ OVERLAP_FACTOR × receptive field. */
export const CHUNK_TOKENS = 250;
export const OVERLAP_FACTOR = 4;
/** Tokens per trunk call of a live stream (infer.STREAM_CHUNK_TOKENS), ≥ OVERLAP_FACTOR × receptive field. */
export const STREAM_CHUNK_TOKENS = 50;

/**
 * The stages of a Wav2Small ONNX export (tokens.StagedModel): tokens on `session`, the head on
 * `headSession` (the same model with `pooled` required: withRequiredInputs).
 * `run(feeds, fetches)` as onnxruntime-web's; `order[i]` is the model output column of
 * LABELS[i]; `Tensor` the onnxruntime Tensor class.
 */
export class StagedModel {
  constructor(session, metadata, { order = [0, 1, 2], headSession = session, Tensor = globalThis.ort?.Tensor } = {}) {
    if (!StagedModel.supports(metadata)) throw new Error("not a staged Wav2Small export (no 'stages' metadata)");
    this.session = session;
    this.headSession = headSession; // one that accepts the `pooled` feed (see withRequiredInputs)
    this.order = order;
    this.Tensor = Tensor;
    const [ins, outs] = metadata.stages.split("->");
    [this.inputName, this.normName, this.pooledName] = ins.split(","); // normName may be ""
    [this.outputName, this.linName, this.sofName] = outs.split(",");
    // a trend model's head input and per-token map (models.wav2small.trend_pool), or null
    this.trendName = ins.split(",")[3] ?? null;
    this.trdName = outs.split(",")[3] ?? null;
    this.tokenSamples = Number(metadata.token_samples);
    [this.left, this.right] = metadata.receptive_field.split(",").map(Number);
    this.minSamples = Number(metadata.min_samples ?? this.tokenSamples);
    this.norm = metadata.norm ?? "utterance";
    this.pooledShape = null; // (C, F'), known after the first tokens() call
  }

  static supports(metadata) {
    return "stages" in metadata && "token_samples" in metadata;
  }

  /** Tokens of overlap a chunk recomputes (its receptive field, in tokens). */
  get contextTokens() {
    return Math.ceil((this.left + this.right) / this.tokenSamples);
  }

  chunkTokens(atLeast = CHUNK_TOKENS) {
    return Math.max(atLeast, OVERLAP_FACTOR * this.contextTokens);
  }

  /** {lin, sof[, trd]}: per-token maps (arrays of Float32Array(C·F'); a trend model's trd:
   * Float32Array(K)) of a chunk (norm: [mean, scale]). */
  async tokens(signal, norm = null) {
    const feeds = { [this.inputName]: new this.Tensor("float32", Float32Array.from(signal), [1, signal.length]) };
    if (norm !== null && this.normName) feeds[this.normName] = new this.Tensor("float32", Float32Array.from(norm), [1, 2]);
    const names = [this.linName, this.sofName, ...(this.trdName ? [this.trdName] : [])];
    const out = await this.session.run(feeds, names);
    const [, C, T, F] = out[this.linName].dims;
    this.pooledShape = [C, F];
    const maps = { lin: tokenMaps(out[this.linName].data, C, T, F), sof: tokenMaps(out[this.sofName].data, C, T, F) };
    if (this.trdName) {
      const [, K, , Ft] = out[this.trdName].dims;
      maps.trd = tokenMaps(out[this.trdName].data, K, T, Ft);
    }
    return maps;
  }

  /** A/D/V ([a, d, v] in LABELS order) of pooled maps (Float32Array(C·F') each) and, for a
   * trend model, their trend poolings (Float32Array(K) each). */
  async head(pooled, trend = null) {
    const [C, F] = this.pooledShape, D = C * F;
    const flat = new Float32Array(pooled.length * D);
    pooled.forEach((p, i) => flat.set(p, i * D));
    const feeds = {
      [this.inputName]: new this.Tensor("float32", new Float32Array(this.minSamples), [1, this.minSamples]),
      [this.pooledName]: new this.Tensor("float32", flat, [pooled.length, C, F]),
    };
    if ((trend === null) !== (this.trendName === null)) {
      throw new Error(trend === null ? "a trend model's head needs the trend poolings" : "this model has no trend input");
    }
    if (trend !== null) {
      const K = trend[0].length, tflat = new Float32Array(trend.length * K);
      trend.forEach((t, i) => tflat.set(t, i * K));
      feeds[this.trendName] = new this.Tensor("float32", tflat, [trend.length, K]);
    }
    const out = (await this.headSession.run(feeds, [this.outputName]))[this.outputName];
    const k = out.dims[1];
    // row 0 is the dummy signal's
    return pooled.map((_, i) => this.order.map((j) => out.data[(i + 1) * k + j]));
  }
}

/** (1, C, T, F') row-major data → T maps of (C, F') (numpy's moveaxis(x[0], 1, 0)). */
function tokenMaps(data, C, T, F) {
  const maps = [];
  for (let t = 0; t < T; t++) {
    const m = new Float32Array(C * F);
    for (let c = 0; c < C; c++) m.set(data.subarray((c * T + t) * F, (c * T + t + 1) * F), c * F);
    maps.push(m);
  }
  return maps;
}

/**
 * Compute each token of a signal fed in blocks once, chunk by chunk (tokens.TokenRunner): a chunk
 * computing tokens [k, k1) runs the trunk on samples [k·S − left', (k1 − 1)·S + right) and keeps
 * those tokens; the last chunk ends where the signal ends. push/finish resolve to chunks
 * {first, lin, sof} (a trend model's with trd).
 */
export class TokenRunner {
  constructor(model, { norm = null, chunkTokens = null } = {}) {
    if (model.norm === "utterance" && norm === null) throw new Error("an utterance-normalised model needs the signal's statistics");
    this.model = model;
    this.norm = norm;
    this.chunkTokens = Math.max(1, chunkTokens || model.chunkTokens());
    const s = model.tokenSamples;
    this.leftN = Math.ceil(model.left / s) * s;
    this.buf = new Float32Array(0);
    this.first = 0; // absolute sample index of buf[0] (a multiple of S)
    this.nextToken = 0; // first token not yet computed
    this.samples = 0; // samples received
  }

  async push(block) {
    if (block.length) {
      const buf = new Float32Array(this.buf.length + block.length);
      buf.set(this.buf);
      buf.set(block, this.buf.length);
      this.buf = buf;
      this.samples += block.length;
    }
    const s = this.model.tokenSamples, out = [];
    for (;;) {
      const ready = Math.floor((this.samples - this.model.right) / s) + 1; // tokens computable now
      if (ready - this.nextToken < this.chunkTokens) return out;
      out.push(await this._run(this.nextToken + this.chunkTokens, null));
    }
  }

  async finish() {
    if (this.samples - this.first >= this.model.minSamples) {
      const out = await this._run(null, this.samples);
      if (out.lin.length) return [out];
    }
    return [];
  }

  async _run(k1, end) {
    const s = this.model.tokenSamples, k = this.nextToken;
    const a = Math.max(0, k * s - this.leftN);
    const b = end !== null ? end : (k1 - 1) * s + this.model.right;
    const maps = await this.model.tokens(this.buf.subarray(a - this.first, b - this.first), this.norm);
    const offset = k - Math.floor(a / s), n = maps.lin.length;
    const stop = k1 === null ? n : Math.min(n, k1 - Math.floor(a / s));
    const keep = { first: k };
    for (const [name, m] of Object.entries(maps)) keep[name] = m.slice(offset, stop);
    this.nextToken = k + keep.lin.length;
    const drop = Math.max(0, this.nextToken * s - this.leftN) - this.first;
    if (drop > 0) {
      this.buf = this.buf.slice(drop);
      this.first += drop;
    }
    return keep;
  }
}

/**
 * Attention pooling Σ lin·softmax(sof) over windows of consecutive tokens, each token added once
 * (tokens.WindowPool): float64 prefix sums of exp(sof − M) and lin·exp(sof − M), M a per-element
 * reference raised (sums rescaled) when a sof exceeds it by HEADROOM; a window whose sum is tiny
 * against the prefix sums is pooled directly from the kept tokens. With trd maps (a trend model),
 * trend(windows) gives each window's trend pooling from float64 prefix sums of x and x·r (r the
 * token's row in the kept arrays, an origin that moves when they are compacted).
 */
export const TREND_EPS = 1.0; // as wav2small.models.wav2small.TREND_EPS

/** tokens.trend_of_sums: the trend of n consecutive tokens t0 … from Σx and Σx·(t − t0's origin). */
export function trendOfSums(n, sx, sxr, t0) {
  const out = new Float32Array(sx.length), denom = n * Math.sqrt((n * n - 1) / 12 + TREND_EPS);
  for (let k = 0; k < sx.length; k++) out[k] = (sxr[k] - sx[k] * (t0 + (n - 1) / 2)) / denom;
  return out;
}

export class WindowPool {
  static MIN_RELATIVE = 1e-9;
  static HEADROOM = 50.0;

  constructor() {
    this.first = 0; // absolute index of the first kept token
    this.ref = null; // Float64Array(C·F') reference M
    this.lo = 0; // kept tokens are lin[lo:], sof[lo:]; prefix sums ps[lo:] (one more entry)
    this.lin = [];
    this.sof = [];
    this.ps = [];
    this.pa = [];
    this.trd = null; // a trend model's per-token Float32Array(K), with prefix sums px, pxr
    this.px = [];
    this.pxr = [];
  }

  get end() {
    return this.first + this.lin.length - this.lo;
  }

  add(lin, sof, trd = null) {
    const n = sof.length;
    if (!n) return;
    if (this.ref === null && trd !== null) {
      this.trd = [];
      this.px = [new Float64Array(trd[0].length)];
      this.pxr = [new Float64Array(trd[0].length)];
    }
    if ((trd === null) !== (this.trd === null)) throw new Error("trd maps must be given with every chunk or with none");
    const D = sof[0].length, top = new Float64Array(D).fill(-Infinity);
    for (const t of sof) for (let d = 0; d < D; d++) if (t[d] > top[d]) top[d] = t[d];
    if (this.ref === null) {
      this.ref = top;
      this.ps = [new Float64Array(D)];
      this.pa = [new Float64Array(D)];
    } else if (top.some((v, d) => v > this.ref[d] + WindowPool.HEADROOM)) {
      const next = this.ref.map((v, d) => Math.max(v, top[d]));
      const r = this.ref.map((v, d) => Math.exp(v - next[d]));
      for (let i = this.lo; i < this.ps.length; i++) {
        for (let d = 0; d < D; d++) {
          this.ps[i][d] *= r[d];
          this.pa[i][d] *= r[d];
        }
      }
      this.ref = next;
    }
    for (let t = 0; t < n; t++) this._append(lin[t], sof[t], trd && trd[t]);
  }

  _append(lin, sof, trd = null) {
    const D = sof.length, s0 = this.ps[this.ps.length - 1], a0 = this.pa[this.pa.length - 1];
    const s1 = new Float64Array(D), a1 = new Float64Array(D);
    for (let d = 0; d < D; d++) {
      const e = Math.exp(sof[d] - this.ref[d]);
      s1[d] = s0[d] + e;
      a1[d] = a0[d] + e * lin[d];
    }
    this.lin.push(lin);
    this.sof.push(sof);
    this.ps.push(s1);
    this.pa.push(a1);
    if (trd !== null) {
      const r = this.trd.length, K = trd.length;
      const x0 = this.px[this.px.length - 1], xr0 = this.pxr[this.pxr.length - 1];
      const x1 = new Float64Array(K), xr1 = new Float64Array(K);
      for (let k = 0; k < K; k++) {
        x1[k] = x0[k] + trd[k];
        xr1[k] = xr0[k] + trd[k] * r;
      }
      this.trd.push(trd);
      this.px.push(x1);
      this.pxr.push(xr1);
    }
  }

  /** Forget the tokens before absolute index `first`. */
  trim(first) {
    const drop = Math.min(Math.max(0, first - this.first), this.lin.length - this.lo);
    this.lo += drop;
    this.first += drop;
    if (this.lo > this.lin.length - this.lo) this._compact();
  }

  /** Drop the forgotten tokens; recompute the prefix sums with a fresh reference (as Python's
   * _compact: re-basing by subtraction would keep the rounding error of forgotten terms). */
  _compact() {
    const lin = this.lin.slice(this.lo), sof = this.sof.slice(this.lo);
    const trd = this.trd === null ? null : this.trd.slice(this.lo);
    this.lo = 0;
    this.lin = [];
    this.sof = [];
    if (trd !== null) {
      this.trd = [];
      this.px = [this.px[0].fill(0)];
      this.pxr = [this.pxr[0].fill(0)];
    }
    if (!sof.length) {
      this.ps = [this.ps[this.ps.length - 1].fill(0)];
      this.pa = [this.pa[this.pa.length - 1].fill(0)];
      return;
    }
    const D = sof[0].length;
    this.ref = new Float64Array(D).fill(-Infinity);
    for (const t of sof) for (let d = 0; d < D; d++) if (t[d] > this.ref[d]) this.ref[d] = t[d];
    this.ps = [new Float64Array(D)];
    this.pa = [new Float64Array(D)];
    for (let t = 0; t < sof.length; t++) this._append(lin[t], sof[t], trd && trd[t]);
  }

  /** Trend poolings (Float32Array(K) each) of token windows [j0, j1), or null without trd. */
  trend(windows) {
    if (this.trd === null) return null;
    return windows.map(([j0, j1]) => {
      const i0 = j0 - this.first + this.lo, i1 = j1 - this.first + this.lo;
      if (i0 < this.lo || i1 > this.lin.length || i1 <= i0) throw new Error("window outside the kept tokens");
      const K = this.px[i1].length, sx = new Float64Array(K), sxr = new Float64Array(K);
      for (let k = 0; k < K; k++) {
        sx[k] = this.px[i1][k] - this.px[i0][k];
        sxr[k] = this.pxr[i1][k] - this.pxr[i0][k];
      }
      return trendOfSums(i1 - i0, sx, sxr, i0);
    });
  }

  /** Pooled maps (Float32Array(C·F') each) of token windows [j0, j1) (absolute, non-empty). */
  pool(windows) {
    return windows.map(([j0, j1]) => {
      const i0 = j0 - this.first + this.lo, i1 = j1 - this.first + this.lo;
      if (this.ref === null || i0 < this.lo || i1 > this.lin.length || i1 <= i0) throw new Error("window outside the kept tokens");
      const S1 = this.ps[i1], S0 = this.ps[i0], A1 = this.pa[i1], A0 = this.pa[i0];
      const D = S1.length, out = new Float32Array(D);
      let bad = false;
      for (let d = 0; d < D; d++) {
        const s = S1[d] - S0[d];
        out[d] = (A1[d] - A0[d]) / (s > 0 ? s : 1.0);
        if (s <= WindowPool.MIN_RELATIVE * Math.abs(S1[d])) bad = true;
      }
      if (bad) { // precision fallback: this window on its own
        for (let d = 0; d < D; d++) {
          let m = -Infinity, se = 0, sa = 0;
          for (let i = i0; i < i1; i++) m = Math.max(m, this.sof[i][d]);
          for (let i = i0; i < i1; i++) {
            const e = Math.exp(this.sof[i][d] - m);
            se += e;
            sa += e * this.lin[i][d];
          }
          out[d] = sa / se;
        }
      }
      return out;
    });
  }
}

/**
 * A timeline stream that computes every token once (infer.TokenTimelineStream): push 16 kHz
 * chunks, get the rows completed; close() gives the rest (the last row ends at the end of the
 * stream). A row's values: the head on the pooled tokens whose start lies in its window.
 * Same rows as `wav2small predict --timeline` whatever the chunking (up to float rounding).
 */
export class TokenTimelineStream {
  constructor(staged, { step, context, name = "<microphone>", norm = null, chunkTokens = null } = {}) {
    this.staged = staged;
    this.stepN = toSamples(step, "step");
    this.contextN = toSamples(context, "context");
    this.name = name;
    if (chunkTokens === null) chunkTokens = staged.chunkTokens(STREAM_CHUNK_TOKENS);
    this.runner = new TokenRunner(staged, { norm, chunkTokens });
    this.pool = new WindowPool();
    this.total = 0;
    this.nextEnd = this.stepN;
    this.lastEnd = 0;
  }

  /** Most seconds between the end of a row's window and the push that returns it. */
  get latency() {
    const s = this.staged.tokenSamples;
    return (this.runner.chunkTokens * s + this.staged.right - s) / SAMPLE_RATE;
  }

  async push(chunk) {
    this.total += chunk.length;
    for (const { lin, sof, trd } of await this.runner.push(Float32Array.from(chunk))) this.pool.add(lin, sof, trd ?? null);
    return this._emitReady(false);
  }

  async close() {
    for (const { lin, sof, trd } of await this.runner.finish()) this.pool.add(lin, sof, trd ?? null);
    return this._emitReady(true);
  }

  async _emitReady(final) {
    const s = this.staged.tokenSamples, pool = this.pool, ends = [], rows = [];
    while (this.nextEnd <= this.total && (final || Math.floor(this.nextEnd / s) <= pool.end)) {
      ends.push(this.nextEnd);
      this.nextEnd += this.stepN;
    }
    const last = ends.length ? ends[ends.length - 1] : this.lastEnd;
    if (final && this.total > last && this.total >= MIN_SAMPLES) ends.push(this.total);
    if (ends.length && pool.end > pool.first) {
      const windows = ends.map((end) => {
        // tokens whose start lies in the window
        let j1 = final && end === this.total ? pool.end : Math.floor(end / s);
        j1 = Math.min(j1, pool.end);
        const j0 = Math.min(Math.ceil(Math.max(0, end - this.contextN) / s), j1 - 1);
        return [Math.max(j0, 0), j1];
      });
      const values = await this.staged.head(pool.pool(windows), pool.trend(windows));
      ends.forEach((e, i) => {
        if (!values[i].every(Number.isFinite)) throw new Error("the model returned NaN or Inf");
        rows.push({ file: this.name, start: seconds(Math.max(0, e - this.contextN)), end: seconds(e), values: values[i] });
      });
      this.lastEnd = ends[ends.length - 1];
    }
    // keep the tokens of the next row, or of a last row ending before it
    const start = Math.max(0, this.nextEnd - this.stepN - this.contextN);
    pool.trim(Math.floor(start / s) - 1);
    return rows;
  }
}

/** Whether a timeline of this model computes each token once (a staged, locally normalised
 * export), as Predictor.timeline decides; otherwise each row's window is run on its own. */
export function reusesTokens(metadata) {
  return StagedModel.supports(metadata) && (metadata.norm ?? "utterance") !== "utterance";
}
