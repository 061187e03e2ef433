"""Model folders: models/LLM and models/m2chat plus every path extra_model_paths.yaml adds."""

import shutil

import pytest
import torch

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


def test_the_adapter_loader_builds_comfyui_layers_that_compute_what_torch_layers_do(comfy):
    from comfy.ops import disable_weight_init as comfy_layers
    from m2chat_core.encoding import VLMFeatures

    adapter = comfy.node_class("M2ChatAdapterLoader").execute(TINY_ADAPTER)[0]
    layers = [m for m in adapter.module.modules() if isinstance(m, (torch.nn.Linear, torch.nn.LayerNorm))]
    assert layers and all(isinstance(m, (comfy_layers.Linear, comfy_layers.LayerNorm)) for m in layers)
    reference = adapter.file.build_adapter()  # torch.nn layers, the file's weights
    assert not any(isinstance(m, comfy_layers.Linear) for m in reference.modules())

    config, generator = adapter.file.config, torch.Generator().manual_seed(0)
    features = VLMFeatures(
        caption_hidden_states=torch.randn(1, len(config.chosen_layers), 5, config.vlm_hidden_size, generator=generator),
        caption_mask=torch.ones(1, 5, dtype=torch.bool),
        answer_embedding=torch.randn(1, config.vlm_hidden_size, generator=generator),
        caption_embedding=torch.randn(1, config.vlm_hidden_size, generator=generator),
        has_answer=torch.ones(1, dtype=torch.bool),
        image_features=torch.randn(1, 3, config.vision_feature_size, generator=generator),
        image_mask=torch.ones(1, 3, dtype=torch.bool),
    )
    with torch.inference_mode():
        ours, theirs = adapter.module(features), reference(features)
    assert torch.equal(ours.context, theirs.context) and torch.equal(ours.pooled, theirs.pooled)
