"""Model folders: models/LLM and models/m2chat plus every path extra_model_paths.yaml adds."""

import shutil

import pytest

from tiny_graphs import TINY_ADAPTER, TINY_VLM


@pytest.fixture
def extra_paths(comfy, tmp_path):
    import folder_paths
    from utils.extra_config import load_extra_path_config

    models = tmp_path / "elsewhere"
    shutil.copytree(comfy.models_dir / "LLM" / TINY_VLM, models / "llm" / "org" / "extra-vlm")
    (models / "adapters").mkdir()
    shutil.copy(comfy.models_dir / "m2chat" / TINY_ADAPTER,
                models / "adapters" / "extra-adapter.safetensors")
    config = tmp_path / "extra_model_paths.yaml"
    config.write_text(f"mine:\n  base_path: {models}\n  LLM: llm/\n  m2chat: adapters/\n")
    saved = {name: (list(folder_paths.folder_names_and_paths[name][0]), set(folder_paths.folder_names_and_paths[name][1]))
             for name in ("LLM", "m2chat")}
    load_extra_path_config(str(config))
    yield
    folder_paths.folder_names_and_paths.update(saved)


def _options(comfy, node_id, input_name):
    schema = comfy.node_class(node_id).GET_SCHEMA()
    return next(i.options for i in schema.inputs if i.id == input_name)


def test_loaders_list_folders_from_extra_model_paths(comfy, extra_paths):
    assert {TINY_VLM, "org/extra-vlm"} <= set(_options(comfy, "M2ChatVLMLoader", "vlm_name"))
    assert {TINY_ADAPTER, "extra-adapter.safetensors"} <= set(_options(comfy, "M2ChatAdapterLoader", "adapter_name"))


def test_models_from_extra_paths_load(comfy, extra_paths):
    vlm = comfy.node_class("M2ChatVLMLoader").execute("org/extra-vlm", "float32", "none", False)[0]
    adapter = comfy.node_class("M2ChatAdapterLoader").execute("extra-adapter.safetensors")[0]
    assert vlm.loaded.info.hidden_size == adapter.file.config.vlm_hidden_size


def test_folder_named_like_an_adapter_file_is_not_listed_and_refused_clearly(comfy):
    folder = comfy.models_dir / "m2chat" / "not-a-file.safetensors"
    folder.mkdir()
    try:
        assert "not-a-file.safetensors" not in _options(comfy, "M2ChatAdapterLoader", "adapter_name")
        with pytest.raises(FileNotFoundError, match="is a folder, not an adapter file: pick a .safetensors file"):
            comfy.node_class("M2ChatAdapterLoader").execute("not-a-file.safetensors")
    finally:
        folder.rmdir()
