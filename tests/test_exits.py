"""Early-exit wrapper: exits after the requested layers, truncation equal to transformers'
intermediate hidden states, padding invariance, fusion, parameters, save/load, errors."""

import pytest
import torch

from wav2small.models.exits import (
    DEEPEST,
    FUSION,
    RANDOM_BACKBONES,
    EarlyExitModel,
    ExitsConfig,
    ExitsError,
    build_backbone,
    create_exits_model,
    fuse_by_margin,
    load_backbone,
    load_exits_model,
    parse_exit,
    parse_exits,
    save_exits_model,
)

CLASSES = ("neutral", "happy", "angry", "sad", "calm")
TOL = 1e-5
# (preset, overrides): post-LN and stable-layer-norm wav2vec2 and WavLM, group-norm wav2vec2
VARIANTS = {
    "wav2vec2": ("wav2vec2-tiny", {}),
    "wav2vec2-stable": ("wav2vec2-tiny", {"do_stable_layer_norm": True}),
    "wav2vec2-group": ("wav2vec2-tiny", {"feat_extract_norm": "group"}),
    "wavlm": ("wavlm-tiny", {}),
    "wavlm-stable": ("wavlm-tiny", {"do_stable_layer_norm": True}),
}


def tiny(variant="wav2vec2", *, task="classes", exits=(1, 3), seed=0) -> EarlyExitModel:
    torch.manual_seed(seed)
    name, overrides = VARIANTS[variant]
    kind, fields = RANDOM_BACKBONES[name]
    backbone = build_backbone(kind, {**fields, **overrides})
    config = ExitsConfig(task=task, classes=CLASSES if task == "classes" else (), exits=exits)
    return EarlyExitModel(config, backbone).eval()


