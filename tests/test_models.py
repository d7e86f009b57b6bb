"""Wav2Small family: presets, parameter counts, token rate, padding invariance, checkpoints."""

import pytest
import torch

from wav2small import LABELS
from wav2small.models import count_parameters, create_model, list_models, load_model, save_model


def test_presets_listed_and_unknown_name_error():
    assert {"wav2small-tiny", "wav2small-paper"} <= set(list_models())
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        create_model("nope")


def test_tiny_matches_released_design_parameter_count():
    model = create_model("wav2small-tiny")
    assert count_parameters(model) == 10_806
    assert count_parameters(model, trainable=False) - count_parameters(model) == 4_224


def test_paper_preset_has_72k_parameters():
    assert abs(count_parameters(create_model("wav2small-paper")) - 72_000) <= 0.02 * 72_000


def test_state_dict_keys_follow_the_released_layout():
    keys = set(create_model("wav2small-tiny").state_dict())
    assert {
        "vgg7.spectrogram_extractor.conv_real.weight",
        "vgg7.logmel_extractor.melW",
        "vgg7.l1.conv.weight",
        "vgg7.l7.norm.running_var",
        "vgg7.lin.weight",
        "vgg7.sof.bias",
        "adv.weight",
    } <= keys


@pytest.mark.parametrize("seconds, tokens", [(5.0, 1250), (1.0, 250), (0.1, 25)])
def test_token_rate_is_250_per_second(seconds, tokens):
    model = create_model("wav2small-tiny").eval()
    seen = {}

    def remember(module, inputs, output):
        seen["shape"] = output.shape

    model.vgg7.l7.register_forward_hook(remember)
    out = model(torch.randn(1, int(seconds * 16000)))
    assert out.shape == (1, len(LABELS))
    assert abs(seen["shape"][2] - tokens) <= 1


def _trained_like(name: str) -> torch.nn.Module:
    """A model whose BatchNorm statistics are not the identity (as after training)."""
    torch.manual_seed(0)
    model = create_model(name)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 8000))
    return model.eval()


@pytest.mark.parametrize("name", ["wav2small-tiny", "wav2small-paper"])
def test_padding_does_not_change_a_clips_output(name):
    model = _trained_like(name)
    lengths = torch.tensor([24000, 17123, 1600, 1300])  # the last: a few frames
    batch = torch.randn(4, 24000)
    with torch.no_grad():
        together = model(batch, lengths)
        for i, n in enumerate(lengths.tolist()):
            alone = model(batch[i : i + 1, :n])
            torch.testing.assert_close(together[i : i + 1], alone, atol=1e-5, rtol=1e-5)


def test_too_short_input_is_a_clear_error():
    with pytest.raises(ValueError, match="shorter than one frame"):
        create_model("wav2small-tiny")(torch.randn(1, 50))


def test_save_and_load_round_trip(tmp_path):
    model = _trained_like("wav2small-paper")
    path = tmp_path / "student.safetensors"
    save_model(model, path)
    again = load_model(path)
    assert again.preset == "wav2small-paper"
    x = torch.randn(1, 8000)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))
    assert not list(tmp_path.glob("*.tmp"))


def test_load_model_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_model(tmp_path / "missing.safetensors")
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match="foreign.ckpt: not a wav2small checkpoint"):
        load_model(foreign)


# --- stages, token geometry, receptive field ---------------------------------------------------
def _reference_forward(model, signal, lengths=None):
    """The forward as written before the stage split (one monolithic function)."""
    from wav2small.frontend import num_frames, prenorm, time_mask

    v = model.vgg7
    x = v.logmel_extractor(v.spectrogram_extractor(prenorm(signal, lengths)))
    frames = None if lengths is None else num_frames(lengths)

    def mask(x, n):
        return x if n is None else x * time_mask(n, x.shape[2])[:, None, :, None].to(x.dtype)

    for block in (v.l1, v.l2, v.l3):
        x = block(mask(x, frames))
    x = v.maxpool_A(mask(x, frames))
    tokens = None if frames is None else torch.div(frames + 1, 2, rounding_mode="floor")
    for block in (v.l4, v.l5, v.l6, v.l7):
        x = block(mask(x, tokens))
    scores = v.sof(x)
    if tokens is not None:
        scores = scores.masked_fill(~time_mask(tokens, x.shape[2])[:, None, :, None], -torch.inf)
    x = (v.lin(x) * scores.softmax(2)).sum(2)
    x = torch.cat([x, torch.bmm(x, x.transpose(1, 2))], 2).flatten(1)
    if model.cfg.head:
        x = torch.relu(model.hidden(x))
    return model.adv(x)


