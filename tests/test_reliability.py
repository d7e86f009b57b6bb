"""Reliability probes (issue 16) that run fast: fixed temp names, full disks, header lies,
tiny clips, garbage model files, ``--on-error skip``. The slow probes (kill -9 resumes,
concurrent writers, a full tmpfs, 1-hour files) are in ``benchmarks/bench_reliability.py``.
"""

from __future__ import annotations

import errno
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "wav2small"
#: Modules another change is moving into packages (they keep their own atomic writer for now).
_MOVING = {"teacher.py", "onnx_teacher.py", "synth.py"}


def _full_disk(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


# --- temporary names ----------------------------------------------------------------------------
def test_no_fixed_or_pid_temporary_names_outside_inputs():
    """Every writer goes through inputs.atomic_write (unique mkstemp names, removed on error)."""
    pattern = re.compile(r"""(getpid\(\)\}?\.tmp|\+ ?["']\.tmp["']|["']\.tmp["']\)|mkstemp)""")
    bad = [
        f"{p.relative_to(SRC)}:{i}"
        for p in SRC.rglob("*.py")
        if p.name != "inputs.py" and p.name not in _MOVING
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not bad, f"fixed/pid temp names or raw mkstemp: {bad}"


def test_a_full_disk_while_saving_a_teacher_checkpoint_leaves_no_temp(tmp_path, monkeypatch):
    import torch

    from wav2small import teacher_train

    (tmp_path / "state.pt").write_bytes(b"old")
    monkeypatch.setattr(teacher_train, "save_checked", lambda model, folder: None)

    def half_then_full(blob, path):
        Path(path).write_bytes(b"half")
        _full_disk()

    monkeypatch.setattr(torch, "save", half_then_full)
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    state = dict(epoch=1, step=2, best_epoch=1, best_score=0.5, elapsed=1.0)
    with pytest.raises(OSError, match="No space left"):
        teacher_train._save_checkpoint(tmp_path, model, opt, sched, torch.Generator(), state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]
    assert (tmp_path / "state.pt").read_bytes() == b"old"
