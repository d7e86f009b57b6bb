"""Teachers: tiny random checkpoints in the exact public Hugging Face layouts, loaded by path.

The reference models below are written from the public code (audEERING's model card for Dawn;
pipeline_utils.py / MSP-Podcast_Challenge net/pooling.py + net/ser.py for WavLM-Odyssey), not
from wav2small, and their random weights are saved under the public key names.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wav2small import LABELS, SAMPLE_RATE
from wav2small import teachers as T
from wav2small.signals import pseudo_speech_set

# transformers' WavLM (used directly by the reference model) mixes mask types; not our code.
pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")

# --- Dawn: the public config.json, shrunk to tiny sizes -------------------------------------------
DAWN_CONFIG = {
    "_name_or_path": "audeering/wav2vec2-large-robust-12-ft-emotion-msp-dim",
    "activation_dropout": 0.1,
    "adapter_kernel_size": 3,
    "adapter_stride": 2,
    "add_adapter": False,
    "apply_spec_augment": True,
    "architectures": ["Wav2Vec2ForSpeechClassification"],
    "attention_dropout": 0.1,
    "bos_token_id": 1,
    "classifier_proj_size": 256,
    "codevector_dim": 768,
    "contrastive_logits_temperature": 0.1,
    "conv_bias": True,
    "conv_dim": [512] * 7,
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "ctc_loss_reduction": "sum",
    "ctc_zero_infinity": False,
    "diversity_loss_weight": 0.1,
    "do_stable_layer_norm": True,
    "eos_token_id": 2,
    "feat_extract_activation": "gelu",
    "feat_extract_dropout": 0.0,
    "feat_extract_norm": "layer",
    "feat_proj_dropout": 0.1,
    "feat_quantizer_dropout": 0.0,
    "final_dropout": 0.1,
    "finetuning_task": "wav2vec2_reg",
    "gradient_checkpointing": False,
    "hidden_act": "gelu",
    "hidden_dropout": 0.1,
    "hidden_dropout_prob": 0.1,
    "hidden_size": 1024,
    "id2label": {"0": "arousal", "1": "dominance", "2": "valence"},
    "initializer_range": 0.02,
    "intermediate_size": 4096,
    "label2id": {"arousal": 0, "dominance": 1, "valence": 2},
    "layer_norm_eps": 1e-05,
    "layerdrop": 0.1,
    "mask_feature_length": 10,
    "mask_feature_prob": 0.0,
    "mask_time_length": 10,
    "mask_time_prob": 0.05,
    "model_type": "wav2vec2",
    "num_adapter_layers": 3,
    "num_attention_heads": 16,
    "num_codevector_groups": 2,
    "num_codevectors_per_group": 320,
    "num_conv_pos_embedding_groups": 16,
    "num_conv_pos_embeddings": 128,
    "num_feat_extract_layers": 7,
    "num_hidden_layers": 12,
    "num_negatives": 100,
    "output_hidden_size": 1024,
    "pad_token_id": 0,
    "pooling_mode": "mean",
    "problem_type": "regression",
    "proj_codevector_dim": 768,
    "torch_dtype": "float32",
    "transformers_version": "4.17.0.dev0",
    "use_weighted_layer_sum": False,
    "vocab_size": None,
    "xvector_output_dim": 512,
}
TINY_W2V2 = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "conv_dim": [32] * 7,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
    "output_hidden_size": 32,
}
DAWN_PREPROCESSOR = {
    "do_normalize": True,
    "feature_extractor_type": "Wav2Vec2FeatureExtractor",
    "feature_size": 1,
    "padding_side": "right",
    "padding_value": 0.0,
    "processor_class": "Wav2Vec2Processor",
    "return_attention_mask": True,
    "sampling_rate": 16000,
}

# --- WavLM-Odyssey: the public config.json (+ our optional `ssl_config` for a tiny backbone) ------
ODYSSEY_CONFIG = {
    "architectures": ["SERModel"],
    "auto_map": {
        "AutoConfig": "pipeline_utils.SERConfig",
        "AutoModelForAudioClassification": "pipeline_utils.SERModel",
    },
    "classifier_dropout_prob": 0.5,
    "classifier_hidden_layers": 1,
    "hidden_size": 32,
    "id2label": {"0": "arousal", "1": "dominance", "2": "valence"},
    "label2id": {"arousal": 0, "dominance": 1, "valence": 2},
    "maxlen": 192000,
    "mean": -8.278621631819787e-05,
    "model_type": "ser",
    "num_attention_heads": 4,
    "num_classes": 3,
    "num_hidden_layers": 2,
    "sampling_rate": 16000,
    "ssl_type": "microsoft/wavlm-large",
    "std": 0.08485510250851999,
    "torch_dtype": "float32",
    "transformers_version": "4.34.0.dev0",
}
TINY_WAVLM = {
    "conv_dim": [32] * 7,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
    "num_buckets": 32,
    "max_bucket_distance": 64,
}


def _legacy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weight-norm keys as transformers 4.17–4.34 saved them (weight_g / weight_v)."""
    out = {}
    for k, v in state.items():
        k = k.replace("parametrizations.weight.original0", "weight_g")
        k = k.replace("parametrizations.weight.original1", "weight_v")
        out[k] = v.detach().clone().contiguous()
    return out


