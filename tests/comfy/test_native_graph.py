"""ComfyUI in-process: the pack registers and a native tiny-SDXL graph draws an image."""

from PIL import Image

from tiny_graphs import PACK_NODE_IDS, tiny_conditioning_graph


def test_pack_nodes_are_registered(comfy):
    assert {node_id for node_id in comfy.nodes.NODE_CLASS_MAPPINGS if node_id.startswith("M2Chat")} == PACK_NODE_IDS
    assert "M2Chat" not in " ".join(comfy.nodes.NODE_CLASS_MAPPINGS.get("IMPORT_FAILED", []))


def test_tiny_unet_is_detected_as_sdxl(comfy):
    model, = comfy.node_class("UNETLoader")().load_unet("m2chat-tiny-sdxl.safetensors", "default")
    assert type(model.model).__name__ == "SDXL"
    assert model.model.model_config.unet_config["context_dim"] == 2048
    assert model.model.model_config.unet_config["adm_in_channels"] == 2816


def test_native_graph_writes_an_image_of_the_asked_size(comfy):
    outputs = comfy.run(tiny_conditioning_graph(width=96, height=64, filename_prefix="native"))
    saved, = comfy.saved_images(outputs, "save")
    with Image.open(saved) as image:
        assert image.size == (96, 64)
