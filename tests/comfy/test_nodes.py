"""The pack's nodes in a real ComfyUI (in-process) on the tiny models."""

import numpy as np
import torch
import pytest
from PIL import Image

from tiny_graphs import encode_graph, story_graph


def _with_tiny_clip(graph: dict, consumer: str) -> dict:
    """The graph with its adapter replaced by a native SDXL CLIP feeding `consumer`."""
    graph.pop("adapter", None)
    graph[consumer]["inputs"].pop("adapter", None)
    graph["clip"] = {"class_type": "TinySDXLCLIPLoader", "inputs": {"seed": 0}}
    graph[consumer]["inputs"]["clip"] = ["clip", 0]
    return graph


def test_encode_drives_a_native_ksampler_graph(comfy):
    outputs = comfy.run(encode_graph(width=96, height=64, filename_prefix="encode"))
    saved, = comfy.saved_images(outputs, "save")
    with Image.open(saved) as image:
        assert image.size == (96, 64)
    answer, caption = outputs["encode"]["text"]
    assert isinstance(answer, str) and caption  # shown on the node in the UI


def test_encode_conditioning_has_the_contract_shapes_and_size_keys(comfy):
    encode = comfy.node_class("M2ChatEncode")
    vlm = comfy.node_class("M2ChatVLMLoader").execute("m2chat-tiny-llava", "float32", "none", False)[0]
    adapter = comfy.node_class("M2ChatAdapterLoader").execute("m2chat-tiny-adapter.safetensors")[0]
    result = encode.execute(vlm=vlm, prompt="a castle at dusk", task="text_to_image", draw_mode="always",
                            gate_mode="adapter", gate_value=0.5, width=96, height=64, target_width=192,
                            target_height=128, seed=0, max_new_tokens=5, temperature=0.0, top_p=1.0,
                            adapter=adapter)
    positive, negative, answer, caption, session, gate = result.args
    (cond, extras), = positive
    assert cond.shape == (1, 77, 2048) and extras["pooled_output"].shape == (1, 1280)
    assert {k: extras[k] for k in ("width", "height", "crop_w", "crop_h", "target_width", "target_height")} == \
        {"width": 96, "height": 64, "crop_w": 0, "crop_h": 0, "target_width": 192, "target_height": 128}
    (neg_cond, neg_extras), = negative
    assert not neg_cond.any() and not neg_extras["pooled_output"].any()
    assert 0.0 <= gate <= 1.0
    assert len(session.turns) == 1 and session.turns[0].caption == caption


def test_story_draws_four_different_panels_and_a_storyboard_page(comfy):
    outputs = comfy.run(story_graph(panels=4, filename_prefix="story"))
    panels = [np.asarray(Image.open(path)) for path in comfy.saved_images(outputs, "save")]
    assert len(panels) == 4
    assert all(not np.array_equal(panels[0], other) for other in panels[1:])
    page, = comfy.saved_images(outputs, "save_page")
    with Image.open(page) as image:
        assert image.width > 2 * 64 and image.height > 2 * 64
    story_text, = outputs["story"]["text"]
    assert story_text.count("\n\n") == 3  # four numbered parts


@pytest.mark.parametrize("combine", ["ConditioningCombine", "ConditioningConcat",
                                     "ConditioningSetTimestepRange", "ConditioningZeroOut"])
def test_conditioning_works_through_native_conditioning_nodes(comfy, combine):
    graph = encode_graph(filename_prefix=f"combine-{combine}")
    inputs = {"ConditioningCombine": {"conditioning_1": ["encode", 0], "conditioning_2": ["encode", 0]},
              "ConditioningConcat": {"conditioning_to": ["encode", 0], "conditioning_from": ["encode", 0]},
              "ConditioningSetTimestepRange": {"conditioning": ["encode", 0], "start": 0.0, "end": 0.5},
              "ConditioningZeroOut": {"conditioning": ["encode", 0]}}[combine]
    graph["mix"] = {"class_type": combine, "inputs": inputs}
    graph["sampler"]["inputs"]["positive"] = ["mix", 0]
    outputs = comfy.run(graph)
    assert len(comfy.saved_images(outputs, "save")) == 1


def _loaded_vlm(comfy):
    """The M2ChatVLM object ComfyUI's output cache holds for the graph's loader node."""
    return comfy.node_outputs("vlm")[0][0]


def test_cache_reruns_no_vlm_forward_for_the_same_graph_or_a_new_sampler_seed(comfy):
    graph = encode_graph("a lighthouse in a storm", filename_prefix="cache")
    comfy.run(graph)
    counter = _loaded_vlm(comfy).counter
    after_first = counter.total
    assert after_first > 0
    comfy.run(graph)
    assert counter.total == after_first
    graph["sampler"]["inputs"]["seed"] = 12345
    outputs = comfy.run(graph)
    assert counter.total == after_first
    assert len(comfy.saved_images(outputs, "save")) == 1  # the sampler did run again
    graph["encode"]["inputs"]["prompt"] = "a lighthouse in the sun"
    comfy.run(graph)
    assert counter.total > after_first  # control: a new prompt does reach the VLM


def test_vlm_is_managed_by_comfyui_and_unloads(comfy):
    import comfy.model_management as model_management

    comfy.run(encode_graph("a snowy owl", filename_prefix="managed"))
    vlm = _loaded_vlm(comfy)
    loaded = [m for m in model_management.current_loaded_models if m.model.model is vlm.patcher.model]
    assert loaded and loaded[0].model.model_size() > 0
    assert loaded[0].model.model.memory_required() > 0
    model_management.unload_all_models()
    assert not any(m.model.model is vlm.patcher.model for m in model_management.current_loaded_models)
    assert vlm.patcher.current_loaded_device() == vlm.patcher.offload_device


