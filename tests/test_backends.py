"""Tests for wav2small.backends: session options, ONNX sessions and metadata, the two backends,
and that nothing else in the package builds an ONNX Runtime session."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import wav2small
from wav2small import LABELS
from wav2small.backends import (
    OnnxBackend,
    TorchBackend,
    label_order,
    make_backend,
    onnx_metadata,
    onnx_session,
    session_options,
)
from wav2small.signals import pseudo_speech

PACKAGE = Path(wav2small.__file__).parent
REPO = PACKAGE.parent.parent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """An untrained wav2small-tiny (head amplified so outputs differ by input): module, checkpoint
    and fp32 ONNX."""
    from wav2small.export import export_onnx
    from wav2small.models import create_model, save_model

    out = tmp_path_factory.mktemp("backends")
    torch.manual_seed(0)
    model = create_model("wav2small-tiny").eval()
    with torch.no_grad():
        model.adv.weight.mul_(100.0)
    save_model(model, out / "tiny.safetensors")
    export_onnx(model, out / "tiny.onnx")
    return {"module": model, "torch": out / "tiny.safetensors", "onnx": out / "tiny.onnx"}


def _batch(seconds: float = 1.0, n: int = 2) -> np.ndarray:
    rng = np.random.default_rng(3)
    return np.stack([pseudo_speech(seconds, rng=rng) for _ in range(n)]).astype(np.float32)


def _relabel(src: Path, dst: Path, labels: str) -> Path:
    proto = onnx.load(str(src))
    for prop in proto.metadata_props:
        if prop.key == "labels":
            prop.value = labels
    onnx.save(proto, str(dst))
    return dst


def test_session_options_threads_and_arena():
    opts = session_options(threads=2, mem_arena=False)
    assert opts.intra_op_num_threads == 2
    assert opts.inter_op_num_threads == 1
    assert opts.enable_cpu_mem_arena is False
    default = session_options()
    assert default.intra_op_num_threads == 1
    assert default.enable_cpu_mem_arena is True
    with pytest.raises(ValueError, match="threads"):
        session_options(threads=-1)


def test_onnx_session_takes_adjusted_options(tiny, tmp_path):
    opts = session_options(threads=1)
    opts.enable_profiling = True
    opts.profile_file_prefix = str(tmp_path / "profile")
    sess = onnx_session(tiny["onnx"], options=opts)
    sess.run(None, {sess.get_inputs()[0].name: _batch()})
    assert Path(sess.end_profiling()).is_file()


def test_onnx_session_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.onnx: no such model file"):
        onnx_session(tmp_path / "nothere.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not a model" * 50)
    with pytest.raises(ValueError, match="garbage.onnx: not a loadable ONNX model"):
        onnx_session(garbage)


def test_onnx_session_and_metadata(tiny):
    sess = onnx_session(tiny["onnx"], threads=1)
    meta = onnx_metadata(tiny["onnx"])
    assert meta == onnx_metadata(sess)
    assert meta["labels"] == ",".join(LABELS)
    x = _batch()
    with torch.inference_mode():
        ref = tiny["module"](torch.from_numpy(x)).numpy()
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, ref, atol=1e-2)  # head gain 100 × the 1e-4 export gate


def test_label_order():
    assert label_order("arousal,dominance,valence", "m") == [0, 1, 2]
    assert label_order("valence, arousal, dominance", "m") == [1, 2, 0]
    assert label_order(None, "m") == [0, 1, 2]
    with pytest.raises(ValueError, match="m.onnx: model outputs"):
        label_order("happy,sad,angry", "m.onnx")


def test_onnx_backend_reorders_by_metadata(tiny, tmp_path):
    x = _batch()
    plain = OnnxBackend(tiny["onnx"])(x)
    swapped = _relabel(tiny["onnx"], tmp_path / "swapped.onnx", "valence,arousal,dominance")
    got = OnnxBackend(swapped)(x)
    # the model's 1st output is now called valence: it moves to the last column
    np.testing.assert_allclose(got[:, 2], plain[:, 0])
    np.testing.assert_allclose(got[:, 0], plain[:, 1])
    np.testing.assert_allclose(got[:, 1], plain[:, 2])


def test_torch_backend_matches_onnx_for_file_and_module(tiny):
    x = _batch(2.0, 3)
    onnx_out = OnnxBackend(tiny["onnx"])(x)
    for model in (tiny["torch"], tiny["module"]):
        backend = TorchBackend(model)
        assert backend.name == "torch"
        out = backend(x)
        assert out.shape == (3, len(LABELS)) and out.dtype == np.float32
        np.testing.assert_allclose(out, onnx_out, atol=1e-2)


def test_make_backend_picks_and_rejects(tiny):
    assert make_backend(tiny["onnx"]).name == "onnx"
    assert make_backend(str(tiny["torch"])).name == "torch"
    assert make_backend(tiny["module"]).name == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        make_backend(tiny["onnx"], backend="tpu")
    with pytest.raises(ValueError, match="needs a path"):
        make_backend(tiny["module"], backend="onnx")


def test_infer_reexports_the_backends():
    from wav2small import backends, infer

    for name in ("OnnxBackend", "TorchBackend", "make_backend", "BACKENDS", "DEFAULT_THREADS"):
        assert getattr(infer, name) is getattr(backends, name)


def test_no_other_module_builds_an_onnx_session():
    """One place builds sessions: no InferenceSession/SessionOptions outside backends.py."""
    pattern = re.compile(r"\b(InferenceSession|SessionOptions)\s*\(")
    roots = [PACKAGE, REPO / "benchmarks"]
    offenders = [
        str(p)
        for root in roots
        if root.is_dir()
        for p in root.rglob("*.py")
        if p.name != "backends.py" and pattern.search(p.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_run_folders_resolve_to_their_best_weights(tiny, tmp_path):
    from wav2small.backends import resolve_model_path

    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(FileNotFoundError, match="run folder without best.safetensors"):
        make_backend(run)
    (run / "best.safetensors").write_bytes(tiny["torch"].read_bytes())
    assert resolve_model_path(run) == run / "best.safetensors"
    x = _batch()
    np.testing.assert_array_equal(make_backend(run)(x), make_backend(tiny["torch"])(x))
    with pytest.raises(FileNotFoundError, match="no such model file"):
        resolve_model_path(tmp_path / "missing.ckpt")


def test_non_finite_outputs_raise_naming_the_model(tiny, tmp_path):
    from onnx import numpy_helper

    from wav2small.models import create_model

    proto = onnx.load(str(tiny["onnx"]))
    head = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT][-1]
    values = numpy_helper.to_array(head).copy()  # the last float tensor (it reaches the output)
    values[...] = np.nan
    head.CopyFrom(numpy_helper.from_array(values, head.name))
    onnx.save(proto, str(tmp_path / "nan.onnx"))
    with pytest.raises(ValueError, match=r"nan\.onnx: the model gave non-finite outputs"):
        OnnxBackend(tmp_path / "nan.onnx")(_batch())
    module = create_model("wav2small-tiny").eval()
    with torch.no_grad():
        module.adv.weight.fill_(float("inf"))
    with pytest.raises(ValueError, match="wav2small-tiny: the model gave non-finite outputs"):
        TorchBackend(module)(_batch())


def test_torch_free_teachers_run_through_predict_waves_without_torch(tmp_path):
    """A teacher with ``predict_waves`` (e.g. an ONNX teacher) is run without importing torch,
    batched like any teacher, and its non-finite outputs are named."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        import soundfile as sf
        from wav2small.backends import teacher_predict, teacher_predict_files

        class Teacher:
            name = "rms"
            window_seconds = 0.5
            max_batch_seconds = 1.0
            calls = []

            def predict_waves(self, waves):
                self.calls.append(len(waves))
                return np.stack([[np.sqrt(np.mean(w**2)), len(w) / 16000, 0.0] for w in waves])

        t = Teacher()
        waves = [np.full(n, 0.5, np.float32) for n in (4000, 2000, 8000)]
        out = teacher_predict(t, waves)
        assert np.allclose(out[:, 1], [0.25, 0.125, 0.5]), out
        assert sum(t.calls) == 3 and max(t.calls) <= 2, t.calls  # ≤ 1 s padded per call
        sf.write({str(tmp_path / "long.wav")!r}, np.full(24000, 0.5, np.float32), 16000)
        long = teacher_predict_files(t, [{str(tmp_path / "long.wav")!r}])
        assert np.allclose(long[0, 1], 0.5), long  # 1.5 s → 3 pieces of 0.5 s, averaged
        t.predict_waves = lambda waves: np.full((len(waves), 3), np.nan)
        try:
            teacher_predict(t, waves[:1], names=["x.wav"])
        except ValueError as e:
            print(e)
        print("torch" in sys.modules)
        """
    )
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class _B:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] == 'torch':\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, _B())\n"
    )
    import os

    env = {**os.environ, "PYTHONPATH": f"{blocker}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    message, torch_loaded = done.stdout.strip().splitlines()
    assert message.startswith("x.wav: teacher 'rms' gave non-finite outputs")
    assert torch_loaded == "False"