def _save(folder, config, state, *, fmt="safetensors", extra=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    for name, content in (extra or {}).items():
        (folder / name).write_text(json.dumps(content))
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(state, folder / "pytorch_model.bin")
    return folder


# --- independent reference: Dawn (audEERING model card) -------------------------------------------
class RefRegressionHead(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.final_dropout)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, features):
        x = self.dropout(features)
        x = torch.tanh(self.dense(x))
        return self.out_proj(self.dropout(x))


class RefEmotionModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        from transformers import Wav2Vec2Model

        self.wav2vec2 = Wav2Vec2Model(config)
        self.classifier = RefRegressionHead(config)

    def forward(self, input_values):
        hidden = self.wav2vec2(input_values)[0]
        return self.classifier(hidden.mean(dim=1))


def _ref_dawn_predict(model, wave: np.ndarray) -> np.ndarray:
    from transformers import Wav2Vec2FeatureExtractor

    processor = Wav2Vec2FeatureExtractor(
        **{
            k: v
            for k, v in DAWN_PREPROCESSOR.items()
            if k not in ("feature_extractor_type", "processor_class")
        }
    )
    x = processor(wave, sampling_rate=SAMPLE_RATE)["input_values"][0]
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(x, dtype=np.float32))[None]).numpy()[0]


# --- independent reference: WavLM-Odyssey (pipeline_utils.py) -------------------------------------
class RefASP(nn.Module):
    def __init__(self, input_size):
        super().__init__()
        self.sap_linear = nn.Linear(input_size, input_size)
        self.attention = nn.Parameter(torch.FloatTensor(input_size, 1))
        torch.nn.init.normal_(self.attention, mean=0, std=1)

    def forward(self, xs, mask):
        feat_lens = torch.div(mask.sum(1) - 1, 16000 * 0.02, rounding_mode="floor") + 1
        pooled = []
        for x, n in zip(xs, feat_lens.int().tolist(), strict=True):
            x = x[:n].unsqueeze(0)
            h = torch.tanh(self.sap_linear(x))
            w = torch.matmul(h, self.attention).squeeze(dim=2)
            w = F.softmax(w, dim=1).view(x.size(0), x.size(1), 1)
            mu = torch.sum(x * w, dim=1)
            rh = torch.sqrt((torch.sum((x**2) * w, dim=1) - mu**2).clamp(min=1e-5))
            pooled.append(torch.cat((mu, rh), 1).squeeze(0))
        return torch.stack(pooled)


class RefEmotionRegression(nn.Module):
    def __init__(self, input_dim, hidden_dim, num_layers, output_dim, dropout=0.5):
        super().__init__()
        self.fc = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Linear(input_dim, hidden_dim),
                    nn.LayerNorm(hidden_dim),
                    nn.ReLU(),
                    nn.Dropout(dropout),
                )
            ]
        )
        for _ in range(num_layers - 1):
            self.fc.append(
                nn.Sequential(
                    nn.Linear(hidden_dim, hidden_dim),
                    nn.LayerNorm(hidden_dim),
                    nn.ReLU(),
                    nn.Dropout(dropout),
                )
            )
        self.out = nn.Sequential(nn.Linear(hidden_dim, output_dim))
        self.inp_drop = nn.Dropout(dropout)

    def forward(self, x):
        h = self.inp_drop(x)
        for fc in self.fc:
            h = fc(h)
        return self.out(h)


class RefSERModel(nn.Module):
    def __init__(self, wavlm_config, config):
        super().__init__()
        from transformers import WavLMModel

        self.ssl_model = WavLMModel(wavlm_config)
        self.pool_model = RefASP(config["hidden_size"])
        self.ser_model = RefEmotionRegression(
            config["hidden_size"] * 2,
            config["hidden_size"],
            config["classifier_hidden_layers"],
            config["num_classes"],
            dropout=config["classifier_dropout_prob"],
        )

    def forward(self, x, mask):
        ssl = self.ssl_model(x, attention_mask=mask).last_hidden_state
        return self.ser_model(self.pool_model(ssl, mask))


