"""Hub-style student folders: layout, card metadata, wav2small.load(folder or hub id) offline."""

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

import wav2small
from wav2small import LABELS, SAMPLE_RATE
from wav2small.export import export
from wav2small.hub import MODEL_TYPE, resolve_model
from wav2small.infer import Predictor
from wav2small.models import create_model, load_model
from wav2small.signals import pseudo_speech, pseudo_speech_set


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1)
    m = create_model("wav2small-tiny")
    m.train()
    with torch.no_grad():
        for clip in pseudo_speech_set(3, seed=5):
            m(torch.from_numpy(clip)[None])
    return m.eval()


@pytest.fixture(scope="module")
def folder(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("student")
    export(model, out, int8=True, gate_int8=False, card={"untrained": True})
    return out


@pytest.fixture(scope="module")
def wav(tmp_path_factory):
    path = tmp_path_factory.mktemp("audio") / "a.wav"
    sf.write(path, pseudo_speech(3.0, rng=np.random.default_rng(2)), SAMPLE_RATE)
    return path


def test_layout_config_and_card_metadata(folder):
    for name in ("config.json", "model.safetensors", "model.onnx", "model.int8.onnx", "README.md"):
        assert (folder / name).is_file(), name
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == MODEL_TYPE and config["preset"] == "wav2small-tiny"
    assert config["labels"] == list(LABELS) and config["sample_rate"] == SAMPLE_RATE
    assert config["files"]["int8"] == "model.int8.onnx"
    _, meta, body = (folder / "README.md").read_text().split("---\n", 2)
    meta = yaml.safe_load(meta)
    assert meta["library_name"] == "wav2small" and meta["pipeline_tag"] == "audio-classification"
    assert "untrained" in meta["tags"] and meta["wav2small"]["labels"] == list(LABELS)
    assert body.lstrip().startswith("# Model card: wav2small-tiny")


def test_safetensors_weights_are_the_model(model, folder):
    x = torch.from_numpy(pseudo_speech(2.0, rng=np.random.default_rng(0)))[None]
    with torch.no_grad():
        assert torch.allclose(load_model(folder / "model.safetensors")(x), model(x), atol=1e-6)


def test_load_folder_picks_int8_fp32_or_torch(folder, wav):
    assert resolve_model(folder) == str(folder / "model.int8.onnx")
    assert resolve_model(folder, variant="fp32") == str(folder / "model.onnx")
    assert resolve_model(folder, backend="torch") == str(folder / "model.safetensors")
    got = wav2small.load(folder).predict(wav, progress=False)
    want = Predictor(folder / "model.int8.onnx").predict(wav, progress=False)
    assert np.array_equal(got.to_numpy(), want.to_numpy())
    fp32 = wav2small.load(folder, variant="fp32", backend="onnx").predict(wav, progress=False)
    torch_ = wav2small.load(folder, backend="torch").predict(wav, progress=False)
    assert np.abs(fp32.to_numpy() - torch_.to_numpy()).max() < 1e-4
    with pytest.raises(ValueError, match="variant must be one of"):
        resolve_model(folder, variant="fp16")


def _cache(folder, root):
    """huggingface_hub's cache layout for repo org/student (revision main)."""
    repo = root / "models--org--student"
    sha = "0123456789abcdef0123456789abcdef01234567"
    snap = repo / "snapshots" / sha
    snap.mkdir(parents=True)
    for name in ("config.json", "README.md", "model.onnx", "model.int8.onnx"):
        shutil.copy(folder / name, snap / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    return snap


def test_hub_id_loads_offline_from_the_cache_without_torch(folder, wav, tmp_path):
    snap = _cache(folder, tmp_path / "hub")
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None
        import wav2small
        p = wav2small.load("org/student")
        assert p.backend.path == {str(snap / "model.int8.onnx")!r}, p.backend.path
        frame = p.predict({str(wav)!r}, progress=False)
        print(frame.to_json(orient="values"))
        try:
            wav2small.load("org/missing")
        except ValueError as e:
            print("ERROR", e)
        """
    )
    env = {
        **__import__("os").environ,
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HF_HUB_OFFLINE": "1",
    }
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    values, error = run.stdout.strip().splitlines()
    want = Predictor(folder / "model.int8.onnx").predict(wav, progress=False).to_numpy()
    assert np.allclose(json.loads(values), want, atol=1e-7)
    assert error.startswith("ERROR org/missing: not a local folder and not in the Hugging Face")
    assert "HF_HUB_OFFLINE is set" in error


def test_predict_cli_takes_a_student_folder(folder, wav, tmp_path):
    from wav2small.cli import main
    from wav2small.infer import read_table

    out = tmp_path / "p.csv"
    assert main(["predict", str(folder), str(wav), "--out", str(out)]) == 0
    want = Predictor(folder / "model.int8.onnx").predict(wav, progress=False)
    assert np.allclose(read_table(out).to_numpy(), want.to_numpy(), atol=1e-6)