def test_without_an_adapter_a_native_sdxl_clip_encodes_the_caption(comfy):
    graph = _with_tiny_clip(encode_graph("a blue bicycle", filename_prefix="clip-fallback"), "encode")
    outputs = comfy.run(graph)
    assert len(comfy.saved_images(outputs, "save")) == 1
    encode_outputs = comfy.node_outputs("encode")
    (cond, extras), = encode_outputs[0][0]
    assert cond.shape == (1, 77, 2048) and extras["pooled_output"].shape == (1, 1280)
    assert extras["width"] == 64 and extras["target_height"] == 64
    clip = comfy.node_outputs("clip")[0][0]
    caption = encode_outputs[3][0]
    expected, = clip.encode_from_tokens_scheduled(clip.tokenize(caption))
    assert torch.equal(cond, expected[0])  # exactly the caption through that CLIP


def test_cancel_stops_generation_within_a_token(comfy):
    import comfy.model_management as model_management

    vlm = comfy.node_class("M2ChatVLMLoader").execute("m2chat-tiny-llava", "float32", "none", False)[0]
    adapter = comfy.node_class("M2ChatAdapterLoader").execute("m2chat-tiny-adapter.safetensors")[0]
    fed = []
    hook = vlm.loaded.input_embeddings.register_forward_hook(
        lambda module, args, output: fed.append(args[0].shape[-1]))
    model_management.interrupt_current_processing(True)
    try:
        with pytest.raises(model_management.InterruptProcessingException):
            comfy.node_class("M2ChatEncode").execute(
                vlm=vlm, prompt="a long tale", task="storytelling", draw_mode="always", gate_mode="adapter",
                gate_value=0.5, width=64, height=64, target_width=64, target_height=64, seed=0,
                max_new_tokens=50, temperature=0.0, top_p=1.0, adapter=adapter)
    finally:
        model_management.interrupt_current_processing(False)
        hook.remove()
    assert len(fed) <= 2  # the prompt, and at most the one token in flight
    assert vlm.counter.total == 0


def test_story_without_an_adapter_batches_each_caption_through_the_clip(comfy):
    graph = _with_tiny_clip(story_graph(panels=2, filename_prefix="story-clip"), "story")
    outputs = comfy.run(graph)
    assert len(comfy.saved_images(outputs, "save")) == 2
    story_outputs = comfy.node_outputs("story")
    (cond, extras), = story_outputs[0][0]
    assert cond.shape[0] == 2 and cond.shape[2] == 2048 and extras["pooled_output"].shape == (2, 1280)
    clip = comfy.node_outputs("clip")[0][0]
    for panel, caption in enumerate(story_outputs[3][0].splitlines()):
        expected, = clip.encode_from_tokens_scheduled(clip.tokenize(caption))
        repeats, left = divmod(cond.shape[1], expected[0].shape[1])  # CONDCrossAttn's batching
        assert left == 0 and torch.equal(cond[panel : panel + 1], expected[0].repeat(1, repeats, 1))  # every token


def test_clip_fallback_batches_a_short_and_a_long_caption_without_changing_the_short_one(comfy):
    import sys

    turn = sys.modules[comfy.node_class("M2ChatStory").__module__.rsplit(".", 1)[0] + ".turn"]
    clip, = comfy.node_class("TinySDXLCLIPLoader")().load(seed=0)
    short, long = "a red kite", " ".join(["a long winding caption about a red kite over the sea"] * 12)
    (cond, _), = turn.clip_conditioning(clip, [short, long], turn.SizeConditioning(64, 64, 64, 64))[0]
    alone = [clip.encode_from_tokens_scheduled(clip.tokenize(text))[0][0] for text in (short, long)]
    assert alone[1].shape[1] > alone[0].shape[1]  # the long caption takes several 77-token chunks
    repeats = cond.shape[1] // alone[0].shape[1]
    assert torch.equal(cond[:1], alone[0].repeat(1, repeats, 1)) and torch.equal(cond[1:], alone[1])


def test_vlm_loader_auto_dtype_computes_at_full_speed_on_the_cpu(comfy, caplog):
    """The world's VLM folder is stored in bfloat16. ComfyUI runs it on the CPU here, which
    computes bfloat16 natively only with bf16 units; elsewhere auto loads float32 (PyTorch
    would emulate bfloat16 hundreds of times slower), and an explicit bfloat16 is kept with a
    warning that says what to choose."""
    from comfy.model_management import text_encoder_device

    from m2chat_core.cpu_units import CPU_HAS_BF16_UNITS
    from train.world.layout import VLM_NAME

    assert text_encoder_device().type == "cpu"
    loader = comfy.node_class("M2ChatVLMLoader")
    auto = loader.execute(VLM_NAME, "auto", "none", False)[0]
    assert auto.loaded.model.dtype == (torch.bfloat16 if CPU_HAS_BF16_UNITS else torch.float32)
    with caplog.at_level("WARNING"):
        explicit = loader.execute(VLM_NAME, "bfloat16", "none", False)[0]
    assert explicit.loaded.model.dtype == torch.bfloat16
    assert ("Choose dtype auto or float32" in caplog.text) != CPU_HAS_BF16_UNITS