def _ref_odyssey_predict(model, config, wave: np.ndarray) -> np.ndarray:
    norm = (wave - config["mean"]) / (config["std"] + 0.000001)
    x = torch.from_numpy(norm.astype(np.float32))[None]
    with torch.no_grad():
        return model(x, torch.ones(1, len(norm))).numpy()[0]


# --- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    return pseudo_speech_set(3, seed=3, seconds=(0.4, 1.3))


def _dawn_folder(root, *, fmt="safetensors", seed=0):
    from transformers import Wav2Vec2Config

    torch.manual_seed(seed)
    config = {**DAWN_CONFIG, **TINY_W2V2}
    ref = RefEmotionModel(Wav2Vec2Config.from_dict(config)).eval()
    with torch.no_grad():  # make the head's output vary visibly with the input
        ref.classifier.out_proj.weight.mul_(20)
    state = _legacy(ref.state_dict())
    folder = _save(
        root / "dawn",
        config,
        state,
        fmt=fmt,
        extra={"preprocessor_config.json": DAWN_PREPROCESSOR, "vocab.json": {}},
    )
    return folder, ref, state


def _odyssey_folder(root, *, seed=0, config=None, ssl=None):
    from transformers import WavLMConfig

    torch.manual_seed(seed)
    config = {**ODYSSEY_CONFIG, **(config or {})}
    if ssl is not None:
        config["ssl_config"] = ssl
    fields = {
        **T.WAVLM_LARGE,
        "hidden_size": config["hidden_size"],
        "num_hidden_layers": config["num_hidden_layers"],
        "num_attention_heads": config["num_attention_heads"],
        "intermediate_size": 4 * config["hidden_size"],
        **(ssl or {}),
    }
    ref = RefSERModel(WavLMConfig(**fields), config).eval()
    state = _legacy(ref.state_dict())
    folder = _save(
        root / "odyssey", config, state, extra={"preprocessor_config.json": {"mean": 10}}
    )
    return folder, ref, state, config


@pytest.fixture(scope="module")
def dawn(tmp_path_factory):
    return _dawn_folder(tmp_path_factory.mktemp("dawn"))


@pytest.fixture(scope="module")
def odyssey(tmp_path_factory):
    return _odyssey_folder(tmp_path_factory.mktemp("ody"), ssl=TINY_WAVLM)


# --- Dawn -----------------------------------------------------------------------------------------
def test_dawn_checkpoint_has_public_key_names(dawn):
    _, _, state = dawn
    assert "classifier.dense.weight" in state and "classifier.out_proj.bias" in state
    assert "wav2vec2.encoder.pos_conv_embed.conv.weight_g" in state
    assert "wav2vec2.feature_extractor.conv_layers.0.conv.bias" in state  # conv_bias: true
    assert all(k.split(".")[0] in ("wav2vec2", "classifier") for k in state)


def test_dawn_loads_by_path_and_matches_reference(dawn, clips):
    folder, ref, _ = dawn
    teacher = T.load_teacher(folder)
    assert isinstance(teacher, T.Wav2Vec2Teacher) and not teacher.training
    assert teacher.name == str(folder)
    for wave in clips:
        with torch.no_grad():
            ours = teacher(torch.from_numpy(wave)[None]).numpy()[0]
        np.testing.assert_allclose(ours, _ref_dawn_predict(ref, wave), atol=1e-4, rtol=1e-4)


def test_dawn_pytorch_model_bin_is_read_weights_only(tmp_path, clips):
    folder, ref, _ = _dawn_folder(tmp_path, fmt="bin", seed=1)
    assert not (folder / "model.safetensors").exists()
    teacher = T.load_teacher(folder)
    with torch.no_grad():
        ours = teacher(torch.from_numpy(clips[0])[None]).numpy()[0]
    np.testing.assert_allclose(ours, _ref_dawn_predict(ref, clips[0]), atol=1e-4, rtol=1e-4)


def test_padding_does_not_change_outputs(dawn, odyssey, clips):
    batch, lengths = T.pad_batch([torch.from_numpy(c) for c in clips])
    for folder in (dawn[0], odyssey[0]):
        teacher = T.load_teacher(folder)
        with torch.no_grad():
            together = teacher(batch, lengths)
            alone = torch.cat([teacher(torch.from_numpy(c)[None]) for c in clips])
            masked = teacher(batch, mask=T.time_mask(lengths, batch.shape[1]))
        assert together.shape == (len(clips), 3)
        assert torch.allclose(together, alone, atol=1e-4), (folder, together - alone)
        assert torch.allclose(masked, together)
        assert together.std(0).min() > 1e-4  # outputs really depend on the clip


