"""Tests for wav2small.tokens: chunked tokens == one pass, online and windowed pooling."""

from __future__ import annotations

import numpy as np
import pytest

from wav2small.tokens import (
    OnlinePool,
    QuadraticHead,
    SampleBuffer,
    StagedModel,
    StatsAccumulator,
    TokenRunner,
    WindowPool,
    _even_step,
    iter_tokens,
    prefix_sums,
    signal_stats,
)

HEAD_GAIN = 100.0  # untrained outputs barely move; amplify so comparisons bite


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    """A tiny Wav2Small (amplified head) exported to ONNX, with its session."""
    import torch

    from wav2small.backends import onnx_metadata, onnx_session
    from wav2small.export import export_onnx
    from wav2small.models import create_model

    torch.manual_seed(0)
    model = create_model("wav2small-tiny")
    model.train()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for _ in range(3):
            model(torch.randn(4, 8000))
        model.adv.weight.mul_(HEAD_GAIN)
    path = export_onnx(model.eval(), tmp_path_factory.mktemp("tok") / "tiny.onnx")
    session = onnx_session(path)
    return StagedModel(session, onnx_metadata(session)), session


def _signal(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    env = 0.2 + np.abs(np.sin(np.arange(n) / 3000))
    return (rng.normal(0.01, 0.1, n) * env).astype(np.float32)


def _blocks(x: np.ndarray, size: int) -> list[np.ndarray]:
    return [x[i : i + size] for i in range(0, len(x), size)]


@pytest.mark.parametrize(
    "n, block, chunk",
    [(64, 64, 1), (100, 7, 3), (1000, 333, 2), (48017, 4000, 60), (112000, 16000, 500)],
)
def test_chunked_tokens_and_pooling_equal_one_pass(staged, n, block, chunk):
    model, session = staged
    assert (model.token_samples, model.left, model.right, model.norm) == (64, 384, 448, "utterance")
    x = _signal(n, n)
    adv, lin, sof = session.run(None, {"signal": x[None]})
    norm = signal_stats(_blocks(x, 999))
    pool, parts, first = OnlinePool(), [], 0
    for k, lin_c, sof_c in iter_tokens(model, _blocks(x, block), norm=norm, chunk_tokens=chunk):
        assert k == first  # consecutive, each token once
        first += lin_c.shape[1]
        pool.add(lin_c, sof_c)
        parts.append(np.concatenate([lin_c, sof_c]))
    got = np.concatenate(parts, 1)
    np.testing.assert_allclose(got, np.concatenate([lin[0], sof[0]]), atol=1e-5, rtol=0)
    assert np.abs(model.head(pool.pooled()[None]) - adv).max() <= 1e-4


def test_utterance_model_needs_statistics(staged):
    with pytest.raises(ValueError, match="needs the signal's statistics"):
        TokenRunner(staged[0])


def test_stats_accumulator_matches_numpy():
    x = np.random.default_rng(1).normal(3.0, 0.5, 10007)
    acc = StatsAccumulator()
    for b in _blocks(x, 1234):
        acc.add(b)
    mean, scale = acc.norm()
    assert mean == pytest.approx(x.mean(), rel=1e-6)
    assert scale == pytest.approx(np.sqrt(x.var() + 1e-7), rel=1e-6)


def _direct(lin: np.ndarray, sof: np.ndarray) -> np.ndarray:
    """Softmax pooling over axis 1 of (C, T, F) maps, in float64."""
    s = sof.astype(np.float64)
    e = np.exp(s - s.max(1, keepdims=True))
    return (e * lin).sum(1) / e.sum(1)


def _maps(t: int, seed: int, spread: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lin = rng.normal(size=(4, t, 5)).astype(np.float32)
    sof = (rng.normal(size=(4, t, 5)) * spread).astype(np.float32)
    return lin, sof


def test_online_pool_is_exact_and_does_not_overflow():
    lin, sof = _maps(300, 2)
    sof[:, 100:] += 800.0  # exp would overflow without the running max
    pool = OnlinePool()
    for i in range(0, 300, 37):
        pool.add(lin[:, i : i + 37], sof[:, i : i + 37])
    np.testing.assert_allclose(pool.pooled(), _direct(lin, sof), rtol=1e-5, atol=1e-6)


def test_window_pool_equals_direct_pooling_with_trims_and_rescaling():
    lin, sof = _maps(2000, 3)
    sof[:, 700:900] += 60.0  # a jump: the reference is raised and the sums rescaled
    sof[:, 50:60] += 40.0  # early tokens that dwarf later windows: the precision fallback
    pool = WindowPool()
    rng = np.random.default_rng(4)
    for i in range(0, 2000, 128):
        pool.add(lin[:, i : i + 128], sof[:, i : i + 128])
        lo = max(0, pool.end - 400)
        windows = [
            (int(a), int(a) + int(w))
            for a, w in zip(rng.integers(lo, pool.end - 1, 6), rng.integers(1, 400, 6), strict=True)
        ]
        windows = [(a, min(b, pool.end)) for a, b in windows]
        got = pool.pool(windows)
        want = np.stack([_direct(lin[:, a:b], sof[:, a:b]) for a, b in windows])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        pool.trim(lo)
    assert pool.first > 0
    with pytest.raises(ValueError, match="outside the kept tokens"):
        pool.pool([(0, 10)])


def _direct_trend(trd: np.ndarray) -> np.ndarray:
    """The trend pooling of (K, T, 1) maps, as the torch model computes it (float64)."""
    import torch

    from wav2small.models.wav2small import trend_pool

    return trend_pool(torch.from_numpy(trd.astype(np.float64))[None])[0, :, 0].numpy()


def test_online_and_window_trend_equal_the_model_s_trend_pooling():
    lin, sof = _maps(3000, 5)
    rng = np.random.default_rng(6)
    ramp = np.linspace(-1, 1, 3000)[None, :, None]
    trd = (rng.normal(size=(3, 3000, 1)) + 5 + ramp * [[[2.0]], [[0.0]], [[-1.0]]]).astype(
        np.float32
    )
    pool = OnlinePool()
    for i in range(0, 3000, 97):
        pool.add(lin[:, i : i + 97], sof[:, i : i + 97], trd[:, i : i + 97])
    np.testing.assert_allclose(pool.trend(), _direct_trend(trd), rtol=1e-5, atol=1e-6)
    assert OnlinePool().trend() is None
    assert pool.trend()[0] > 0.3 > abs(pool.trend()[1]) and pool.trend()[2] < -0.1
    window = WindowPool()
    for i in range(0, 3000, 128):
        window.add(lin[:, i : i + 128], sof[:, i : i + 128], trd[:, i : i + 128])
        lo = max(0, window.end - 500)
        windows = [(lo, window.end), (window.end - 1, window.end), (lo + 3, lo + 60)]
        got = window.trend(windows)
        want = np.stack([_direct_trend(trd[:, a:b]) for a, b in windows])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        window.trim(lo)
    assert window.first > 0
    with pytest.raises(ValueError, match="outside the kept tokens"):
        window.trend([(0, 10)])
    with pytest.raises(ValueError, match="with every chunk or with none"):
        window.add(lin[:, :5], sof[:, :5])
    assert WindowPool().trend([(0, 1)]) is None


def test_window_pool_rebases_its_sums_and_stays_exact_through_a_drop():
    """Compactions re-base the prefix sums by subtraction (the forgotten exp-sums become the
    debt) while that is safe, and recompute them after the level drops by more than
    REBASE_DRIFT; windows and trends equal direct pooling throughout, the windows right after
    the drop (tiny against the debt) through the precision fallback."""
    lin, sof = _maps(6000, 7, spread=1.0)
    rng = np.random.default_rng(8)
    trd = (rng.normal(size=(2, 6000, 1)) + 3).astype(np.float32)
    sof[:, 3000:] -= 45.0  # a drop: REBASE_DRIFT (30) exceeded once only quiet tokens are kept
    pool, debts = WindowPool(), []
    for i in range(0, 6000, 100):
        pool.add(lin[:, i : i + 100], sof[:, i : i + 100], trd[:, i : i + 100])
        debts.append(pool._debt.max())
        lo = max(0, pool.end - 300)
        windows = [(lo, pool.end), (max(lo, pool.end - 250), pool.end - 1), (lo + 7, lo + 9)]
        pooled, trend = pool.pools(windows)
        want = np.stack([_direct(lin[:, a:b], sof[:, a:b]) for a, b in windows])
        np.testing.assert_allclose(pooled, want, rtol=1e-4, atol=1e-5)
        want = np.stack([_direct_trend(trd[:, a:b]) for a, b in windows])
        np.testing.assert_allclose(trend, want, rtol=1e-4, atol=1e-5)
        pool.trim(lo)
    debts = np.array(debts)
    assert debts[:30].max() > 0  # re-based before the drop
    assert (debts[35:] < debts[:30].max() * 1e-9).any()  # recomputed (fresh reference) after it


def test_window_pool_counts_the_debt_of_a_rebase_in_its_precision_test():
    """Quiet tokens kept after a loud stretch that a compaction re-based away: their sums, the
    difference of large prefix sums, are rounding noise; the forgotten exp-sums (the debt) send
    their window to the direct fallback."""
    lin, sof = _maps(300, 9, spread=0.5)
    sof[:, 100:150] -= 28.0  # quiet, within REBASE_DRIFT of the loud tokens kept after them
    pool = WindowPool()
    pool.add(lin[:, :100], sof[:, :100])  # loud: forgotten below
    pool.add(lin[:, 100:200], sof[:, 100:200])
    pool.trim(100)
    pool.add(lin[:, 200:300], sof[:, 200:300])  # compaction: re-based, the debt ≈ 100 tokens'
    assert pool._debt.min() > 10
    windows = [(100, 110), (100, 150), (120, 200), (100, 300)]
    want = np.stack([_direct(lin[:, a:b], sof[:, a:b]) for a, b in windows])
    np.testing.assert_allclose(pool.pool(windows), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("idx", "step"),
    [
        ([], None),
        ([4], 1),
        ([4, 9], 5),
        ([3, 4, 5, 6], 1),
        ([0, 2, 4], 2),
        ([0, 2, 5], None),
        ([0, 3, 4, 6], None),
        ([5, 5, 5], None),
        ([6, 4, 2], None),
    ],
)
def test_even_step(idx, step):
    assert _even_step(np.array(idx, np.int64)) == step


@pytest.mark.parametrize("n", [1, 15, 16, 17, 100, 1364])
def test_prefix_sums_equal_a_sequential_cumulative_sum(n):
    """Blocked prefix sums (whole blocks, a remainder, or only a remainder) with a carry."""
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 7)) * np.exp(rng.normal(size=(n, 1)) * 3)
    carry = rng.normal(size=7) * 100
    got = x.copy()
    prefix_sums(got, carry)
    want = carry + np.cumsum(x, 0)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * np.abs(want).max())
    got = x.copy()
    prefix_sums(got)  # carry 0
    np.testing.assert_allclose(got, np.cumsum(x, 0), rtol=1e-12, atol=1e-12 * np.abs(x).sum())


