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
    lengths = torch.tensor([24000, 17123, 1600, 700])
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