def test_id2label_order_is_applied(tmp_path, clips):
    folder, _, _ = _dawn_folder(tmp_path, seed=2)
    wave = torch.from_numpy(clips[1])[None]
    with torch.no_grad():
        base = T.load_teacher(folder)(wave)[0]
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {"0": "valence", "1": "arousal", "2": "dominance"}
    (folder / "config.json").write_text(json.dumps(config))
    with torch.no_grad():
        swapped = T.load_teacher(folder)(wave)[0]
    # output 0 is now called valence, 1 arousal, 2 dominance: reorder to A/D/V
    assert torch.allclose(swapped, base[[1, 2, 0]])


# --- WavLM-Odyssey --------------------------------------------------------------------------------
def test_odyssey_checkpoint_has_public_key_names(odyssey):
    _, _, state, _ = odyssey
    for key in (
        "pool_model.sap_linear.weight",
        "pool_model.attention",
        "ser_model.fc.0.0.weight",
        "ser_model.fc.0.1.weight",
        "ser_model.out.0.bias",
        "ssl_model.encoder.pos_conv_embed.conv.weight_v",
        "ssl_model.encoder.layers.0.attention.rel_attn_embed.weight",
    ):
        assert key in state
    assert "ssl_model.feature_extractor.conv_layers.0.conv.bias" not in state  # wavlm-large


def test_odyssey_loads_by_path_and_matches_reference(odyssey, clips):
    folder, ref, _, config = odyssey
    teacher = T.load_teacher(folder)
    assert isinstance(teacher, T.WavLMTeacher)
    for wave in clips:
        with torch.no_grad():
            ours = teacher(torch.from_numpy(wave)[None]).numpy()[0]
        np.testing.assert_allclose(
            ours, _ref_odyssey_predict(ref, config, wave), atol=1e-4, rtol=1e-4
        )


def test_odyssey_public_config_without_ssl_override_builds_wavlm_large_layout(tmp_path, clips):
    # only the public fields: backbone conv stack is wavlm-large's (512 channels, no bias)
    folder, ref, _, config = _odyssey_folder(tmp_path, seed=3, config={"num_hidden_layers": 1})
    teacher = T.load_teacher(folder)
    assert teacher.ssl_model.config.conv_dim == [512] * 7
    with torch.no_grad():
        ours = teacher(torch.from_numpy(clips[0])[None]).numpy()[0]
    np.testing.assert_allclose(
        ours, _ref_odyssey_predict(ref, config, clips[0]), atol=1e-4, rtol=1e-4
    )


# --- ensemble, long audio, save -------------------------------------------------------------------
def test_ensemble_is_the_mean_and_clips(dawn, odyssey, clips):
    wave = torch.from_numpy(clips[2])[None]
    a, b = T.load_teacher(dawn[0]), T.load_teacher(odyssey[0])
    ens = T.load_teacher(f"ensemble:{dawn[0]}+{odyssey[0]}")
    assert ens.name == f"ensemble:{dawn[0]}+{odyssey[0]}"
    with torch.no_grad():
        expected = (a(wave) + b(wave)) / 2
        assert torch.allclose(ens(wave), expected, atol=1e-6)
        clipped = T.load_teacher(f"ensemble:{dawn[0]}+{odyssey[0]}", clip=True)(wave)
    assert torch.allclose(clipped, expected.clamp(0, 1))


def test_long_audio_is_windowed_and_averaged(dawn, clips):
    teacher = T.load_teacher(dawn[0])
    teacher.window_seconds = 0.5
    wave = torch.from_numpy(np.concatenate(clips))  # 3 windows of equal size (≤ 0.5 s)
    n = len(wave)
    k = int(np.ceil(n / (0.5 * SAMPLE_RATE)))
    size = int(np.ceil(n / k))
    with torch.no_grad():
        got = teacher(wave[None])[0]
        parts = [teacher(wave[None, i * size : min(n, (i + 1) * size)])[0] for i in range(k)]
    assert torch.allclose(got, torch.stack(parts).mean(0), atol=1e-5)


def test_sub_batching_respects_budget(dawn, clips):
    teacher = T.load_teacher(dawn[0])
    batch, lengths = T.pad_batch([torch.from_numpy(c) for c in clips])
    with torch.no_grad():
        full = teacher(batch, lengths)
        teacher.max_batch_seconds = 0.01  # forces one clip per backbone call
        calls = []
        original = teacher.forward_batch
        teacher.forward_batch = lambda w, n: calls.append(w.shape[0]) or original(w, n)
        split = teacher(batch, lengths)
    assert max(calls) == 1 and len(calls) == len(clips)
    assert torch.allclose(full, split, atol=1e-5)