@pytest.fixture(scope="module", params=[False, True], ids=["trend-linear", "trend-gram"])
def pitch_staged(tmp_path_factory, request):
    """A small pitch-trunk export with trend pooling (F' = 1, C = 6, K = 3; amplified head):
    the trend read linearly, or inside the Gram (``trend_gram``, as wav2small-paper)."""
    import torch

    from wav2small.backends import onnx_metadata, onnx_session
    from wav2small.export import export_onnx
    from wav2small.models.wav2small import Wav2Small, Wav2SmallConfig

    torch.manual_seed(1)
    cfg = Wav2SmallConfig(
        frontend="pitch",
        norm="local",
        width=8,
        pool=6,
        dilations=(1, 3),
        trend=3,
        trend_gram=request.param,
    )
    model = Wav2Small(cfg).eval()
    with torch.no_grad():
        model.adv.weight.mul_(HEAD_GAIN)
    path = export_onnx(model, tmp_path_factory.mktemp("pitch") / "pitch.onnx")
    session = onnx_session(path)
    return StagedModel(session, onnx_metadata(session)), request.param


def test_quadratic_head_equals_the_onnx_head(pitch_staged):
    """The F' = 1 head runs in numpy (coefficients read off the model) and equals ONNX Runtime's
    to float32 rounding."""
    (model, trend_gram), rng = pitch_staged, np.random.default_rng(3)
    for scale, rows in [(0.1, 1), (1.0, 300), (5.0, 7)]:
        pooled = (rng.normal(size=(rows, 6, 1)) * scale).astype(np.float32)
        t = (rng.normal(size=(rows, 3)) * scale).astype(np.float32)
        got, want = model.head(pooled, t), model.onnx_head(pooled, t)
        assert got.shape == want.shape == (rows, 3) and got.dtype == np.float32
        assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())
        assert np.abs(want).max() > 10 * scale**2  # the head is not trivially small
    assert isinstance(model._quadratic, QuadraticHead)
    # a trend_gram head multiplies trends with pooled entries; the linear form has no such term
    pooled, t = np.zeros((1, 6, 1), np.float32), np.zeros((1, 3), np.float32)
    pooled[0, 0, 0], t[0, 0] = 1.0, 1.0
    both = model.onnx_head(pooled, t) - model.onnx_head(pooled, 0 * t)
    alone = model.onnx_head(0 * pooled, t) - model.onnx_head(0 * pooled, 0 * t)
    cross = np.abs(both - alone).max()
    assert cross > 1e-3 if trend_gram else cross < 1e-5