@pytest.mark.parametrize("name", ["wav2small-tiny"])  # the released (VGG7) design
def test_staged_forward_equals_the_monolithic_one(name):
    model = _trained_like(name)
    batch, lengths = torch.randn(3, 20000), torch.tensor([20000, 9001, 640])
    with torch.no_grad():
        ref = _reference_forward(model, batch)
        torch.testing.assert_close(model(batch), ref, atol=1e-6, rtol=0)
        torch.testing.assert_close(
            model(batch, lengths), _reference_forward(model, batch, lengths), atol=1e-6, rtol=0
        )


def test_token_geometry_is_declared_and_matches_the_maps():
    model = create_model("wav2small-tiny")
    assert model.token_samples() == 64 and model.tokens_per_second() == 250.0
    assert model.receptive_field() == (384, 448)  # 6 tokens left, 7 right (24 ms / 28 ms)
    paper = create_model("wav2small-paper").eval()
    assert paper.token_samples() == 64 and paper.tokens_per_second() == 250.0
    # the local normalisation's frames + 1 (first conv) + each dilation, either side, then the
    # longest window: the subharmonic band's 1,181 samples (165-tap FIR + 8 × 127), inside
    # which the 541-sample low band is centred (per-frame rows add nothing)
    cfg = paper.cfg
    frames = cfg.norm_frames + 1 + sum(cfg.dilations)
    assert paper.net.spec.span == 1181
    assert paper.receptive_field() == (frames * 64, frames * 64 + 1181)
    with torch.no_grad():
        for n in (64, 100, 1000, 16000, 16033):
            lin, sof = model.tokens(torch.randn(1, n))
            assert lin.shape == sof.shape and lin.shape[2] == model.num_tokens(n)
        for n in (1181, 2000, 16000, 16033):
            lin, sof = paper.tokens(torch.randn(1, n))
            assert lin.shape == sof.shape and lin.shape[2] == paper.num_tokens(n)


@pytest.mark.parametrize("name", ["wav2small-tiny", "wav2small-paper"])
def test_receptive_field_perturbing_outside_changes_nothing(name):
    """Token t depends on samples [t·S − left, t·S + right) and on no other (fixed statistics)."""
    model = _trained_like(name)
    left, right = model.receptive_field()
    s = model.token_samples()
    x = torch.randn(1, 40000)
    norm = torch.tensor([[0.01, 0.9]])
    t = 200
    lo, hi = t * s - left, t * s + right
    with torch.no_grad():
        ref = torch.cat(model.tokens(x, norm), 1)[:, :, t]
        outside = x.clone()
        outside[:, :lo] += torch.randn(1, lo)
        outside[:, hi:] += torch.randn(1, 40000 - hi)
        torch.testing.assert_close(torch.cat(model.tokens(outside, norm), 1)[:, :, t], ref)
        # the bound is tight (the periodic Hann window weighs a frame's first sample by 0); for
        # the pitch design within one hop (its edge samples reach the token through a 32 ms
        # window, a decimating FIR and a 251-frame mean, below float32 resolution) plus the
        # offset of its low band inside the longer subharmonic window: that band's per-frame
        # row skips the mean, so it reaches 125 fewer frames (a conservative bound there)
        if name == "wav2small-tiny":
            probes = (lo + 1, hi - 1)
        else:
            pad = s + model.net.spec.low_offset
            probes = (lo + pad, hi - pad)
        for i in probes:
            inside = x.clone()
            inside[:, i] += 1000.0
            assert not torch.equal(torch.cat(model.tokens(inside, norm), 1)[:, :, t], ref)