def waves(n=2, samples=8000, seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(n, samples, generator=g)


def hf_hidden_states(model: EarlyExitModel, wave, lengths=None):
    """transformers' own forward on the same normalised input."""
    mask = None
    if lengths is not None:
        mask = (torch.arange(wave.shape[1])[None] < lengths[:, None]).to(wave.dtype)
    x = model._normalise(wave, lengths)
    attn = None if mask is None else mask.long()
    return model.backbone(x, attention_mask=attn, output_hidden_states=True)


# --- structure ------------------------------------------------------------------------------
def test_exits_sit_after_the_requested_layers():
    model = tiny(exits=(1, 3))
    assert sorted(model.exit_heads) == ["1", "3"] and model.exits == (1, 3)
    x = waves()
    with torch.no_grad():
        out = model.forward_all(x)
        ref = hf_hidden_states(model, x)
        for k in (1, 3):  # each exit head applied to transformers' hidden_states[k]
            expected = model.exit_heads[str(k)](ref.hidden_states[k])[0]
            torch.testing.assert_close(out.outputs[k], expected, atol=TOL, rtol=0)
            torch.testing.assert_close(model(x, exit=k), expected, atol=TOL, rtol=0)
        deepest = model.deepest(ref.last_hidden_state)[0]
        torch.testing.assert_close(out.outputs[DEEPEST], deepest, atol=TOL, rtol=0)
    assert out.exits == [1, 3]
    assert out.outputs[1].shape == (2, len(CLASSES))
    assert out.features[1].shape == out.features[DEEPEST].shape == (2, 32)


def test_default_exits_are_the_papers():
    assert ExitsConfig(classes=CLASSES).exits == (3, 8, 10)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_truncated_forward_equals_transformers_hidden_states(variant):
    model = tiny(variant)
    x = waves(samples=6400)
    with torch.no_grad():
        ref = hf_hidden_states(model, x)
        for k in range(1, model.num_layers + 1):
            got = model.hidden_state(x, layer=k)
            torch.testing.assert_close(got, ref.hidden_states[k], atol=TOL, rtol=0)
        # the deepest head reads last_hidden_state: final layer norm only for stable variants
        last = model.hidden_state(x, layer=model.num_layers)
        if model.stable_layer_norm:
            last = model.backbone.encoder.layer_norm(last)
        torch.testing.assert_close(last, ref.last_hidden_state, atol=TOL, rtol=0)


@pytest.mark.parametrize("variant", ["wav2vec2", "wav2vec2-stable", "wavlm"])
def test_truncated_forward_with_padding_matches_transformers_attention_mask(variant):
    model = tiny(variant)
    x, lengths = waves(samples=8000), torch.tensor([8000, 5000])
    x[1, 5000:] = 0
    frames = model.frames(lengths)
    with torch.no_grad():
        ref = hf_hidden_states(model, x, lengths)
        for k in (1, 2):
            got = model.hidden_state(x, lengths, layer=k)
            for row, n in enumerate(frames.tolist()):  # valid frames only
                torch.testing.assert_close(
                    got[row, :n], ref.hidden_states[k][row, :n], atol=TOL, rtol=0
                )


def test_layers_after_the_exit_are_not_computed():
    model = tiny(exits=(1, 3))
    calls = []
    for i, layer in enumerate(model.backbone.encoder.layers):
        layer.register_forward_hook(lambda *_, i=i: calls.append(i + 1))
    with torch.no_grad():
        model(waves(), exit=1)
        assert calls == [1]
        calls.clear()
        model(waves(), exit=FUSION)  # up to the deepest exit
        assert calls == [1, 2, 3]
        calls.clear()
        model(waves(), exit=DEEPEST)
        assert calls == [1, 2, 3, 4]


@pytest.mark.parametrize("variant", ["wav2vec2", "wav2vec2-group", "wavlm-stable"])
def test_output_of_a_clip_does_not_depend_on_its_batch(variant):
    model = tiny(variant)
    x = waves(samples=8000)
    short = x[1, :5200].clone()
    x[1, 5200:] = 0
    lengths = torch.tensor([8000, 5200])
    with torch.no_grad():
        batch = model.forward_all(x, lengths).outputs
        for exit in (1, 3, DEEPEST):
            alone = model(short[None], exit=exit)
            torch.testing.assert_close(batch[exit][1:], alone, atol=1e-5, rtol=0)


def test_inputs_shorter_than_the_receptive_field_are_padded():
    model = tiny()
    with torch.no_grad():
        out = model(waves(samples=100), exit=1)
    assert out.shape == (2, len(CLASSES)) and torch.isfinite(out).all()


# --- fusion ---------------------------------------------------------------------------------
def test_fuse_by_margin_picks_per_sample():
    confident = torch.tensor([[4.0, 0.0, 0.0], [0.1, 0.0, 0.0]])
    unsure = torch.tensor([[0.2, 0.0, 0.0], [0.0, 5.0, 0.0]])
    fused, choice = fuse_by_margin([confident, unsure])
    assert choice.tolist() == [0, 1]
    torch.testing.assert_close(fused, torch.stack([confident[0], unsure[1]]))
    _, tie = fuse_by_margin([unsure, unsure.clone()])
    assert tie.tolist() == [0, 0]  # ties go to the shallower exit


def test_model_fusion_returns_the_chosen_exits_outputs():
    model = tiny(exits=(1, 2, 3))
    x = waves(n=6, seed=3)
    with torch.no_grad():
        fused, layers = model.fusion(x)
        out = model.forward_all(x).outputs
        torch.testing.assert_close(model(x, exit=FUSION), fused)
    for row, layer in enumerate(layers.tolist()):
        assert layer in (1, 2, 3)
        torch.testing.assert_close(fused[row], out[layer][row], atol=TOL, rtol=0)
        margins = {k: out[k][row].softmax(-1).topk(2).values for k in (1, 2, 3)}
        best = max(margins, key=lambda k: float(margins[k][0] - margins[k][1]))
        assert layer == best


def test_fusion_is_for_classes_only_and_needs_exits():
    with pytest.raises(ExitsError, match="task 'classes' only"):
        tiny(task="adv")(waves(), exit=FUSION)
    with pytest.raises(ExitsError, match="needs a model with exits"):
        tiny(exits=())(waves(), exit=FUSION)


# --- A/D/V, parameters, config errors --------------------------------------------------------
def test_adv_heads_have_three_outputs():
    model = tiny(task="adv")
    with torch.no_grad():
        assert model(waves(), exit=3).shape == (2, 3)
    assert model.config.labels == ("arousal", "dominance", "valence")


def test_parameters_used_grow_with_depth():
    model = tiny(exits=(1, 3))
    p1, p3, deep = (model.parameters_used(e) for e in (1, 3, DEEPEST))
    assert p1 < p3 and model.parameters_used(FUSION) > p3
    heads = sum(p.numel() for p in model.exit_heads.parameters())
    total = sum(p.numel() for p in model.parameters())
    spec = getattr(model.backbone, "masked_spec_embed", None)
    assert deep == total - heads - (0 if spec is None else spec.numel())


def test_bad_configurations_and_inputs_raise():
    with pytest.raises(ExitsError, match="out of range"):
        tiny(exits=(4,))
    with pytest.raises(ExitsError, match="at least two class names"):
        ExitsConfig(classes=("one",))
    with pytest.raises(ExitsError, match="task must be"):
        ExitsConfig(task="regression")
    model = tiny()
    with pytest.raises(ExitsError, match="unknown exit 2"):
        model(waves(), exit=2)
    with pytest.raises(ExitsError, match=r"\(batch, samples\)"):
        model(torch.zeros(8000))
    with pytest.raises(ExitsError, match="lengths must lie"):
        model(waves(), torch.tensor([8000, 0]))


def test_parse_exits_and_exit():
    assert parse_exits("3, 8,10") == (3, 8, 10)
    assert parse_exits("none") == parse_exits("") == ()
    assert parse_exit("8") == 8 and parse_exit("Fusion") == FUSION
    with pytest.raises(ExitsError):
        parse_exits("3,x")
    with pytest.raises(ExitsError):
        parse_exit("middle")


# --- backbones, save and load ----------------------------------------------------------------
def test_load_backbone_random_and_folder(tmp_path):
    assert type(load_backbone("random:wavlm-tiny")).__name__ == "WavLMModel"
    with pytest.raises(ExitsError, match="unknown random backbone"):
        load_backbone("random:nope")
    with pytest.raises(ExitsError, match="no such folder"):
        load_backbone(tmp_path / "missing")
    torch.manual_seed(0)
    backbone = load_backbone("random:wav2vec2-tiny")
    backbone.save_pretrained(tmp_path / "bb")
    again = load_backbone(tmp_path / "bb")
    for (k, a), (_, b) in zip(
        backbone.state_dict().items(), again.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), k


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = create_exits_model("random:wav2vec2-tiny", classes=CLASSES, exits=(2,)).eval()
    path = save_exits_model(model, tmp_path / "m.safetensors")
    again = load_exits_model(path)
    x = waves()
    with torch.no_grad():
        for exit in (2, DEEPEST):
            torch.testing.assert_close(again(x, exit=exit), model(x, exit=exit))
    assert again.config.classes == CLASSES and again.config.backbone_name == "random:wav2vec2-tiny"
    with pytest.raises(FileNotFoundError):
        load_exits_model(tmp_path / "none.safetensors")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ExitsError, match="bad.ckpt"):
        load_exits_model(bad)


def test_an_absurd_backbone_config_or_nan_weights_are_refused_before_building(tmp_path):
    import json
    import resource

    from safetensors.torch import save_file

    from wav2small.models.exits import ExitsError, exits_info, load_exits_model

    torch.manual_seed(0)
    model = create_exits_model("random:wav2vec2-tiny", task="adv", exits=(1,))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    info = exits_info(model)
    config = json.loads(info["config"])
    config["backbone_config"]["hidden_size"] = 10**9  # terabytes if it were allocated
    info["config"] = json.dumps(config)
    save_file(state, tmp_path / "huge.safetensors", metadata=info)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    refused = "huge.safetensors: its (config declares .* parameters|model config cannot be built)"
    with pytest.raises(ExitsError, match=refused):
        load_exits_model(tmp_path / "huge.safetensors")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000  # KB
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, tmp_path / "nan.safetensors", metadata=exits_info(model))
    with pytest.raises(ExitsError, match=f"nan.safetensors: weight '{key}' has NaN"):
        load_exits_model(tmp_path / "nan.safetensors")
