"""Bad inputs give clear errors in ComfyUI's execution report, and ComfyUI keeps working."""

import pickle
from pathlib import Path

import pytest
import torch

from harness.in_process import GraphError
from m2chat_core.tiny import build_tiny_adapter
from tiny_graphs import TINY_ADAPTER, encode_graph, story_graph

PICKLE_MARKER = Path("/tmp/m2chat-test-unpickled-marker")


class _Boobytrap:
    """Unpickling this creates PICKLE_MARKER: proof that a file was unpickled."""

    def __reduce__(self):
        return (PICKLE_MARKER.touch, ())


def _error_message(comfy, graph) -> str:
    with pytest.raises(GraphError) as failure:
        comfy.run(graph)
    return str(failure.value)


@pytest.fixture
def still_works(comfy):
    """After the bad input, a good graph still runs."""
    yield
    outputs = comfy.run(encode_graph("a calm lake", filename_prefix="after-error"))
    assert len(comfy.saved_images(outputs, "save")) == 1


@pytest.fixture(scope="module")
def bad_adapters(comfy):
    folder = comfy.models_dir / "m2chat"
    build_tiny_adapter(folder / "wrong-hidden-size.safetensors", vlm_hidden_size=32,
                       vision_feature_size=32, trained_on_vlm="some-other-vlm")
    PICKLE_MARKER.unlink(missing_ok=True)
    (folder / "pickled.safetensors").write_bytes(pickle.dumps({"weight": _Boobytrap()}))
    torch.save({"weight": torch.zeros(2)}, folder / "torch-save.safetensors")
    good = (folder / TINY_ADAPTER).read_bytes()
    (folder / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    return folder


@pytest.mark.parametrize("adapter_name, expected", [
    ("wrong-hidden-size.safetensors", "hidden size 32 but m2chat-tiny-llava has 64"),
    ("pickled.safetensors", "is a pickle"),
    ("torch-save.safetensors", "never unpickles"),
    ("truncated.safetensors", "truncated"),
])
def test_bad_adapter_files_are_refused_clearly(comfy, bad_adapters, still_works, adapter_name, expected):
    graph = encode_graph(filename_prefix="bad")
    graph["adapter"]["inputs"]["adapter_name"] = adapter_name
    assert expected in _error_message(comfy, graph).lower()
    assert not PICKLE_MARKER.exists(), "a pickle was unpickled"


def test_missing_model_names_are_refused_by_validation(comfy, still_works):
    graph = encode_graph(filename_prefix="missing")
    graph["vlm"]["inputs"]["vlm_name"] = "no-such-vlm"
    message = _error_message(comfy, graph)
    assert "vlm_name" in message and "no-such-vlm" in message


@pytest.mark.parametrize("name", ["../../secrets", "/etc", "m2chat-tiny-llava/../../x"])
def test_model_names_cannot_escape_the_model_folders(comfy, name):
    loader = comfy.node_class("M2ChatVLMLoader")
    with pytest.raises(FileNotFoundError, match="not a plain name inside models/LLM"):
        loader.execute(name, "float32", "none", False)


def test_adapter_deleted_after_listing_names_the_folder_and_fix(comfy):
    loader = comfy.node_class("M2ChatAdapterLoader")
    with pytest.raises(FileNotFoundError, match=r"was not found in .*m2chat.*extra_model_paths"):
        loader.execute("gone.safetensors")


def test_empty_prompt_is_refused(comfy, still_works):
    assert "prompt is empty" in _error_message(comfy, encode_graph("   ", filename_prefix="empty"))


def test_neither_adapter_nor_clip_is_a_clear_error(comfy, still_works):
    message = _error_message(comfy, encode_graph(adapter=None, filename_prefix="no-source"))
    assert "Connect an M²Chat adapter" in message and "CLIP" in message


@pytest.mark.parametrize("panels", [0, 17])
def test_panel_count_outside_1_to_16_is_refused(comfy, panels):
    message = _error_message(comfy, story_graph(panels=panels))
    assert "panels" in message


def test_prompt_longer_than_the_context_is_refused_clearly(comfy, still_works):
    message = _error_message(comfy, encode_graph("tell me a story " * 4000, filename_prefix="long"))
    assert "context" in message.lower()


@pytest.mark.parametrize("size", [(1, 1), (4096, 4096)])
def test_tiny_and_huge_input_images_are_resized_by_the_processor(comfy, size):
    graph = encode_graph("describe this", task="image_editing", filename_prefix="image-size")
    image = torch.rand(1, size[1], size[0], 4)  # RGBA on purpose
    encode = comfy.node_class("M2ChatEncode")
    vlm = comfy.node_class("M2ChatVLMLoader").execute("m2chat-tiny-llava", "float32", "none", False)[0]
    adapter = comfy.node_class("M2ChatAdapterLoader").execute(TINY_ADAPTER)[0]
    inputs = {k: v for k, v in graph["encode"]["inputs"].items() if not isinstance(v, list)}
    result = encode.execute(vlm=vlm, adapter=adapter, image=image, **inputs)
    (cond, extras), = result.args[0]
    assert cond.shape == (1, 77, 2048) and torch.isfinite(cond).all()
    assert 0.0 <= result.args[5] <= 1.0
