"""Token-level inference for Wav2Small-family ONNX models: chunked, online, computed once.

A Wav2Small export (:class:`wav2small.models.wav2small.StagedExport`) is one ONNX graph with the
plain ``signal → adv`` path, two optional inputs (``norm`` statistics, extra ``pooled`` maps for
the head) and the per-token attention maps ``lin``/``sof`` as extra outputs; its metadata gives
the token geometry (``token_samples``, ``receptive_field``) and the normalisation (``norm``).
This module (numpy + onnxruntime, no torch) builds on that:

* :class:`StagedModel` — run the token stages on a chunk, or the head on pooled maps (an F' = 1
  head in numpy: :class:`QuadraticHead`);
* :class:`TokenRunner` — feed samples in blocks of any size; it runs the trunk chunk by chunk
  with the receptive field as overlap and yields each token once, exactly as one pass over the
  whole signal computes it (given the same normalisation statistics);
* :class:`OnlinePool` — the attention pooling ``Σ_t lin·softmax_t(sof)`` accumulated over
  chunks (running max and sums in float64): the whole-file A/D/V in bounded memory;
* :class:`WindowPool` — the same pooling over sliding windows of tokens (prefix sums,
  :func:`prefix_sums`), for timelines and streams that compute every token once;
* :func:`signal_stats` / :class:`StatsAccumulator` — the per-utterance mean and scale from
  blocks (the first pass of a file when ``norm == "utterance"``).

Exactness: a token depends on samples ``[t·S − left, t·S + right)`` only (with fixed statistics),
so chunking is exact up to float rounding; ``tests/test_tokens.py`` checks chunked == one pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from wav2small import LABELS

#: Tokens computed per trunk call by default (1 s of audio), at least OVERLAP_FACTOR × the
#: receptive field. ONNX Runtime's working set grows with a call's length; the per-call overhead
#: and the overlap's share shrink with it. Measured peak RSS of predict() on 5 s above a loaded
#: wav2small-paper (released trunk, 13 tokens of overlap), int8 / fp32: 500 tokens 12.4 / 7.6
#: MB, 250 tokens 7.4 / 5.3 MB, 125 tokens 4.3 / 3.2 MB.
CHUNK_TOKENS = 250
#: A chunk is at least this many times the receptive field (recomputed overlap ≤ 1 / factor).
OVERLAP_FACTOR = 4
NORM_EPS = 1e-7  # as wav2small.frontend.NORM_EPS (kept here: this module imports no torch)
TREND_EPS = 1.0  # as wav2small.models.wav2small.TREND_EPS


def trend_of_sums(n: np.ndarray, sx: np.ndarray, sxt: np.ndarray, t0: np.ndarray) -> np.ndarray:
    """The trend pooling of ``n`` consecutive tokens from their sums (float64).

    ``sx = Σ x`` and ``sxt = Σ x·(t − t0)`` over tokens ``t = t0 … t0 + n − 1`` (``t0`` any
    origin; a near one keeps the sums small): ``cov(x, t) / sqrt(var(t) + TREND_EPS)`` with
    ``var(t) = (n² − 1) / 12``, as ``models.wav2small.trend_pool`` computes over valid tokens.
    Broadcasts ``n``/``t0`` (windows) against the channels of ``sx``/``sxt`` (windows, K).
    """
    n = np.asarray(n, np.float64)
    # per window: the mean token index and 1 / (n·sqrt(var(t) + eps)); then 3 passes over (·, K)
    center = (np.asarray(t0, np.float64) + (n - 1) / 2)[..., None]
    scale = (1 / (n * np.sqrt((n * n - 1) / 12 + TREND_EPS)))[..., None]
    out = np.multiply(sx, center)
    np.subtract(sxt, out, out=out)
    out *= scale
    return out


class StagedModel:
    """The stages of a Wav2Small ONNX export on one ONNX Runtime session.

    Args:
        session: an :class:`onnxruntime.InferenceSession` of a staged export.
        metadata: its ``metadata_props``.
        order: column indices putting the model's outputs in LABELS order.

    Raises:
        ValueError: the model is not a staged export (see :meth:`supports`).
    """

    def __init__(self, session, metadata: dict[str, str], order: list[int] | None = None) -> None:
        if not self.supports(metadata):
            raise ValueError("not a staged Wav2Small export (no 'stages' metadata)")
        self.session = session
        self.order = list(range(len(LABELS))) if order is None else list(order)
        ins, outs = metadata["stages"].split("->")
        ins, outs = ins.split(","), outs.split(",")
        self.input_name, self.norm_name, self.pooled_name = ins[:3]  # norm may be ""
        self.output_name, self.lin_name, self.sof_name = outs[:3]
        # a trend model's head input and per-token map (models.wav2small.trend_pool), or None
        self.trend_name = ins[3] if len(ins) > 3 else None
        self.trd_name = outs[3] if len(outs) > 3 else None
        self.token_samples = int(metadata["token_samples"])
        self.left, self.right = map(int, metadata["receptive_field"].split(","))
        self.min_samples = int(metadata.get("min_samples", self.token_samples))
        self.norm = metadata.get("norm", "utterance")
        self._dummy = np.zeros((1, self.min_samples), np.float32)
        self._quadratic: QuadraticHead | bool | None = None  # head()'s numpy form, once read

    @property
    def context_tokens(self) -> int:
        """Tokens of overlap a chunk recomputes (its receptive field, in tokens)."""
        return -(-(self.left + self.right) // self.token_samples)

    def chunk_tokens(self, at_least: int = CHUNK_TOKENS) -> int:
        """Tokens per trunk call: ``at_least``, and ≥ OVERLAP_FACTOR × the receptive field."""
        return max(at_least, OVERLAP_FACTOR * self.context_tokens)

    @staticmethod
    def supports(metadata: dict[str, str]) -> bool:
        """Whether a model's metadata describes a staged export."""
        return "stages" in metadata and "token_samples" in metadata

    def tokens(self, signal: np.ndarray, norm: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """The per-token maps of a 1-D chunk (normalised with ``norm`` if given): (lin, sof),
        each (C, tokens, F'), and for a trend model its ``trd`` (K, tokens, 1) third."""
        feeds = {self.input_name: np.ascontiguousarray(signal, np.float32)[None, :]}
        if norm is not None and self.norm_name:
            feeds[self.norm_name] = np.asarray(norm, np.float32).reshape(1, 2)
        names = [self.lin_name, self.sof_name, *([self.trd_name] if self.trd_name else [])]
        return tuple(m[0] for m in self.session.run(names, feeds))

    def head(self, pooled: np.ndarray, trend: np.ndarray | None = None) -> np.ndarray:
        """A/D/V (P, 3) in LABELS order of pooled maps (P, C, F') and, for a trend model, their
        trend poolings (P, K).

        A head that is a quadratic form of the pooled vector (F' = 1, no hidden layer: see
        :class:`QuadraticHead`) runs in numpy, other heads in ONNX Runtime (:meth:`onnx_head`).
        """
        if (trend is None) != (self.trend_name is None):
            raise ValueError(
                "a trend model's head needs the trend poolings"
                if trend is None
                else "this model has no trend input"
            )
        if pooled.shape[2] == 1:
            if self._quadratic is None:  # first call: read the head's form off the model
                n_trend = 0 if trend is None else trend.shape[1]
                self._quadratic = QuadraticHead.fit(self, pooled.shape[1], n_trend) or False
            if self._quadratic:
                return self._quadratic(pooled[:, :, 0], trend)
        return self.onnx_head(pooled, trend)

    def onnx_head(self, pooled: np.ndarray, trend: np.ndarray | None = None) -> np.ndarray:
        """:meth:`head` run by ONNX Runtime: the graph on a dummy signal plus ``pooled`` (and
        ``trend``) as extra rows."""
        feeds = {
            self.input_name: self._dummy,
            self.pooled_name: np.ascontiguousarray(pooled, np.float32),
        }
        if trend is not None:
            feeds[self.trend_name] = np.ascontiguousarray(trend, np.float32)
        out = self.session.run([self.output_name], feeds)[0]
        return out[1:, self.order]  # row 0 is the dummy signal's


class QuadraticHead:
    """A Wav2Small head of F' = 1 maps evaluated in numpy: ``b + L·z + zᵀ·S·z``, ``z = [p ; t]``.

    The head of a pitch-trunk export (``models.wav2small.pooled_linear``: one Linear on
    ``[p ; p·pᵀ ; t]``, or on ``[z ; z·zᵀ]`` for a ``trend_gram`` model; no hidden layer) is,
    per output, a quadratic form of the pooled vector ``p`` (C,) and the trend poolings ``t``
    (K,) together (without ``trend_gram`` the ``t`` rows of ``S`` are zero). :meth:`fit` reads
    its coefficients off the model itself — one ONNX Runtime call on probe inputs (0, ±e_c,
    ±(e_c ± e_d) over the C + K entries of ``z``), so they are the weights the graph uses, fp32
    or int8 — and checks the form on random inputs. A timeline then runs its head for every row
    as two small matrix products instead of an ONNX Runtime call (its per-call cost runs the
    graph on a dummy signal).

    Args:
        bias: (O,) ``b``.
        linear: (O, N) ``L``, N = C + K.
        quad: (O, N, N) symmetric ``S``.
        n_trend: K, the trailing entries of ``z`` that are trend poolings (0: no trend input).
    """

    #: Largest |numpy − ONNX Runtime| accepted by :meth:`fit`'s check, relative to the largest
    #: |output| (at least 1), on random inputs: float32 rounding is ≈ 1e-7.
    CHECK_TOL = 1e-5
    #: Random inputs of that check.
    CHECK_ROWS = 64

    def __init__(
        self, bias: np.ndarray, linear: np.ndarray, quad: np.ndarray, n_trend: int = 0
    ) -> None:
        n_out, n = linear.shape
        self.bias = np.asarray(bias, np.float32)
        self.n_trend = n_trend
        # z @ weights: column o·N + c is Σ_d S[o, c, d]·z_d, the last O columns L·z
        self.weights = np.zeros((n, n_out * n + n_out), np.float32)
        self.weights[:, : n_out * n] = np.asarray(quad).transpose(2, 0, 1).reshape(n, n_out * n)
        self.weights[:, n_out * n :] = np.asarray(linear).T

    #: Rows per matrix product: OpenBLAS runs a larger single product on every core, which on a
    #: busy 2-core machine cost 40× the CPU time of 1,364 rows (measured: 6 ms instead of 0.15).
    BLOCK_ROWS = 128

    def __call__(self, p: np.ndarray, t: np.ndarray | None = None) -> np.ndarray:
        """Outputs (R, O) of pooled vectors ``p`` (R, C) and trend poolings ``t`` (R, K)."""
        rows, c = p.shape
        n_out, n, b = len(self.bias), len(self.weights), self.BLOCK_ROWS
        x = np.zeros((-(-rows // b) * b, n), np.float32)
        x[:rows, :c] = p
        if self.n_trend:
            x[:rows, c:] = t
        # one small product per block of rows (numpy's matmul loops over the stacked blocks)
        z = np.matmul(x.reshape(-1, b, n), self.weights).reshape(len(x), -1)[:rows]
        out = np.einsum("ron,rn->ro", z[:, : n_out * n].reshape(rows, n_out, n), x[:rows])
        out += z[:, n_out * n :]
        out += self.bias
        return out

    @classmethod
    def fit(cls, model: StagedModel, n_channels: int, n_trend: int = 0) -> QuadraticHead | None:
        """The numpy form of ``model``'s head (``model.onnx_head``) for C = ``n_channels``, F' = 1
        and K = ``n_trend``, or None when the head is not of this form (a hidden layer)."""
        k = n_trend if model.trend_name else 0
        n = n_channels + k
        eye = np.eye(n)
        iu, ju = np.triu_indices(n, 1)
        plus, minus = eye[iu] + eye[ju], eye[iu] - eye[ju]
        z = np.concatenate([np.zeros((1, n)), eye, -eye, plus, -plus, minus, -minus])
        f = cls._onnx(model, z, n_channels, k).astype(np.float64)
        b, (fp, fm) = f[0], f[1 : 1 + 2 * n].reshape(2, n, -1)
        cross = f[1 + 2 * n :].reshape(4, len(iu), -1)
        quad = np.zeros((f.shape[1], n, n))
        quad[:, np.arange(n), np.arange(n)] = ((fp + fm) / 2 - b).T
        quad[:, iu, ju] = quad[:, ju, iu] = ((cross[0] + cross[1] - cross[2] - cross[3]) / 8).T
        head = cls(b, ((fp - fm) / 2).T, quad, k)
        z = np.random.default_rng(0).standard_normal((cls.CHECK_ROWS, n))
        ref = cls._onnx(model, z, n_channels, k)
        got = head(z[:, :n_channels], z[:, n_channels:] if k else None)
        if not np.abs(got - ref).max() <= cls.CHECK_TOL * max(1.0, np.abs(ref).max()):
            return None
        return head

    @staticmethod
    def _onnx(model: StagedModel, z: np.ndarray, c: int, k: int) -> np.ndarray:
        """``model.onnx_head`` of rows ``z = [p ; t]`` (R, C + K)."""
        return model.onnx_head(z[:, :c, None], z[:, c:] if k else None)


# --- normalisation statistics ------------------------------------------------------------------
class StatsAccumulator:
    """Mean and scale ``sqrt(var + 1e-7)`` of a signal seen in blocks (Chan's merge, float64)."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, block: np.ndarray) -> None:
        """Add the samples of one block."""
        if not len(block):
            return
        b = np.asarray(block, np.float64)
        nb, mb = len(b), float(b.mean())
        m2b = float(((b - mb) ** 2).sum())
        n = self.n + nb
        delta = mb - self.mean
        self.mean += delta * nb / n
        self.m2 += m2b + delta * delta * self.n * nb / n
        self.n = n

    def norm(self) -> np.ndarray:
        """(mean, scale) as float32 (2,), the ``norm`` input of a staged export."""
        if not self.n:
            raise ValueError("no samples")
        return np.array([self.mean, math.sqrt(self.m2 / self.n + NORM_EPS)], np.float32)


def signal_stats(blocks: Iterable[np.ndarray]) -> np.ndarray:
    """(mean, scale) of the concatenation of ``blocks`` (see :class:`StatsAccumulator`)."""
    acc = StatsAccumulator()
    for b in blocks:
        acc.add(b)
    return acc.norm()


# --- chunked tokens ----------------------------------------------------------------------------
class SampleBuffer:
    """The recent samples of a stream: append blocks, read a span, forget a prefix.

    Appending copies the block into spare capacity (amortised O(block), not O(kept) as a
    concatenation per block would be: a live stream appends 20 ms at a time to seconds of kept
    audio). Indices are absolute sample positions since the stream began.
    """

    def __init__(self) -> None:
        self._data = np.zeros(0, np.float32)
        self._lo = self._hi = 0  # kept samples are _data[_lo:_hi]
        self.first = 0  # absolute index of the first kept sample

    @property
    def end(self) -> int:
        """Absolute index after the last sample appended."""
        return self.first + self._hi - self._lo

    def append(self, block: np.ndarray) -> None:
        """Append samples (copied, as float32)."""
        n = len(block)
        if self._hi + n > len(self._data):
            kept = self._hi - self._lo
            if kept + n > len(self._data) // 2:  # grow: at most half full after the move
                data = np.zeros(2 * (kept + n), np.float32)
            else:
                data = self._data
            data[:kept] = self._data[self._lo : self._hi]
            self._data, self._lo, self._hi = data, 0, kept
        self._data[self._hi : self._hi + n] = block
        self._hi += n

    def view(self, start: int, stop: int) -> np.ndarray:
        """The kept samples ``[start, stop)`` (absolute; a view, valid until the next append)."""
        if start < self.first or stop > self.end or stop < start:
            raise ValueError(f"samples [{start}, {stop}) not in [{self.first}, {self.end})")
        return self._data[self._lo + start - self.first : self._lo + stop - self.first]

    def forget(self, before: int) -> None:
        """Forget the samples before absolute index ``before``."""
        drop = min(max(0, before - self.first), self._hi - self._lo)
        self._lo += drop
        self.first += drop


_NO_CHUNKS: tuple = ()  # what most pushes of a live stream return


class TokenRunner:
    """Compute each token of a signal fed in blocks once, chunk by chunk, exactly.

    Token ``t`` needs samples ``[t·S − left, t·S + right)``; a chunk computing tokens
    ``[k, k1)`` runs the trunk on samples ``[k·S − left', (k1 − 1)·S + right)`` (``left'``:
    ``left`` rounded up to whole tokens, so the chunk's frame grid is the signal's) and keeps
    those tokens; the file's first and last chunks start and end where the signal does, as one
    pass would. Memory: the last ``left' + chunk`` samples.

    Args:
        model: the staged model.
        norm: (mean, scale) for ``norm == "utterance"`` models (the whole signal's for results
            equal to one pass); ignored by ``"local"`` models.
        chunk_tokens: tokens per trunk call (the last may be longer or shorter); default
            :meth:`StagedModel.chunk_tokens`.
    """

    def __init__(
        self,
        model: StagedModel,
        *,
        norm: np.ndarray | None = None,
        chunk_tokens: int | None = None,
    ) -> None:
        if model.norm == "utterance" and norm is None:
            raise ValueError("an utterance-normalised model needs the signal's statistics")
        self.model, self.norm = model, norm
        self.chunk_tokens = max(1, int(chunk_tokens or model.chunk_tokens()))
        s = model.token_samples
        self.left_n = -(-model.left // s) * s
        self._buf = SampleBuffer()
        self.next_token = 0  # first token not yet computed
        self.samples = 0  # samples received
        #: Samples received after which the next chunk is computable (a push reaching it
        #: returns that chunk).
        self.due = (self.chunk_tokens - 1) * s + model.right

    def push(self, block: np.ndarray) -> Sequence[tuple]:
        """Add samples; return ``(first_token, lin, sof)`` (a trend model: ``…, trd)``) for every
        chunk that became complete (most pushes of a live stream: none)."""
        if len(block):
            self._buf.append(block)
            self.samples += len(block)
        if self.samples < self.due:  # most pushes of a live stream
            return _NO_CHUNKS
        out = []
        while self.samples >= self.due:  # the chunk's last token is computable
            out.append(self._run(self.next_token + self.chunk_tokens, end=None))
        return out

    def finish(self) -> Iterator[tuple]:
        """End of signal: yield the remaining tokens (the chunk ends where the signal ends)."""
        if self.samples - self._buf.first >= self.model.min_samples:
            out = self._run(None, end=self.samples)
            if out[1].shape[1]:
                yield out

    def _run(self, k1: int | None, *, end: int | None) -> tuple:
        s, k = self.model.token_samples, self.next_token
        a = max(0, k * s - self.left_n)
        b = end if end is not None else (k1 - 1) * s + self.model.right
        maps = self.model.tokens(self._buf.view(a, b), self.norm)
        offset = k - a // s
        stop = None if k1 is None else k1 - a // s
        maps = tuple(m[:, offset:stop] for m in maps)
        self.next_token = k + maps[0].shape[1]
        self.due = (self.next_token + self.chunk_tokens - 1) * s + self.model.right
        self._buf.forget(self.next_token * s - self.left_n)
        return (k, *maps)


def iter_tokens(
    model: StagedModel,
    blocks: Iterable[np.ndarray],
    *,
    norm: np.ndarray | None = None,
    chunk_tokens: int | None = None,
) -> Iterator[tuple]:
    """All tokens of the concatenated ``blocks``: ``(first_token, lin, sof[, trd])`` per chunk."""
    runner = TokenRunner(model, norm=norm, chunk_tokens=chunk_tokens)
    for block in blocks:
        yield from runner.push(block)
    yield from runner.finish()


# --- pooling -----------------------------------------------------------------------------------
class OnlinePool:
    """``Σ_t lin·softmax_t(sof)`` over tokens added chunk by chunk (float64, running max), and
    for a trend model the trend pooling of ``trd`` (running ``Σx`` and ``Σx·t``, float64)."""

    def __init__(self) -> None:
        self.m = self.s = self.a = None
        self.sx = self.sxt = None
        self.tokens = 0

    def add(self, lin: np.ndarray, sof: np.ndarray, trd: np.ndarray | None = None) -> None:
        """Add the tokens of one chunk: (C, T, F') maps, and a trend model's (K, T, 1) ``trd``."""
        if not sof.shape[1]:
            return
        if trd is not None:
            x = trd[..., 0].astype(np.float64)  # (K, T)
            t = self.tokens + np.arange(x.shape[1], dtype=np.float64)
            sx, sxt = x.sum(1), x @ t
            self.sx = sx if self.sx is None else self.sx + sx
            self.sxt = sxt if self.sxt is None else self.sxt + sxt
        sof64 = sof.astype(np.float64)
        m = sof64.max(1)
        if self.m is not None:
            m = np.maximum(m, self.m)
        e = np.exp(sof64 - m[:, None, :])
        s, a = e.sum(1), (e * lin).sum(1)
        if self.m is not None:
            r = np.exp(self.m - m)
            s, a = s + self.s * r, a + self.a * r
        self.m, self.s, self.a = m, s, a
        self.tokens += sof.shape[1]

    def pooled(self) -> np.ndarray:
        """The pooled map (C, F')."""
        if self.m is None:
            raise ValueError("no tokens")
        return (self.a / self.s).astype(np.float32)

    def trend(self) -> np.ndarray | None:
        """The trend pooling (K,) of the ``trd`` maps added, or None (no ``trd`` given)."""
        if self.sx is None:
            return None
        return trend_of_sums(self.tokens, self.sx, self.sxt, 0).astype(np.float32)


def prefix_sums(out: np.ndarray, carry: np.ndarray | float = 0.0) -> None:
    """In place along axis 0 of a C-contiguous (n, W) float64 array: ``out[i] ← carry + out[0] +
    … + out[i]``.

    ``np.cumsum`` runs one scalar dependency chain per column (≈ 4 ns an element here). This adds
    whole rows instead: the running sum inside blocks of :data:`SCAN_BLOCK` rows (one vectorised
    add per row of a block, over all blocks at once), then the blocks' offsets: ≈ 4× faster on a
    chunk of tokens. Float64; the order of the additions differs from a sequential sum only by
    rounding.
    """
    n, b = len(out), SCAN_BLOCK
    m = n - n % b
    if m:
        v = out[:m].reshape(m // b, b, -1)
        for j in range(1, b):
            v[:, j] += v[:, j - 1]
        offsets = np.empty_like(v[:, -1])
        offsets[0] = carry
        np.cumsum(v[:-1, -1], 0, out=offsets[1:])
        offsets[1:] += carry
        v += offsets[:, None, :]
    if m < n:
        tail = out[m:]
        np.cumsum(tail, 0, out=tail)
        tail += out[m - 1] if m else carry


def _even_step(idx: np.ndarray) -> int | None:
    """The step of ``idx`` (≥ 1 integers) when it is ``a, a + step, a + 2·step, …`` with step ≥ 1,
    else None."""
    if len(idx) < 2:
        return 1 if len(idx) else None
    step = int(idx[1] - idx[0])
    if step < 1 or int(idx[-1] - idx[0]) != step * (len(idx) - 1):
        return None
    return step if len(idx) == 2 or (np.diff(idx) == step).all() else None


#: Rows per block of :func:`prefix_sums` (16–32 measured best on a chunk of 1,364 tokens).
SCAN_BLOCK = 16


class WindowPool:
    """Attention pooling over windows of consecutive tokens, each token added once.

    Tokens are appended in order (:meth:`add`); :meth:`pools` gives the pooled maps of windows
    ``[j0, j1)`` of absolute token indices as differences of running prefix sums of
    ``exp(sof − M)`` and ``lin·exp(sof − M)`` (float64; ``M`` a per-channel/band reference,
    raised with the sums rescaled when a ``sof`` exceeds it by :attr:`HEADROOM`), so adding a
    token and pooling a window each cost O(C·F') whatever the window's length. A window whose
    sum is so small against the prefix sums that their difference would lose precision is
    pooled directly from the kept tokens. :meth:`trim` forgets tokens before an index.

    For a trend model (``trd`` maps given to :meth:`add`), :meth:`pools` also gives each window's
    trend pooling from prefix sums of ``x`` and ``x·r`` (float64; ``r`` the buffer row, an origin
    that moves with the kept tokens, so the sums stay small however long the stream). All four
    prefix sums are the columns of one array, computed in one :func:`prefix_sums` pass and read
    with one gather per window end.
    """

    #: A window whose exp-sum is below this fraction of the prefix sum is pooled directly.
    MIN_RELATIVE = 1e-9
    #: How far ``sof`` may exceed the reference before the sums are rescaled (float64 holds
    #: e^50 · 1e9 tokens easily; rescaling at every new maximum would cost O(kept) per chunk).
    HEADROOM = 50.0
    #: Capacity / (kept + new) tokens after a reallocation. A compaction (every ≈ (GROWTH − 1)·
    #: (kept + new) tokens added) moves the kept tokens to the front and re-bases their sums.
    GROWTH = 3
    #: A compaction re-bases the prefix sums by subtraction (a copy) while the exp-sums forgotten
    #: since they were last computed from the tokens (the "debt", which the precision test of
    #: :meth:`pools` counts) stay below REBASE_DEBT × the kept ones, and the reference is within
    #: REBASE_DRIFT of the kept tokens' largest ``sof``; else it recomputes them from the tokens
    #: with a fresh reference (as costly as adding them: always recomputing cost ≈ 20 % of adding
    #: tokens to wav2small-paper's default stream).
    REBASE_DEBT = 1e3
    REBASE_DRIFT = 30.0

    def __init__(self) -> None:
        self.first = 0  # absolute index of the first kept token
        self.ref = None  # (C·F',) float64 reference M
        self._shape = None  # (C, F')
        self._lo = self._hi = 0  # kept tokens are rows [_lo, _hi) of the buffers
        self._lin = self._sof = None  # (capacity, C·F') float32
        self._trd = None  # (capacity, K) float32, or None
        # (capacity + 1, 2·C·F' + 2·K) float64 prefix sums, by columns:
        # exp(sof − M) | lin·exp(sof − M) | x | x·r
        self._sums = None
        self._debt = None  # (C·F',) float64: exp-sums forgotten by re-basing (see REBASE_DEBT)

    @property
    def end(self) -> int:
        """Absolute index after the last token added."""
        return self.first + self._hi - self._lo

    def add(self, lin: np.ndarray, sof: np.ndarray, trd: np.ndarray | None = None) -> None:
        """Append tokens: (C, T, F') maps, and a trend model's (K, T, 1) ``trd`` (always or
        never)."""
        n = sof.shape[1]
        if not n:
            return
        top = sof.max(1).ravel().astype(np.float64)
        if self.ref is None:
            self.ref, self._shape = top, (sof.shape[0], sof.shape[2])
            self._alloc(2 * n, None if trd is None else trd.shape[0])
        if (trd is None) != (self._trd is None):
            raise ValueError("trd maps must be given with every chunk or with none")
        elif (top > self.ref + self.HEADROOM).any():  # rare: exp(sof - ref) stays ≤ e^HEADROOM
            new = np.maximum(self.ref, top)
            r = np.exp(self.ref - new)
            k = len(r)
            self._sums[self._lo : self._hi + 1, :k] *= r
            self._sums[self._lo : self._hi + 1, k : 2 * k] *= r
            self._debt *= r
            self.ref = new
        if self._hi + n > len(self._lin):
            self._compact(n)
        lo, hi = self._hi, self._hi + n
        shape = (n, *self._shape)
        self._lin[lo:hi].reshape(shape)[:] = np.moveaxis(lin, 1, 0)
        self._sof[lo:hi].reshape(shape)[:] = np.moveaxis(sof, 1, 0)
        if trd is not None:
            self._trd[lo:hi] = trd[..., 0].T
        self._add_sums(lo, hi)
        self._hi = hi

    def _add_sums(self, lo: int, hi: int) -> None:
        """Prefix sums over buffer rows [lo, hi), continuing those up to ``lo``. The attention
        terms are float32 (each to float32 precision, as the maps they come from; numpy's float32
        exp is vectorised, its float64 exp ≈ 3× slower) and summed in float64, so the difference
        of two prefix sums keeps that precision."""
        k = len(self.ref)
        out = self._sums[lo + 1 : hi + 1]
        e = np.exp(self._sof[lo:hi] - self.ref.astype(np.float32))
        out[:, :k] = e
        np.multiply(e, self._lin[lo:hi], out=out[:, k : 2 * k])
        if self._trd is not None:
            x, n_trend = self._trd[lo:hi], self._trd.shape[1]
            out[:, 2 * k : 2 * k + n_trend] = x
            rows = np.arange(lo, hi, dtype=np.float64)[:, None]
            np.multiply(x, rows, out=out[:, 2 * k + n_trend :])
        prefix_sums(out, self._sums[lo])

    def _alloc(self, capacity: int, n_trend: int | None = None) -> None:
        k = math.prod(self._shape)
        self._lin = np.zeros((capacity, k), np.float32)
        self._sof = np.zeros((capacity, k), np.float32)
        self._trd = None if n_trend is None else np.zeros((capacity, n_trend), np.float32)
        self._sums = np.zeros((capacity + 1, 2 * k + 2 * (n_trend or 0)))
        if self._debt is None:
            self._debt = np.zeros(k)

    def _compact(self, n: int) -> None:
        """Move the kept tokens to the front, growing the buffers if needed, with their prefix
        sums re-based by subtraction or recomputed (see :attr:`REBASE_DEBT`)."""
        lo, hi = self._lo, self._hi
        kept, k = hi - lo, len(self.ref)
        lin, sof = self._lin[lo:hi], self._sof[lo:hi]
        trd = None if self._trd is None else self._trd[lo:hi]
        sums = self._sums[lo : hi + 1]
        rebase = False
        if kept:
            top = sof.max(0).astype(np.float64)
            debt = self._debt + sums[0, :k]  # the exp-sums before the kept tokens
            rebase = (self.ref - top).max() <= self.REBASE_DRIFT and (
                debt <= self.REBASE_DEBT * (sums[-1, :k] - sums[0, :k])
            ).all()
        if rebase:
            sums = sums - sums[0]
            if trd is not None:  # Σ x·r with r the new rows (r − lo): − lo·Σ x
                n_trend = trd.shape[1]
                sums[:, 2 * k + n_trend :] -= lo * sums[:, 2 * k : 2 * k + n_trend]
        if kept + n > len(self._lin) // self.GROWTH:
            old = (lin, sof, trd)
            self._alloc(self.GROWTH * (kept + n), None if trd is None else trd.shape[1])
            lin, sof, trd = old
        self._lin[:kept], self._sof[:kept] = lin.copy(), sof.copy()
        if trd is not None:
            self._trd[:kept] = trd.copy()
        self._lo, self._hi = 0, kept
        if rebase:
            self._sums[: kept + 1] = sums
            self._debt = debt
        else:
            self._debt = np.zeros(k)
            if kept:
                self.ref = top
                self._add_sums(0, kept)

    def trim(self, first: int) -> None:
        """Forget the tokens before absolute index ``first``."""
        drop = min(max(0, first - self.first), self._hi - self._lo)
        self._lo += drop
        self.first += drop

    def _rows(self, windows) -> tuple[np.ndarray, np.ndarray]:
        """Buffer rows (i0, i1) of absolute token windows: pairs or an (n, 2) integer array."""
        w = np.asarray(windows, dtype=np.int64).reshape(-1, 2) - (self.first - self._lo)
        i0, i1 = w[:, 0], w[:, 1]
        if self.ref is None or i0.min() < self._lo or i1.max() > self._hi or (i1 <= i0).any():
            raise ValueError("window outside the kept tokens")
        return i0, i1

    def _at(self, rows: np.ndarray) -> np.ndarray:
        """The prefix sums at buffer ``rows``: a view when they step evenly (a timeline's window
        ends and, but at its start, starts do), else a gathered copy."""
        step = _even_step(rows)
        if step is None:
            return self._sums.take(rows, 0)
        return self._sums[int(rows[0]) : int(rows[-1]) + 1 : step]

    def pools(self, windows) -> tuple[np.ndarray, np.ndarray | None]:
        """Pooled maps (len(windows), C, F') and, for a trend model, trend poolings
        (len(windows), K) (else None) of token windows ``[j0, j1)`` (absolute, non-empty; pairs
        or an (n, 2) integer array)."""
        i0, i1 = self._rows(windows)
        k = len(self.ref)
        top = self._at(i1)
        d = top - self._at(i0)  # the windows' sums: the one pass over all four kinds of sums
        s = d[:, :k]  # ≥ 0: sums of exponentials
        out = np.empty((len(d), k), np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):  # only in bad rows, redone below
            np.divide(d[:, k : 2 * k], s, out=out, casting="same_kind")
        # a window's exp-sum below MIN_RELATIVE × its end's prefix sum (plus the debt: the
        # exp-sums re-basing subtracted) has lost precision in the difference; prefix sums only
        # grow (up to rounding, hence the 2), so no window has when every one is above
        # 2·MIN_RELATIVE × the largest end's (one reduction over all: a column-wise one over
        # these strided rows costs ≈ 3× more)
        debt = self._debt
        if not s.min() > 2 * self.MIN_RELATIVE * (self._sums[i1.max(), :k] + debt).max():
            bad = s <= self.MIN_RELATIVE * (top[:, :k] + debt)  # also every s <= 0
            for r in np.flatnonzero(bad.any(1)):  # precision fallback: this window on its own
                sof = self._sof[i0[r] : i1[r]].astype(np.float64)
                e = np.exp(sof - sof.max(0))
                out[r] = (e * self._lin[i0[r] : i1[r]]).sum(0) / e.sum(0)
        pooled = out.reshape(-1, *self._shape)
        if self._trd is None:
            return pooled, None
        n_trend = self._trd.shape[1]
        sx, sxr = d[:, 2 * k : 2 * k + n_trend], d[:, 2 * k + n_trend :]
        return pooled, trend_of_sums(i1 - i0, sx, sxr, i0).astype(np.float32)

    def pool(self, windows) -> np.ndarray:
        """The pooled maps of :meth:`pools`."""
        return self.pools(windows)[0]

    def trend(self, windows) -> np.ndarray | None:
        """The trend poolings of :meth:`pools`, or None when no ``trd`` maps were added."""
        return None if self._trd is None else self.pools(windows)[1]
