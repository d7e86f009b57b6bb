"""ONNX teachers: a tiny Dawn in audEERING's published ONNX layout labels a folder without torch."""

import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from wav2small import LABELS, SAMPLE_RATE
from wav2small.signals import pseudo_speech
from wav2small.teachers import DAWN_ARCHITECTURE, Wav2Vec2Teacher
from wav2small.teachers.onnx import (
    OnnxTeacher,
    OnnxTeacherError,
    _yaml_labels,
    export_dawn_onnx,
    is_onnx_teacher,
)

TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "conv_dim": [32] * 7,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
    # outputs stored in another order: both paths must reorder to arousal, dominance, valence
    "id2label": {"0": "valence", "1": "arousal", "2": "dominance"},
}


@pytest.fixture(scope="module")
def dawn():
    torch.manual_seed(0)
    teacher = Wav2Vec2Teacher({**DAWN_ARCHITECTURE, **TINY}).eval()
    with torch.no_grad():  # outputs that vary visibly with the input
        teacher.classifier.out_proj.weight.mul_(20)
    return teacher


@pytest.fixture(scope="module")
def folder(dawn, tmp_path_factory):
    return export_dawn_onnx(dawn, tmp_path_factory.mktemp("dawn") / "w2v2-L-robust-12")


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(3)
    for i, seconds in enumerate((0.02, 1.0, 3.5, 21.0)):  # below one frame … two windows
        sf.write(root / f"c{i}.wav", pseudo_speech(seconds, rng=rng), SAMPLE_RATE)
    return root


def _torch_labels(teacher, files) -> np.ndarray:
    with torch.no_grad():
        return np.stack(
            [teacher(torch.from_numpy(sf.read(f, dtype="float32")[0])[None])[0] for f in files]
        )


def test_published_layout(folder):
    import onnx

    proto = onnx.load(str(folder / "model.onnx"))
    assert [i.name for i in proto.graph.input] == ["signal"]
    assert [o.name for o in proto.graph.output] == ["hidden_states", "logits"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == 1 and dims[1].dim_param  # [1, -1]
    assert (folder / "model.yaml").read_text().startswith("$audonnx.core.model.Model")
    assert is_onnx_teacher(folder) and not is_onnx_teacher(folder.parent)


def test_onnx_teacher_equals_the_torch_teacher(dawn, folder, audio):
    files = sorted(audio.glob("*.wav"))
    waves = [sf.read(f, dtype="float32")[0] for f in files]
    got = OnnxTeacher(folder).predict_waves(waves)
    want = _torch_labels(dawn, files)
    assert np.abs(got - want).max() < 1e-4
    assert np.ptp(got, axis=0).min() > 1e-3


def test_label_cli_runs_without_torch(dawn, folder, audio, tmp_path):
    out = tmp_path / "labels.parquet"
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None  # any import of torch or transformers fails
        sys.modules["transformers"] = None
        from wav2small.cli import main
        code = main(["label", "--teacher", {str(folder)!r}, "--audio", {str(audio)!r},
                     "--out", {str(out)!r}, "--on-error", "skip"])
        assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
        sys.exit(code)
        """
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    table = pd.read_parquet(out)
    short, *files = sorted(audio.glob("*.wav"))  # c0: 320 samples, below the teacher's 400
    skipped = pd.read_csv(tmp_path / "labels.skipped.csv")
    assert skipped["file"].tolist() == [str(short)] and "too short" in skipped["reason"][0]
    assert list(table["file"]) == [str(f) for f in files]
    assert (table["teacher"] == str(folder)).all()
    want = _torch_labels(dawn, files)
    assert np.abs(table[list(LABELS)].to_numpy() - want).max() < 1e-4


def test_legacy_labels_yaml_and_yaml_without_pyyaml(folder, tmp_path, monkeypatch):
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    shutil.copy(folder / "model.onnx", legacy / "model.onnx")
    (legacy / "labels.yaml").write_text("logits: [dominance, valence, arousal]\n")
    teacher = OnnxTeacher(legacy)
    assert teacher.order == [2, 0, 1]
    text = (folder / "model.yaml").read_text()
    monkeypatch.setitem(sys.modules, "yaml", None)
    assert _yaml_labels(text, "logits") == list(LABELS)
    assert _yaml_labels("logits: [valence, arousal, dominance]\n", "logits") == [
        "valence",
        "arousal",
        "dominance",
    ]


def test_errors_name_the_folder(folder, tmp_path):
    with pytest.raises(OnnxTeacherError, match="nothing: no model.onnx"):
        OnnxTeacher(tmp_path / "nothing")
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    shutil.copy(folder / "model.onnx", unlabelled / "model.onnx")
    with pytest.raises(
        OnnxTeacherError, match="unlabelled/model.onnx: no labels for output 'logits'"
    ):
        OnnxTeacher(unlabelled)
    (unlabelled / "labels.yaml").write_text("logits: [happy, sad, angry]\n")
    with pytest.raises(OnnxTeacherError, match=r"labelled \['happy'"):
        OnnxTeacher(unlabelled)
    (unlabelled / "model.onnx").write_bytes(b"not onnx")
    with pytest.raises(OnnxTeacherError, match="not a loadable ONNX model"):
        OnnxTeacher(unlabelled)


def test_hidden_states_are_the_embedding(dawn, folder, audio, tmp_path):
    files = sorted(audio.glob("*.wav"))  # c3 (21 s): two windows, averaged
    waves = [sf.read(f, dtype="float32")[0] for f in files]
    teacher = OnnxTeacher(folder)
    assert teacher.embedding_dim == dawn.embedding_dim == TINY["hidden_size"]
    adv, emb = teacher.predict_waves(waves, embedding=True)
    assert emb.shape == (len(files), TINY["hidden_size"]) and emb.dtype == np.float32
    np.testing.assert_allclose(adv, teacher.predict_waves(waves), atol=1e-6)
    with torch.no_grad():
        want = [dawn(torch.from_numpy(w)[None], embedding=True) for w in waves]
    assert np.abs(emb - np.stack([e[0].numpy() for _, e in want])).max() < 1e-4
    assert np.abs(adv - np.stack([a[0].numpy() for a, _ in want])).max() < 1e-4
    # the label table's column through ONNX Runtime
    out = tmp_path / "emb.parquet"
    from wav2small.labels import label

    label(teacher, files[1:], out, progress=False, embeddings=True)
    table = pd.read_parquet(out)
    np.testing.assert_allclose(np.stack(table["embedding"]), emb[1:], atol=1e-6)


def test_a_model_without_hidden_states_gives_no_embedding(folder, audio, tmp_path):
    import onnx

    plain = tmp_path / "plain"
    plain.mkdir()
    proto = onnx.load(str(folder / "model.onnx"))
    proto.graph.output.remove(proto.graph.output[0])  # keep only logits
    onnx.save(proto, str(plain / "model.onnx"))
    shutil.copy(folder / "model.yaml", plain / "model.yaml")
    teacher = OnnxTeacher(plain)
    assert teacher.embedding_dim is None
    wave = pseudo_speech(0.5, rng=np.random.default_rng(0))
    assert teacher.predict_waves([wave]).shape == (1, 3)
    with pytest.raises(OnnxTeacherError, match="gives no embedding .*no 'hidden_states' output"):
        teacher.predict_waves([wave], embedding=True)
