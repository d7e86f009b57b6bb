"""audonnx folders: the real audonnx/audinterface packages load an export and match predict."""

import numpy as np
import pytest
import soundfile as sf
import torch

from wav2small import LABELS, SAMPLE_RATE
from wav2small.audonnx_export import audonnx_yaml, write_audonnx
from wav2small.cli import main
from wav2small.export import export
from wav2small.infer import read_table
from wav2small.models import create_model
from wav2small.signals import pseudo_speech, pseudo_speech_set

audonnx = pytest.importorskip("audonnx")
audinterface = pytest.importorskip("audinterface")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("wav2small-tiny")
    model.train()
    with torch.no_grad():  # BatchNorm statistics of speech-like input: outputs vary per clip
        for clip in pseudo_speech_set(3, seed=5):
            model(torch.from_numpy(clip)[None])
    out = tmp_path_factory.mktemp("export")
    export(model.eval(), out, int8=True, gate_int8=False)
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(7)
    paths = []
    for i, seconds in enumerate((0.7, 2.5, 6.0)):
        path = folder / f"clip{i}.wav"
        sf.write(path, pseudo_speech(seconds, rng=rng), SAMPLE_RATE, subtype="FLOAT")
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("kind", ["audonnx", "audonnx-int8"])
def test_audinterface_feature_equals_wav2small_predict(exported, files, kind, tmp_path):
    model = audonnx.load(str(exported / kind))
    assert model.labels("logits") == list(LABELS)
    assert model.inputs["signal"].shape == [1, -1]
    feature = audinterface.Feature(
        model.labels("logits"),
        process_func=model,
        process_func_args={"outputs": "logits"},
        sampling_rate=16000,
        resample=True,
    )
    got = feature.process_files(files)
    onnx_file = exported / ("model.onnx" if kind == "audonnx" else "model.int8.onnx")
    csv = tmp_path / "pred.csv"
    assert main(["predict", str(onnx_file), *files, "--out", str(csv)]) == 0
    want = read_table(csv)
    assert list(got.index.get_level_values("file")) == list(want.index.get_level_values("file"))
    values = got[list(LABELS)].to_numpy()
    assert np.abs(values - want.to_numpy()).max() <= 1e-5
    assert np.ptp(values, axis=0).max() > 1e-4  # the clips' outputs differ: a real comparison


def test_yaml_is_what_audonnx_writes(exported, tmp_path):
    ours = (exported / "audonnx" / "model.yaml").read_text()
    assert ours.startswith("$audonnx.core.model.Model==")
    model = audonnx.Model(str(exported / "audonnx" / "model.onnx"), labels={"logits": list(LABELS)})
    model.to_yaml(str(exported / "audonnx" / "theirs.yaml"))
    assert (exported / "audonnx" / "theirs.yaml").read_text() == ours
    assert audonnx_yaml(version="9.9").splitlines()[0] == "$audonnx.core.model.Model==9.9:"


def test_outputs_in_another_order_are_refused(exported, tmp_path):
    import onnx

    proto = onnx.load(str(exported / "model.onnx"))
    for p in proto.metadata_props:
        if p.key == "labels":
            p.value = "valence,arousal,dominance"
    onnx.save(proto, str(tmp_path / "m.onnx"))
    with pytest.raises(ValueError, match="m.onnx: outputs"):
        write_audonnx(tmp_path / "m.onnx", tmp_path / "out")
