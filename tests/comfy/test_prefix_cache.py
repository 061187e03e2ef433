"""The VLM's prefix cache in ComfyUI: Story panels and chained Encode nodes reuse what
earlier turns prefilled, with the conditioning they give without the cache; ComfyUI's
unloading drops the cache."""

import logging

import torch

from tiny_graphs import TINY_ADAPTER, TINY_VLM, encode_graph

GENERATION = (0, 4, 0.0, 1.0)  # seed, max new tokens, temperature, top-p
RED = torch.zeros(1, 32, 48, 3)
RED[..., 0] = 0.8


def _models(comfy, cached: bool):
    vlm = comfy.node_class("M2ChatVLMLoader").execute(TINY_VLM, "float32", "none", False)[0]
    if not cached:
        vlm.prefix_cache.max_tokens = vlm.prefix_cache.max_images = 0
    adapter = comfy.node_class("M2ChatAdapterLoader").execute(TINY_ADAPTER)[0]
    return vlm, adapter


def _story(comfy, vlm, adapter, panels=4):
    return comfy.node_class("M2ChatStory").execute(
        vlm, "a fox who learns to fly", panels, "adapter", 0.5, 64, 64, 64, 64, *GENERATION, adapter=adapter).args


def _dialogue(comfy, vlm, adapter):
    """Three chained Encode turns, the first with an input image; (positive, answer, caption) of each."""
    session, outputs = None, []
    for prompt, image in (("What is in this picture?", RED), ("Draw it at night.", None), ("Add a moon.", None)):
        positive, _, answer, caption, session, _ = comfy.node_class("M2ChatEncode").execute(
            vlm, prompt, "multimodal_dialogue", "always", "adapter", 0.5, 64, 64, 64, 64, *GENERATION,
            adapter=adapter, session=session, image=image).args
        outputs.append((positive[0][0], answer, caption))
    return outputs


def test_story_panels_reuse_the_cache_and_give_the_uncached_conditioning(comfy):
    plain_vlm, adapter = _models(comfy, cached=False)
    plain = _story(comfy, plain_vlm, adapter)
    vlm, adapter = _models(comfy, cached=True)
    cached = _story(comfy, vlm, adapter)
    assert cached[2:4] == plain[2:4]  # story and captions
    torch.testing.assert_close(cached[0][0][0], plain[0][0][0], atol=1e-5, rtol=1e-4)
    assert vlm.counter.total < 0.6 * plain_vlm.counter.total
    assert vlm.prefix_cache.cached_tokens > 0


def test_chained_encode_turns_reuse_the_cache_and_give_the_uncached_outputs(comfy):
    plain_vlm, adapter = _models(comfy, cached=False)
    plain = _dialogue(comfy, plain_vlm, adapter)
    vlm, adapter = _models(comfy, cached=True)
    cached = _dialogue(comfy, vlm, adapter)
    for (positive, *texts), (expected, *expected_texts) in zip(cached, plain, strict=True):
        assert texts == expected_texts
        torch.testing.assert_close(positive, expected, atol=1e-5, rtol=1e-4)
    assert vlm.counter.total < 0.75 * plain_vlm.counter.total
    assert vlm.prefix_cache.cached_images == 1


def _chained_graph(last_prompt: str) -> dict:
    graph = encode_graph("a lighthouse on a cliff", filename_prefix="chained", task="multimodal_dialogue")
    graph["turn2"] = dict(graph["encode"], inputs={**graph["encode"]["inputs"], "prompt": last_prompt,
                                                   "session": ["encode", 4]})
    graph["sampler"]["inputs"]["positive"] = ["turn2", 0]
    return graph


def _tokens_for_rerun(comfy, vlm, graph) -> int:
    before = vlm.counter.total
    comfy.run(graph)
    return vlm.counter.total - before


def test_a_rerun_of_only_the_later_node_prefills_only_what_is_new(comfy, caplog):
    comfy.run(_chained_graph("Now at night."))
    vlm = comfy.node_outputs("vlm")[0][0]
    with caplog.at_level(logging.DEBUG):  # the pack's loggers are named after ComfyUI's module path
        cached = _tokens_for_rerun(comfy, vlm, _chained_graph("Now in the fog."))  # only turn2 runs again
    assert "Prefix cache hit" in caplog.text
    vlm.prefix_cache.clear("test: the same rerun without the cache")
    uncached = _tokens_for_rerun(comfy, vlm, _chained_graph("Now in the rain."))
    assert 0 < cached < uncached - 40  # the instruction and turn 1 were not prefilled again


def test_unloading_the_vlm_drops_its_cache(comfy):
    import comfy.model_management as model_management

    vlm, adapter = _models(comfy, cached=True)
    _story(comfy, vlm, adapter, panels=2)
    assert vlm.prefix_cache.cached_tokens > 0
    model_management.unload_all_models()
    assert vlm.prefix_cache.cached_tokens == vlm.prefix_cache.cached_images == 0


def test_freeing_part_of_the_vlms_memory_drops_its_cache(comfy):
    import comfy.model_management as model_management

    vlm, adapter = _models(comfy, cached=True)
    _story(comfy, vlm, adapter, panels=2)
    assert vlm.prefix_cache.cached_tokens > 0
    vlm.patcher.partially_unload(vlm.patcher.offload_device, memory_to_free=1)
    assert vlm.prefix_cache.cached_tokens == 0
    model_management.unload_all_models()