def test_non_finite_weights_are_never_saved_or_loaded(tmp_path):
    from safetensors.torch import save_file

    from wav2small.errors import NonFiniteError
    from wav2small.models import model_info

    model = create_model("wav2small-tiny")
    with torch.no_grad():
        model.adv.bias[0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"nan.safetensors: weight 'adv.bias'"):
        save_model(model, tmp_path / "nan.safetensors")
    assert not list(tmp_path.iterdir())  # nothing written, no temp file left
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, tmp_path / "nan.safetensors", metadata=model_info(model))
    with pytest.raises(NonFiniteError, match="nan.safetensors: weight 'adv.bias' has NaN"):
        load_model(tmp_path / "nan.safetensors")


@pytest.mark.parametrize("dtype", [torch.float16, torch.int64])
def test_weights_of_another_dtype_are_refused(tmp_path, dtype):
    from safetensors.torch import save_file

    from wav2small.models import model_info

    model = create_model("wav2small-tiny")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["adv.weight"] = state["adv.weight"].to(dtype)
    save_file(state, tmp_path / "m.safetensors", metadata=model_info(model))
    with pytest.raises(ValueError, match=f"m.safetensors: weight 'adv.weight' is {dtype}"):
        load_model(tmp_path / "m.safetensors")


def test_an_absurd_config_is_refused_before_allocating(tmp_path):
    import json
    import resource

    from safetensors.torch import save_file

    from wav2small.models import model_info

    model = create_model("wav2small-tiny")
    info = model_info(model)
    config = json.loads(info["config"])
    config["head"] = 10**9  # a 10^9-unit hidden layer: terabytes if it were allocated
    info["config"] = json.dumps(config)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, tmp_path / "huge.safetensors", metadata=info)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError, match="huge.safetensors: its config declares .* parameters"):
        load_model(tmp_path / "huge.safetensors")
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 500_000  # no multi-GB allocation happened
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="junk.safetensors: not a readable safetensors"):
        load_model(tmp_path / "junk.safetensors")


# --- the one registry ----------------------------------------------------------------------------
def test_one_registry_lists_students_teachers_and_backbones():
    import wav2small
    from wav2small.models.exits import RANDOM_BACKBONES
    from wav2small.models.mobilenet import TIMM_ARCHS
    from wav2small.teachers import ALIASES

    assert set(TIMM_ARCHS) <= set(list_models())
    assert wav2small.list_models() == list_models() == list_models("student")
    assert list_models("teacher") == sorted(ALIASES)
    assert list_models("backbone") == sorted(RANDOM_BACKBONES)
    with pytest.raises(ValueError, match="unknown kind"):
        list_models("vocoder")
    with pytest.raises(ValueError, match="unknown teacher 'nope'"):
        create_model("nope", kind="teacher")


def test_create_model_builds_each_kind():
    from wav2small.models import register_model
    from wav2small.models.exits import RANDOM_BACKBONES
    from wav2small.teachers import SynthTeacher

    teacher = create_model("synth", kind="teacher")
    assert isinstance(teacher, SynthTeacher) and not teacher.training
    backbone = create_model("wav2vec2-tiny", kind="backbone")
    assert backbone.config.hidden_size == RANDOM_BACKBONES["wav2vec2-tiny"][1]["hidden_size"]
    register_model("test-linear", lambda: torch.nn.Linear(2, 3))
    try:
        model = create_model("test-linear")
        assert model.preset == "test-linear" and "test-linear" in list_models()
    finally:
        from wav2small.models import _PRESETS

        _PRESETS.pop("test-linear")


def test_pitch_salience_adds_input_rows_and_keeps_padding_and_the_receptive_field():
    from wav2small.models.wav2small import Wav2Small, Wav2SmallConfig

    base = dict(frontend="pitch", norm="local", width=16, pool=8, dilations=(1, 3))
    plain, pitched = (
        Wav2Small(Wav2SmallConfig(**base)),
        Wav2Small(Wav2SmallConfig(**base, pitch_bins=24)),
    )
    assert pitched.net.l0.conv.in_channels == plain.net.l0.conv.in_channels + 26
    assert pitched.receptive_field() == plain.receptive_field()  # per-frame rows
    pitched.eval()
    x = torch.randn(2, 12000)
    with torch.no_grad():
        together = pitched(x, torch.tensor([12000, 7000]))
        alone = pitched(x[1:, :7000])
    torch.testing.assert_close(together[1:], alone, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="pitch_bins needs frontend='pitch'"):
        Wav2SmallConfig(pitch_bins=24)


