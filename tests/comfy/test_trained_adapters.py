"""Adapter files exported by both training stages load in M2ChatAdapterLoader and drive
a native KSampler graph in ComfyUI."""

import shutil

import pytest
from PIL import Image

from tiny_graphs import encode_graph
from train.trainer import DEFAULT_EXPORT_NAME


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_exported_adapter_drives_a_native_graph(comfy, request, stage):
    exported = request.getfixturevalue(stage)[0] / DEFAULT_EXPORT_NAME
    name = f"trained-{stage}.safetensors"
    shutil.copy(exported, comfy.models_dir / "m2chat" / name)
    graph = encode_graph("a harbour at dawn", filename_prefix=f"trained-{stage}")
    graph["adapter"]["inputs"]["adapter_name"] = name
    outputs = comfy.run(graph)
    saved, = comfy.saved_images(outputs, "save")
    with Image.open(saved) as image:
        assert image.size == (64, 64)
    adapter = comfy.node_outputs("adapter")[0][0]
    assert adapter.file.training_config is not None
    assert (adapter.file.vlm_deltas is not None) == (stage == "stage2")
