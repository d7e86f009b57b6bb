"""errors.py: the exception classes every command shares and what the CLI makes of them
(one line; exit 2 for a user error, 1 for anything else)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import numpy as np
import pytest

import wav2small
import wav2small.cli as cli
from wav2small.errors import NonFiniteError, UserError

#: Exception classes of the package that are *not* user errors (exit 1): eSpeak NG failing
#: inside a render is an environment or internal fault, not something the input can fix.
NOT_USER_ERRORS = {"ESpeakError"}


def _package_exceptions() -> dict[str, type]:
    found = {}
    for info in pkgutil.walk_packages(wav2small.__path__, "wav2small."):
        if info.name.endswith(("labels_ray", "serve")):
            continue  # optional extras (ray), a server: no exception classes of their own
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, Exception)
                and obj.__module__.startswith("wav2small")
            ):
                found[name] = obj
    return found


def test_user_errors_are_value_errors_and_non_finite_is_a_user_error():
    assert issubclass(UserError, ValueError) and issubclass(NonFiniteError, UserError)
    with pytest.raises(ValueError, match="broken.wav: NaN"):  # old callers catch ValueError
        raise NonFiniteError("broken.wav: NaN in the samples")


def test_error_line_maps_user_errors_to_exit_2_and_everything_else_to_1():
    assert cli.error_line(UserError("a.csv: no 'file' column")) == (2, "a.csv: no 'file' column")
    assert cli.error_line(NonFiniteError("x.wav:\n NaN  at 3"))[1] == "x.wav: NaN at 3"  # one line
    missing = FileNotFoundError(2, "No such file or directory", "gone.wav")
    assert cli.error_line(missing) == (2, str(missing))  # names the file already
    code, line = cli.error_line(RuntimeError("boom"))
    assert code == 1 and line.startswith("RuntimeError: boom") and "--debug" in line


def test_every_exception_class_of_the_package_is_classified():
    """A new exception class must be a user error (exit 2) or be listed here on purpose."""
    found = _package_exceptions()
    assert {"UserError", "NonFiniteError", "AudioError", "InputError", "TeacherError"} <= set(found)
    for name, cls in found.items():
        code, _ = cli.error_line(cls("some.file: a problem"))
        expected = 1 if name in NOT_USER_ERRORS else 2
        assert code == expected, f"{cls.__module__}.{name}: exit {code}"


def test_a_raised_non_finite_error_ends_the_command_in_one_line(monkeypatch, capsys):
    from wav2small.backends import check_finite

    def run(args):
        check_finite(np.array([[0.1, np.nan, 0.3]]), "model.onnx")

    monkeypatch.setattr(cli, "_run_models", run)
    assert cli.main(["models"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("wav2small models: error: model.onnx:")
    assert "non-finite" in err[0]
    assert cli.main(["models", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "NonFiniteError" in err