class _FakeHead:
    """A stand-in for StagedModel's ONNX head: y = b + L·p + pᵀ·A·p (A not symmetric), or the
    same through a ReLU hidden layer."""

    trend_name = None

    def __init__(self, hidden: bool) -> None:
        rng = np.random.default_rng(5)
        self.b, self.L = rng.normal(size=3), rng.normal(size=(3, 5))
        self.A, self.hidden = rng.normal(size=(3, 5, 5)), hidden

    def onnx_head(self, pooled: np.ndarray, trend=None) -> np.ndarray:
        p = pooled[:, :, 0].astype(np.float64)
        y = self.b + p @ self.L.T + np.einsum("rc,ocd,rd->ro", p, self.A, p)
        return (np.maximum(y, 0) if self.hidden else y).astype(np.float32)


@pytest.mark.parametrize("hidden", [False, True])
def test_quadratic_head_reads_a_quadratic_form_and_refuses_anything_else(hidden):
    fake = _FakeHead(hidden)
    head = QuadraticHead.fit(fake, 5)
    if hidden:  # not a quadratic form: ONNX Runtime keeps running it
        assert head is None
        return
    p = np.random.default_rng(6).normal(size=(50, 5)).astype(np.float32)
    want = fake.onnx_head(p[:, :, None])
    assert np.abs(head(p) - want).max() <= 1e-5 * np.abs(want).max()
    sym = (fake.A + fake.A.transpose(0, 2, 1)) / 2  # only the symmetric part is visible
    np.testing.assert_allclose(head.bias, fake.b, atol=1e-5)
    np.testing.assert_allclose(head.weights[:, 15:], fake.L.T, atol=1e-5)
    np.testing.assert_allclose(
        head.weights[:, :15].reshape(5, 3, 5).transpose(1, 2, 0), sym, atol=1e-5
    )


def test_sample_buffer_keeps_what_is_not_forgotten_in_bounded_memory():
    """Blocks of any size appended, spans read by absolute index, prefixes forgotten; the
    storage stays a small multiple of what is kept (no growth with the stream's length)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=200_000).astype(np.float32)
    buf, i, keep = SampleBuffer(), 0, 5000
    while i < len(x):
        n = int(rng.choice([1, 320, 777, 6000]))
        buf.append(x[i : i + n].astype(np.float64))  # copied and converted
        i += len(x[i : i + n])
        assert buf.end == i
        start = max(0, i - keep)
        np.testing.assert_array_equal(buf.view(start, i), x[start:i])
        buf.forget(i - keep)
        assert buf.first == max(0, i - keep)
        assert len(buf._data) <= 4 * (keep + 6000)
    with pytest.raises(ValueError, match="not in"):
        buf.view(buf.first - 1, buf.end)
    with pytest.raises(ValueError, match="not in"):
        buf.view(buf.first, buf.end + 1)
    block = np.ones(10, np.float32)
    buf.append(block)
    block[:] = 7  # the caller reuses its chunk: the buffer holds a copy
    assert (buf.view(buf.end - 10, buf.end) == 1).all()
