"""docs/ARCHITECTURE.md is true to the code: its module table names every module of the package
and nothing else, every file it names exists, and every `module.name` it cites is defined."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "wav2small"
DOC = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
FILE_ENDINGS = (".parquet", ".csv", ".json", ".onnx", ".yaml", ".ckpt", ".safetensors", ".png")
FILE_ENDINGS += (".py", ".lock", ".md", ".js", ".bin", ".tmp", ".rejected", ".log")


def _modules() -> set[str]:
    return {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")}


def _table_modules() -> set[str]:
    names = set()
    for line in DOC.splitlines():
        if line.startswith("| `"):
            first = line.split("|")[1]
            names |= {n for n in re.findall(r"`([^`]+)`", first) if n.endswith(".py")}
    return names


def test_the_module_table_names_every_module_and_only_modules():
    table, modules = _table_modules(), _modules()
    assert not modules - table, f"modules missing from docs/ARCHITECTURE.md: {modules - table}"
    assert not table - modules, f"docs/ARCHITECTURE.md names no such module: {table - modules}"


def test_every_file_the_document_names_exists():
    for name in sorted(set(re.findall(r"`([\w/]+\.py)(?::\w+)?`", DOC))):
        assert (PACKAGE / name).is_file() or (ROOT / name).is_file(), name
    for name, symbol in re.findall(r"`([\w/]+\.py):(\w+)`", DOC):
        assert re.search(rf"^(class|def) {symbol}\b", (PACKAGE / name).read_text(), re.M), (
            f"{name}:{symbol}"
        )


def _index() -> dict[str, object]:
    """Module short names (``exits`` for ``models.exits``) and the package's classes by name."""
    index: dict[str, object] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts in (["labels_ray"], ["serve"]):
            continue  # the Ray extra; the page server (no names cited)
        module = importlib.import_module(".".join(["wav2small", *parts]))
        if parts:
            index.setdefault(".".join(parts), module)
            index.setdefault(parts[-1], module)
        for name, obj in vars(module).items():
            if isinstance(obj, type) and obj.__module__.startswith("wav2small"):
                index.setdefault(name, obj)
    return index


def _citations() -> set[str]:
    found = set()
    for token in re.findall(r"`([A-Za-z_][\w.]*)(?:\([^`]*\))?`", DOC):
        if "." in token and not token.endswith(FILE_ENDINGS):
            found.add(token.removeprefix("wav2small."))
    return found


def test_every_cited_module_or_class_name_is_defined():
    """The walk from file to table cites `infer.Predictor`, `backends.make_backend`,
    `Predictor.predict`, ...: each must exist as written."""
    import wav2small

    index, checked, wrong = _index(), 0, []
    for citation in sorted(_citations()):
        parts = citation.split(".")
        if "." not in citation and hasattr(wav2small, citation):
            continue
        for n in range(len(parts) - 1, 0, -1):  # the longest known prefix
            head = ".".join(parts[:n])
            if head in index:
                obj, rest = index[head], parts[n:]
                break
        else:
            continue  # not ours: os.replace, fcntl.flock, torch.onnx.export, ...
        for attr in rest:
            if not hasattr(obj, attr):
                wrong.append(citation)
                break
            obj = getattr(obj, attr)
        checked += 1
    assert not wrong, f"docs/ARCHITECTURE.md cites names that do not exist: {wrong}"
    assert checked >= 40