# --- trend pooling -----------------------------------------------------------------------------
def test_trend_pool_is_the_length_free_slope_over_the_valid_tokens():
    from wav2small.models.wav2small import TREND_EPS, trend_pool

    n = 400
    t = torch.arange(n, dtype=torch.float64)
    ramp = (-1 + 2 * t / (n - 1))[None, None, :, None]  # −1 → +1 over the clip
    x = torch.cat([ramp, torch.ones_like(ramp), ramp.flip(2)], 1)  # (1, 3, T, 1)
    got = trend_pool(x)[0, :, 0]
    want = 2 / 12**0.5  # a ramp from −a to +a gives ≈ 2a/√12 whatever its length
    assert got[0].item() == pytest.approx(want, rel=5e-3)
    assert got[1].item() == pytest.approx(0.0, abs=1e-12)  # a constant has no trend
    assert got[2].item() == pytest.approx(-want, rel=5e-3)  # order-aware: reversal negates
    half = trend_pool(x[:, :, ::2])[0, 0, 0].item()  # the same ramp at half the token rate
    assert half == pytest.approx(want, rel=1e-2)
    # padded tokens are ignored: the first 100 tokens padded to 400 with garbage
    padded = torch.cat([x[:, :, :100], 1e3 * torch.randn(1, 3, 300, 1, dtype=x.dtype)], 2)
    alone = trend_pool(x[:, :, :100])
    torch.testing.assert_close(trend_pool(padded, torch.tensor([100])), alone)
    # the formula from running sums: (Σxt − ΣxΣt/N) / (N·sqrt(var t + eps))
    rng = torch.Generator().manual_seed(0)
    y = torch.randn(1, 2, 37, 1, generator=rng, dtype=torch.float64)
    tt = torch.arange(37, dtype=torch.float64)
    N, st, stt = 37, tt.sum(), (tt * tt).sum()
    sx, sxt = y[0, :, :, 0].sum(1), (y[0, :, :, 0] * tt).sum(1)
    ref = (sxt - sx * st / N) / (N * torch.sqrt(stt / N - (st / N) ** 2 + TREND_EPS))
    torch.testing.assert_close(trend_pool(y)[0, :, 0], ref)


def test_trend_option_feeds_the_head_and_keeps_padding_invariance():
    from dataclasses import replace

    from wav2small.models import PAPER_CONFIG
    from wav2small.models.wav2small import (
        Wav2Small,
        Wav2SmallConfig,
        attention_pool,
        trend_pool,
    )

    base = dict(frontend="pitch", norm="local", width=16, pool=8, dilations=(1, 3))
    plain = Wav2Small(Wav2SmallConfig(**base))
    model = Wav2Small(Wav2SmallConfig(**base, trend=8))
    assert model.adv.in_features == plain.adv.in_features + 8
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        model(torch.randn(3, 8000))
    model.eval()
    x = torch.randn(2, 12000)
    with torch.no_grad():
        together = model(x, torch.tensor([12000, 7000]))
        alone = model(x[1:, :7000])
        # the head reads [pooled; Gram; trend], trend = trend_pool of the trd map
        trd = model.trend_map(model.trunk(model.features(x[:1])))
        trend = trend_pool(trd)[..., 0]
        torch.testing.assert_close(model.net(x[:1])[:, -8:], trend)
        lin, sof = model.tokens(x[:1])
        pooled = attention_pool(lin, sof)
        torch.testing.assert_close(model.head(pooled, trend), together[:1])
        assert (model.head(pooled, trend) - model.head(pooled, 0 * trend)).abs().max() > 1e-4
    torch.testing.assert_close(together[1:], alone, atol=1e-4, rtol=1e-4)
    n = count_parameters(Wav2Small(replace(PAPER_CONFIG, trend=8)))
    assert abs(n - 72_000) <= 0.02 * 72_000
    with pytest.raises(ValueError, match="trend needs frontend='pitch'"):
        Wav2SmallConfig(trend=8)