def test_save_teacher_round_trip_keeps_public_layout(tmp_path, dawn, odyssey, clips):
    wave = torch.from_numpy(clips[0])[None]
    for folder in (dawn[0], odyssey[0]):
        teacher = T.load_teacher(folder)
        out = T.save_teacher(teacher, tmp_path / folder.name)
        from safetensors.torch import load_file

        saved = load_file(str(out / "model.safetensors"))
        original = T.read_weights(folder)
        assert set(saved) == set(original)
        assert (
            json.loads((out / "config.json").read_text())["model_type"]
            == json.loads((folder / "config.json").read_text())["model_type"]
        )
        with torch.no_grad():
            assert torch.allclose(T.load_teacher(out)(wave), teacher(wave))
    ens = T.load_teacher(f"ensemble:{dawn[0]}+{odyssey[0]}", clip=True)
    out = T.save_teacher(ens, tmp_path / "ens")
    again = T.load_teacher(out)
    assert isinstance(again, T.EnsembleTeacher) and again.clip
    with torch.no_grad():
        assert torch.allclose(again(wave), ens(wave))
    assert not list(tmp_path.rglob("*.tmp"))


def test_synth_teacher_padding_invariance_and_round_trip(tmp_path, clips):
    torch.manual_seed(0)
    teacher = T.SynthTeacher({"channels": [4, 8, 8, 8], "gru_hidden": 8}).eval()
    batch, lengths = T.pad_batch([torch.from_numpy(c) for c in clips])
    with torch.no_grad():
        together = teacher(batch, lengths)
        alone = torch.cat([teacher(torch.from_numpy(c)[None]) for c in clips])
    assert torch.allclose(together, alone, atol=1e-5)
    out = T.save_teacher(teacher, tmp_path / "synth")
    again = T.load_teacher(out)
    assert isinstance(again, T.SynthTeacher)
    with torch.no_grad():
        assert torch.allclose(again(batch, lengths), together)


# --- the one teacher-inference helper ------------------------------------------------------------
def _synth(seed: int = 0) -> T.SynthTeacher:
    torch.manual_seed(seed)
    teacher = T.SynthTeacher({"channels": [4, 8, 8, 8], "gru_hidden": 8}).eval()
    with torch.no_grad():  # a random head hardly varies; amplify so comparisons bite
        [m for m in teacher.modules() if isinstance(m, torch.nn.Linear)][-1].weight.mul_(50)
    return teacher


def test_teacher_predict_equals_the_module_clip_by_clip(clips):
    teacher = _synth()
    with torch.no_grad():
        alone = np.stack([teacher(torch.from_numpy(c)[None])[0].numpy() for c in clips])
    got = T.teacher_predict(teacher, clips)
    assert got.dtype == np.float32 and got.shape == (len(clips), len(LABELS))
    np.testing.assert_allclose(got, alone, atol=1e-5)
    assert np.ptp(got, axis=0).max() > 1e-3  # outputs depend on the clip
    # a budget of one clip per call gives the same numbers, in input order
    calls = []
    original = teacher.forward
    teacher.forward = lambda w, n: calls.append(w.shape[0]) or original(w, n)
    one_each = T.teacher_predict(teacher, clips, batch_seconds=0.01)
    assert calls == [1] * len(clips)
    np.testing.assert_allclose(one_each, got, atol=1e-5)
    assert T.teacher_predict(teacher, []).shape == (0, len(LABELS))


def test_teacher_predict_files_streams_long_files_like_forward(tmp_path, clips):
    import soundfile as sf

    teacher = _synth(1)
    teacher.window_seconds = 0.5  # the 2.9 s file below is "long": 6 equal pieces
    long = np.concatenate([*clips, *clips[:2]])
    paths = []
    for i, x in enumerate([clips[0], long, clips[1]]):
        sf.write(tmp_path / f"{i}.wav", x, SAMPLE_RATE, subtype="FLOAT")
        paths.append(str(tmp_path / f"{i}.wav"))
    with torch.no_grad():
        expected = np.stack(
            [teacher(torch.from_numpy(x)[None])[0].numpy() for x in (clips[0], long, clips[1])]
        )
    got = T.teacher_predict_files(teacher, paths, batch_seconds=1.0)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_teacher_predict_names_the_clip_with_non_finite_outputs(tmp_path, clips):
    teacher = _synth()
    with torch.no_grad():
        next(teacher.parameters()).fill_(float("nan"))
    with pytest.raises(ValueError, match=r"[ab]\.wav: teacher .* non-finite .*\(and 1 more\)"):
        T.teacher_predict(teacher, clips[:2], names=["a.wav", "b.wav"])
    with pytest.raises(ValueError, match="clip 0: teacher"):
        T.teacher_predict(teacher, clips[:1])

    class Wrong(torch.nn.Module):
        def forward(self, wave, lengths):
            return torch.zeros(wave.shape[0], 2)

    with pytest.raises(ValueError, match=r"shape \(1, 2\)"):
        T.teacher_predict(Wrong(), clips[:1])
    with pytest.raises(ValueError, match="2 names for 1 clips"):
        T.teacher_predict(teacher, clips[:1], names=["a", "b"])


