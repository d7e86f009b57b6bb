"""Teacher names → folders: aliases, the shipped asset, local folders, Hugging Face hub ids.

Hub ids resolve through huggingface_hub's cache (``local_files_only`` when ``HF_HUB_OFFLINE``
is set or the hub cannot be reached); when that fails the error names the id.
"""

from __future__ import annotations

import os
from pathlib import Path

from wav2small.teachers.base import (
    ALIASES,
    BIN_FILE,
    CONFIG_FILE,
    SAFETENSORS_FILE,
    SYNTH_ASSET,
    TeacherError,
)


# --- resolving names ---------------------------------------------------------------------------
def _hub_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - very old huggingface_hub
        return False


def _snapshot(repo_id: str, patterns: list[str], local_only: bool) -> Path:
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=local_only))


def resolve_hub(repo_id: str) -> Path:
    """Local folder of a hub model (config + safetensors, else pytorch_model.bin), via the cache.

    Raises:
        TeacherError: the id is neither cached nor downloadable (offline, unknown id, ...).
    """
    offline = _hub_offline()
    errors: list[str] = []
    for local_only in [True] if offline else [False, True]:
        try:
            folder = _snapshot(repo_id, ["*.json", SAFETENSORS_FILE], local_only)
            if not (folder / SAFETENSORS_FILE).is_file():
                folder = _snapshot(repo_id, ["*.json", BIN_FILE], local_only)
            if (folder / CONFIG_FILE).is_file():
                return folder
            errors.append(f"{folder} has no {CONFIG_FILE}")
        except Exception as e:  # offline, unknown repo, HTTP errors, ...
            errors.append(f"{type(e).__name__}: {e}".splitlines()[0])
    how = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached"
    raise TeacherError(
        f"teacher {repo_id!r}: not a local folder and not in the Hugging Face cache, and {how}. "
        f"Fetch it on a machine with internet (`huggingface-cli download {repo_id}`) and copy the "
        f"cache, or pass the path of a local copy. ({'; '.join(errors)[:300]})"
    )


def _asset_folder(name: str) -> Path:
    from importlib.resources import files

    return Path(str(files("wav2small") / "assets" / name))


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return (
        len(parts) == 2
        and all(parts)
        and not name.startswith((".", "~"))
        and not os.path.isabs(name)
    )


def resolve(name_or_path: str | os.PathLike) -> Path:
    """Folder holding a teacher checkpoint: a local folder, a package asset, or a hub id."""
    name = os.fspath(name_or_path)
    name = ALIASES.get(name, name)
    if name == SYNTH_ASSET:
        folder = _asset_folder(SYNTH_ASSET)
        if not (folder / CONFIG_FILE).is_file():
            raise TeacherError(
                f"the built-in teacher asset {folder} is missing; rebuild it with `make teacher`"
            )
        return folder
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise TeacherError(
                f"{path}: a teacher is a folder with {CONFIG_FILE} and weights, not a file"
            )
        if not (path / CONFIG_FILE).is_file():
            raise TeacherError(f"{path}: no {CONFIG_FILE} in this folder")
        return path
    if _looks_like_hub_id(name):
        return resolve_hub(name)
    raise TeacherError(f"teacher {name!r}: no such folder, and not a Hugging Face id (org/name)")
