"""The model folders this pack reads, registered with ComfyUI's folder_paths so that
`extra_model_paths.yaml` entries for them keep working."""

import os

import folder_paths

VLM_FOLDER = "LLM"  # Hugging Face VLM folders, shared with other LLM node packs
ADAPTER_FOLDER = "m2chat"  # M³Adapter .safetensors files


def register() -> None:
    for name, extensions in ((VLM_FOLDER, set()), (ADAPTER_FOLDER, {".safetensors"})):
        default = os.path.join(folder_paths.models_dir, name)
        folder_paths.add_model_folder_path(name, default, is_default=True)
        paths, known_extensions = folder_paths.folder_names_and_paths[name]
        known_extensions.update(extensions)