def test_public_load_teacher(tmp_path, clips):
    import wav2small

    assert "load_teacher" in wav2small.__all__
    out = T.save_teacher(_synth(2), tmp_path / "synth")
    teacher = wav2small.load_teacher(out)
    assert isinstance(teacher, T.SynthTeacher) and not teacher.training
    assert teacher.name == str(out)
    np.testing.assert_allclose(
        T.teacher_predict(teacher, clips), T.teacher_predict(_synth(2), clips), atol=1e-6
    )
    with pytest.raises(T.TeacherError):
        wav2small.load_teacher(tmp_path / "nothing-here")


# --- errors ---------------------------------------------------------------------------------------
def test_offline_hub_id_names_the_id(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(T.TeacherError, match="wav2small-test/no-such-teacher.*HF_HUB_OFFLINE"):
        T.load_teacher("wav2small-test/no-such-teacher")


def test_unreachable_hub_falls_back_to_cache_then_names_the_id(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False, raising=False)
    calls = []

    def fail(repo_id, patterns, local_only):
        calls.append(local_only)
        raise ConnectionError("no route to host")

    monkeypatch.setattr("wav2small.teachers.resolve._snapshot", fail)
    with pytest.raises(T.TeacherError, match="'org/model'.*could not be reached"):
        T.load_teacher("org/model")
    assert calls == [False, True]


def test_missing_and_unexpected_keys_are_listed(tmp_path, dawn):
    folder, _, state = dawn
    broken = dict(state)
    broken.pop("classifier.dense.weight")
    broken["classifier.extra.weight"] = torch.zeros(1)
    config = json.loads((folder / "config.json").read_text())
    _save(tmp_path / "broken", config, broken)
    with pytest.raises(
        T.TeacherError,
        match="missing keys: classifier.dense.weight.*unexpected keys: classifier.extra.weight",
    ):
        T.load_teacher(tmp_path / "broken")


def test_bad_folders_raise_clear_errors(tmp_path):
    with pytest.raises(T.TeacherError, match="no such folder"):
        T.load_teacher(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(T.TeacherError, match="no config.json"):
        T.load_teacher(tmp_path / "empty")
    _save(tmp_path / "odd", {"model_type": "bert"}, {"x": torch.zeros(1)})
    with pytest.raises(T.TeacherError, match="unknown teacher layout"):
        T.load_teacher(tmp_path / "odd")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text(json.dumps(DAWN_CONFIG))
    with pytest.raises(T.TeacherError, match="no model.safetensors or pytorch_model.bin"):
        T.load_teacher(tmp_path / "noweights")
    with pytest.raises(T.TeacherError, match="two or more members"):
        T.load_teacher("ensemble:dawn")


def test_bad_input_shapes_raise():
    teacher = T.SynthTeacher({"channels": [4, 4, 4, 4], "gru_hidden": 4}).eval()
    with pytest.raises(ValueError, match=r"\(batch, samples\)"):
        teacher(torch.zeros(16000))
    with pytest.raises(ValueError, match="lengths must lie"):
        teacher(torch.zeros(2, 16000), torch.tensor([16000, 0]))


def test_labels_constant_order():
    assert T.Teacher.labels == LABELS == ("arousal", "dominance", "valence")


def test_saved_dawn_folder_loads_with_transformers_from_pretrained(tmp_path, dawn, clips):
    # the model card's own loading path (EmotionModel.from_pretrained) reads what we write
    from transformers import Wav2Vec2Model

    teacher = T.load_teacher(dawn[0])
    out = T.save_teacher(teacher, tmp_path / "dawn-saved")
    backbone = Wav2Vec2Model.from_pretrained(out).eval()
    x = T.normalise_per_utterance(torch.from_numpy(clips[0])[None], torch.tensor([len(clips[0])]))
    with torch.no_grad():
        assert torch.allclose(
            backbone(x).last_hidden_state, teacher.wav2vec2(x).last_hidden_state, atol=1e-5
        )


# --- package layout -----------------------------------------------------------------------------
def test_old_import_paths_are_the_same_objects():
    import wav2small
    import wav2small.models.teacher as old
    import wav2small.onnx_teacher as old_onnx
    from wav2small.teachers import loader, onnx

    assert old.load_teacher is loader.load_teacher is T.load_teacher
    assert old.SynthTeacher is T.SynthTeacher and old.TeacherError is T.TeacherError
    assert old_onnx.OnnxTeacher is onnx.OnnxTeacher
    assert set(old.__all__) == set(T.__all__)
    with pytest.raises(AttributeError):
        T.no_such_name  # noqa: B018
    assert callable(wav2small.load_teacher)


def test_onnx_teachers_import_without_torch():
    code = "import sys, wav2small.teachers.onnx; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- helpers without a test of their own (teachers/loader.py, teachers/base.py) --------------
def test_teacher_kind_reads_the_config_and_lengths_are_checked():
    from wav2small.teachers.base import lengths_from
    from wav2small.teachers.loader import teacher_kind

    assert teacher_kind({"model_type": "wav2vec2"}) == "dawn"
    assert teacher_kind({"architectures": ["SERModel"]}) == "odyssey"
    assert teacher_kind({"model_type": "wav2small-synth-teacher"}) == "synth"
    assert teacher_kind({"model_type": "wav2small-ensemble"}) == "ensemble"
    assert teacher_kind({"model_type": "bert"}) == ""
    wave = torch.zeros(2, 100)
    assert lengths_from(wave).tolist() == [100, 100]
    assert lengths_from(wave, mask=torch.arange(100).expand(2, 100) < 40).tolist() == [40, 40]
    with pytest.raises(ValueError, match=r"lie in \[1, 100\]"):
        lengths_from(wave, [0, 100])
    with pytest.raises(ValueError, match="batch, samples"):
        lengths_from(torch.zeros(100))


# --- embeddings (forward(..., embedding=True)) ----------------------------------------------------
def _ref_dawn_embedding(ref, wave: np.ndarray) -> np.ndarray:
    """audEERING's ``hidden_states``: the mean over time of the last hidden state."""
    x = (wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)
    with torch.no_grad():
        return ref.wav2vec2(torch.from_numpy(x.astype(np.float32))[None])[0].mean(1)[0].numpy()


def _ref_odyssey_embedding(ref, config, wave: np.ndarray) -> np.ndarray:
    """The Odyssey baseline's ``pool_model`` output (the input of ``ser_model``)."""
    x = torch.from_numpy(((wave - config["mean"]) / (config["std"] + 1e-6)).astype(np.float32))
    mask = torch.ones(1, len(wave))
    with torch.no_grad():
        ssl = ref.ssl_model(x[None], attention_mask=mask).last_hidden_state
        return ref.pool_model(ssl, mask)[0].numpy()


def test_embedding_is_what_the_head_reads(dawn, odyssey, clips):
    batch, lengths = T.pad_batch([torch.from_numpy(c) for c in clips])
    synth = _synth(3)
    d, o = T.load_teacher(dawn[0]), T.load_teacher(odyssey[0])
    heads = {
        "synth": (synth, synth.head, 2 * 2 * 8),
        "dawn": (d, d.classifier, TINY_W2V2["hidden_size"]),
        "odyssey": (o, o.ser_model, 2 * ODYSSEY_CONFIG["hidden_size"]),
    }
    for name, (teacher, head, dim) in heads.items():
        assert teacher.embedding_dim == dim, name
        with torch.no_grad():
            adv, emb = teacher(batch, lengths, embedding=True)
            plain = teacher(batch, lengths)
            alone = torch.cat(
                [
                    teacher(batch[i : i + 1, :n], embedding=True)[1]
                    for i, n in enumerate(lengths.tolist())
                ]
            )
            assert torch.allclose(head(emb), adv, atol=1e-5), name
        assert emb.shape == (len(clips), dim) and emb.dtype == torch.float32, name
        assert torch.allclose(adv, plain, atol=1e-6), name
        assert torch.allclose(emb, alone, atol=1e-5), name  # padding invariant too
        assert emb.std(0).max() > 1e-4, name  # depends on the clip
    # against the public code's pooled vectors (not through wav2small)
    np.testing.assert_allclose(
        emb_of(d, clips[1]), _ref_dawn_embedding(dawn[1], clips[1]), atol=1e-4
    )
    np.testing.assert_allclose(
        emb_of(o, clips[1]), _ref_odyssey_embedding(odyssey[1], odyssey[3], clips[1]), atol=1e-4
    )


def emb_of(teacher, clip: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return teacher(torch.from_numpy(clip)[None], embedding=True)[1][0].numpy()


def test_embedding_of_a_reordered_head_keeps_adv_order(tmp_path, clips):
    folder, _, _ = _dawn_folder(tmp_path, seed=2)
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {"0": "valence", "1": "arousal", "2": "dominance"}
    (folder / "config.json").write_text(json.dumps(config))
    teacher = T.load_teacher(folder)
    with torch.no_grad():
        adv, emb = teacher(torch.from_numpy(clips[0])[None], embedding=True)
        assert torch.allclose(teacher.classifier(emb)[:, [1, 2, 0]], adv, atol=1e-6)


def test_long_clip_averages_the_window_embeddings(dawn, clips):
    for teacher in (T.load_teacher(dawn[0]), _synth(4)):
        teacher.window_seconds = 0.5
        wave = torch.from_numpy(np.concatenate(clips))
        n = len(wave)
        k = int(np.ceil(n / (0.5 * SAMPLE_RATE)))
        size = int(np.ceil(n / k))
        assert k > 1
        with torch.no_grad():
            adv, emb = teacher(wave[None], embedding=True)
            parts = [
                teacher(wave[None, i * size : min(n, (i + 1) * size)], embedding=True)
                for i in range(k)
            ]
        assert torch.allclose(adv[0], torch.stack([p[0][0] for p in parts]).mean(0), atol=1e-5)
        assert torch.allclose(emb[0], torch.stack([p[1][0] for p in parts]).mean(0), atol=1e-5)
        assert not torch.allclose(parts[0][1], parts[1][1], atol=1e-4)  # windows differ


def test_ensemble_embedding_is_the_members_in_order(dawn, odyssey, clips):
    wave = torch.from_numpy(clips[2])[None]
    a, b = T.load_teacher(dawn[0]), T.load_teacher(odyssey[0])
    ens = T.load_teacher(f"ensemble:{dawn[0]}+{odyssey[0]}", clip=True)
    assert ens.embedding_dim == a.embedding_dim + b.embedding_dim
    with torch.no_grad():
        adv, emb = ens(wave, embedding=True)
        assert torch.allclose(adv, ens(wave))
        assert torch.allclose(adv, ((a(wave) + b(wave)) / 2).clamp(0, 1), atol=1e-6)
        want = torch.cat([a(wave, embedding=True)[1], b(wave, embedding=True)[1]], dim=1)
    assert torch.allclose(emb, want, atol=1e-6)


def test_teacher_predict_returns_embeddings(dawn, clips):
    teacher = _synth(5)
    adv, emb = T.teacher_predict(teacher, clips, embedding=True, batch_seconds=0.01)
    assert adv.dtype == emb.dtype == np.float32 and emb.shape == (len(clips), 32)
    np.testing.assert_allclose(adv, T.teacher_predict(teacher, clips), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(emb, np.stack([emb_of(teacher, c) for c in clips]), atol=1e-5)
    from wav2small.errors import NonFiniteError

    class NanEmbedding(torch.nn.Module):  # finite A/D/V, NaN embedding for the longest clip
        embedding_dim = 2

        def forward(self, wave, lengths, embedding=False):
            emb = torch.where(lengths[:, None] == lengths.max(), torch.nan, 1.0).repeat(1, 2)
            return wave.new_zeros(len(wave), 3), emb

    lengths = [len(c) for c in clips]
    longest = f"clip {int(np.argmax(lengths))}"
    with pytest.raises(NonFiniteError, match=f"{longest}: teacher .* non-finite"):
        T.teacher_predict(NanEmbedding(), clips, embedding=True)


def test_teacher_without_embedding_says_so_in_one_line(clips):
    class Plain(T.Teacher):
        def forward_batch(self, wave, lengths):
            return wave.new_zeros(wave.shape[0], 3)

    teacher = Plain()
    teacher.name = "plain-one"
    assert teacher.embedding_dim is None
    wave = torch.from_numpy(clips[0])[None]
    assert teacher(wave).shape == (1, 3)
    with pytest.raises(T.TeacherError, match="plain-one.*gives no embedding") as err:
        teacher(wave, embedding=True)
    assert "\n" not in str(err.value)
    with pytest.raises(T.TeacherError, match="gives no embedding"):
        T.teacher_predict(teacher, clips, embedding=True)
