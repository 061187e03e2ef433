"""The model folders this pack reads, registered with ComfyUI's folder_paths so that
`extra_model_paths.yaml` entries for them keep working, and safe name -> path lookup."""

from __future__ import annotations

import os
from pathlib import Path

import folder_paths

VLM_FOLDER = "LLM"  # Hugging Face VLM folders, shared with other LLM node packs
ADAPTER_FOLDER = "m2chat"  # M³Adapter .safetensors files
VLM_SEARCH_DEPTH = 2  # "llava-1.5-7b-hf" or "llava-hf/llava-1.5-7b-hf"


class ModelNotFoundError(FileNotFoundError):
    """A model name that does not resolve to a file or folder in the pack's folders."""


def register() -> None:
    """Idempotent; runs when the pack is imported, before any node lists its folder."""
    for name, extensions in ((VLM_FOLDER, set()), (ADAPTER_FOLDER, {".safetensors"})):
        folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name),
                                           is_default=True)
        folder_paths.folder_names_and_paths[name][1].update(extensions)


register()


def _roots(folder: str) -> list[Path]:
    return [Path(root) for root in folder_paths.get_folder_paths(folder) if os.path.isdir(root)]


def list_vlm_folders() -> list[str]:
    """Every folder holding a config.json under the LLM folders, as a relative name."""
    names = set()
    for root in _roots(VLM_FOLDER):
        for depth in range(1, VLM_SEARCH_DEPTH + 1):
            for config in root.glob("/".join(["*"] * depth) + "/config.json"):
                names.add(config.parent.relative_to(root).as_posix())
    return sorted(names)


def list_adapter_files() -> list[str]:
    return sorted(folder_paths.get_filename_list(ADAPTER_FOLDER))


def _inside(root: Path, name: str) -> Path | None:
    """root/name if it stays inside root (no '..' or absolute-path escapes)."""
    candidate = (root / name).resolve()
    return candidate if candidate.is_relative_to(root.resolve()) else None


def resolve(folder: str, name: str, *, what: str, fix: str) -> Path:
    if not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise ModelNotFoundError(f"{what} name {name!r} is not a plain name inside "
                                 f"models/{folder}/: pick one from the list. {fix}")
    roots = _roots(folder)
    for root in roots:
        path = _inside(root, name)
        if path is not None and path.exists():
            return path
    searched = ", ".join(str(root) for root in roots) or f"models/{folder}/ (missing)"
    raise ModelNotFoundError(f"{what} {name!r} was not found in {searched}. {fix}")


def resolve_vlm_folder(name: str) -> Path:
    path = resolve(VLM_FOLDER, name, what="VLM folder",
                   fix="Put a Hugging Face model folder (with config.json) under "
                       "ComfyUI/models/LLM/, or add an LLM path in extra_model_paths.yaml, "
                       "then refresh the node list.")
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{path} has no config.json: it is not a Hugging Face model "
                                 "folder. Download the whole model repository into it.")
    return path


def resolve_adapter_file(name: str) -> Path:
    path = resolve(ADAPTER_FOLDER, name, what="Adapter file",
                   fix="Put the M³Adapter .safetensors file in ComfyUI/models/m2chat/ "
                       "(train/ exports there), or add an m2chat path in "
                       "extra_model_paths.yaml, then refresh the node list.")
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is a folder, not an adapter file: pick a .safetensors file, "
                                 "or rename the folder so that its name does not end in .safetensors.")
    return path
