"""The package's public API: lazy imports and the names the README promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

import wav2small

SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_load_teacher_is_public_and_gives_adv():
    teacher = wav2small.load_teacher("synth")
    assert "load_teacher" in wav2small.__all__
    wave = torch.from_numpy(np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32))
    with torch.inference_mode():
        out = teacher(wave[None])
    assert out.shape == (1, len(wav2small.LABELS)) and torch.isfinite(out).all()


def test_importing_the_package_imports_no_torch():
    code = "import sys, wav2small, wav2small.inputs, wav2small.cli; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": SRC, "PATH": ""},
        check=True,
    )
    assert out.stdout.strip() == "False"