def test_trend_gram_head_reads_the_trend_inside_the_gram():
    """``trend_gram``: the head is the Linear on [q ; Gram(q)], q = [pooled ; trend] (products
    of each slope with the pooled features); the embedding-hint vector is that input."""
    from wav2small.models.wav2small import (
        Wav2Small,
        Wav2SmallConfig,
        attention_pool,
        pooled_features,
        trend_pool,
    )

    base = dict(frontend="pitch", norm="local", width=16, pool=8, dilations=(1, 3), trend=4)
    model = Wav2Small(Wav2SmallConfig(**base, trend_gram=True)).eval()
    assert model.adv.in_features == 12 + 12 * 12
    x, lengths = torch.randn(2, 12000), torch.tensor([12000, 7000])
    with torch.no_grad():
        out, embedding = model.forward_embedding(x, lengths)
        torch.testing.assert_close(model(x, lengths), out)
        x0 = model.trunk(model.features(x[:1]))
        q = torch.cat([attention_pool(*model.token_maps(x0)), trend_pool(model.trend_map(x0))], 1)
        torch.testing.assert_close(embedding[:1], pooled_features(q))
        torch.testing.assert_close(model.adv(pooled_features(q)), out[:1])
        torch.testing.assert_close(model.net(x[:1]), embedding[:1])
    with pytest.raises(ValueError, match="trend_gram needs trend"):
        Wav2SmallConfig(**{**base, "trend": 0}, trend_gram=True)


@pytest.mark.parametrize("hidden, trend", [(0, 0), (0, 4), (16, 4)])
def test_head_without_the_gram_features_equals_the_linear_on_them(hidden, trend):
    """The pitch trunk's head (F' = 1) applies its first Linear to [pooled ; Gram ; trend]
    without forming them (``pooled_linear``): the same outputs as forming them."""
    from wav2small.models.wav2small import Wav2Small, Wav2SmallConfig, pooled_features

    torch.manual_seed(0)
    cfg = dict(frontend="pitch", norm="local", width=16, pool=8, dilations=(1, 3), head=hidden)
    model = Wav2Small(Wav2SmallConfig(**cfg, trend=trend)).eval()
    pooled = torch.randn(5, 8, 1)
    t = torch.randn(5, trend) if trend else None
    x = pooled_features(pooled) if t is None else torch.cat([pooled_features(pooled), t], 1)
    ref = model.hidden(x).relu() if hidden else x
    ref = model.adv(ref)
    with torch.no_grad():
        torch.testing.assert_close(model.head(pooled, t), ref.detach(), atol=1e-5, rtol=1e-5)
        assert model.head(pooled, t).shape == (5, 3)


def test_time_conv_trains_as_a_conv1d_and_exports_as_the_same_conv2d(monkeypatch):
    from wav2small.models.wav2small import TimeConv, conv_time

    torch.manual_seed(0)
    layer = TimeConv(5, 7, dilation=3).eval()
    x = torch.randn(2, 5, 40, 1)
    fast = layer(x)  # the Conv1d path (training, torch inference)
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    as_exported = layer(x)  # the 4-D Conv that ONNX export writes
    assert fast.shape == as_exported.shape == (2, 7, 40, 1)
    torch.testing.assert_close(fast, as_exported, atol=1e-6, rtol=1e-5)
    assert not torch.equal(fast, torch.zeros_like(fast))
    pointwise = torch.nn.Conv2d(7, 4, 1)  # lin / sof / trd: 1×1 with a bias
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: False)
    torch.testing.assert_close(conv_time(pointwise, fast), pointwise(fast), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["wav2small-tiny", "wav2small-paper"])
def test_forward_embedding_returns_the_output_and_the_vector_the_head_reads(name):
    model = create_model(name).eval()
    x, lengths = torch.randn(2, 24000), torch.tensor([24000, 17000])
    with torch.no_grad():
        out, emb = model.forward_embedding(x, lengths)
        torch.testing.assert_close(out, model(x, lengths))
    first = model.hidden if model.cfg.head else model.adv  # the head's first Linear reads it
    assert emb.shape == (2, first.in_features)
    if not model.cfg.head:
        torch.testing.assert_close(first(emb), out)
