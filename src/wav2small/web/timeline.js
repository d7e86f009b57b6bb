// wav2small timeline — the ONE place the page defines which windows a timeline runs the model on.
//
// Mirrors wav2small.infer.Predictor.timeline / TimelineStream (definition of 2026-11, per-window
// recomputation): at 16 kHz, with stepN = round(step·16000) and contextN = round(context·16000),
// rows end at t = stepN, 2·stepN, … ≤ n, plus one last row ending at n when n ≥ 64 samples and
// the last end is < n; each row is the model run ONCE on the samples [max(0, t − contextN), t)
// on its own (batch 1, no state carried between rows); times are seconds rounded to 1e-6.
// If Python's timeline changes (e.g. token reuse across windows, local normalisation), change
// timelineBounds/TimelineStream here and keep tests/test_serve.py's browser check passing.

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
