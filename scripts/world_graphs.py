"""API-format graphs on the shapes world's models, and the judge reading what they drew:
shared by the demo, the world's benchmark and the tests that check the shipped models.

Every graph is native ComfyUI: UNETLoader (the world's UNet) -> KSampler -> VAEDecode
(the world's taesdxl) -> SaveImage, conditioned by
  caption   CLIPTextEncode of a caption through the world's text encoders (SDXL's CLIP);
  zero      that conditioning zeroed out (ConditioningZeroOut): what the UNet draws alone;
  fallback  the pack's M2ChatEncode without an adapter: the world VLM answers a request,
            its caption goes through the world's text encoders (the "VLM + SD" baseline).
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from PIL import Image
from tiny_graphs import GENERATION, copy_prompt, model_loaders, native_sdxl_graph, size_inputs, swap_checkpoints

from train.world.judge import Judge, accuracy, to_tensor
from train.world.language import caption, request
from train.world.layout import VLM_NAME
from train.world.scenes import Scene, random_scene
from train.world.sdxl import TEXT_ENCODER_SEED, UNET_FILE
from train.world.vocabulary import IMAGE_SIZE

STEPS, GUIDANCE = 20, 5.0  # KSampler: euler, normal schedule
CONDITIONINGS = ("zero", "caption", "fallback")


def _sampled(positive: list, negative: list, seed: int, prefix: str) -> dict:
    graph = native_sdxl_graph(positive, negative, width=IMAGE_SIZE, height=IMAGE_SIZE, seed=seed, steps=STEPS,
                              filename_prefix=prefix, unet_name=UNET_FILE)
    graph["sampler"]["inputs"]["cfg"] = GUIDANCE
    graph["clip"] = {"class_type": "TinySDXLCLIPLoader", "inputs": {"seed": TEXT_ENCODER_SEED}}
    return graph


def caption_graph(text: str, seed: int) -> dict:
    graph = _sampled(["positive", 0], ["negative", 0], seed, "world-caption")
    graph["positive"] = {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["clip", 0]}}
    graph["negative"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["clip", 0]}}
    return graph


def zero_graph(seed: int) -> dict:
    graph = _sampled(["zero", 0], ["zero", 0], seed, "world-zero")
    graph["text"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["clip", 0]}}
    graph["zero"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["text", 0]}}
    return graph


def fallback_graph(request: str, seed: int) -> dict:
    graph = _sampled(["encode", 0], ["encode", 1], seed, "world-fallback")
    graph.update(model_loaders(adapter=None, vlm=VLM_NAME))
    graph["encode"] = {"class_type": "M2ChatEncode", "inputs": {
        "vlm": ["vlm", 0], "clip": ["clip", 0], "prompt": request, "task": "text_to_image",
        "draw_mode": "always", "gate_mode": "adapter", "gate_value": 0.5,
        **size_inputs(IMAGE_SIZE, IMAGE_SIZE), **GENERATION, "max_new_tokens": 48}}
    return graph


def run_graph(server, graph: dict) -> Path:
    """Run one graph on the server; the picture it saved."""
    entry = server.wait(server.queue(graph))
    if entry["status"]["status_str"] != "success":
        raise RuntimeError(f"A world graph failed: {entry['status']}\nServer log: {server.log_path}")
    image, = (image for output in entry["outputs"].values() for image in output.get("images", []))
    return server.output_file(image)


def judged(judge: Judge, pictures: list[Path], truths: list[Scene]) -> dict[str, float]:
    """The judge's per-attribute accuracy over the pictures (train/world/judge.accuracy)."""
    images = []
    for path in pictures:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    with torch.no_grad():
        return accuracy(judge, to_tensor(images), truths)


# Issue 15's targets on held-out (colour, shape) prompts, per conditioning: score -> minimum.
TARGETS = {"caption": {"colour_and_shape": 0.90, "position": 0.80}, "fallback": {"colour_and_shape": 0.85}}


def held_out_prompts(count: int, seed: int = 0) -> list[tuple[Scene, str]]:
    """Test-split scenes (a held-out pair in each) and a request for each, seeded."""
    rng = random.Random(f"world-prompts:{seed}")
    scenes = [random_scene(rng, "test") for _ in range(count)]
    return [(scene, request(rng, scene)) for scene in scenes]


def graph_for(conditioning: str, scene: Scene, request_text: str, seed: int) -> dict:
    if conditioning == "zero":
        return zero_graph(seed)
    if conditioning == "caption":
        return caption_graph(caption(scene), seed)
    return fallback_graph(request_text, seed)


def measure(server, judge: Judge, conditioning: str, prompts: list[tuple[Scene, str]]) -> dict[str, float]:
    """Draw every prompt (seed = its index) with one conditioning; the judge's accuracy."""
    pictures = [run_graph(server, graph_for(conditioning, scene, text, seed))
                for seed, (scene, text) in enumerate(prompts)]
    return judged(judge, pictures, [scene for scene, _ in prompts])


def missed_targets(figures: dict[str, dict[str, float]]) -> list[str]:
    return [f"{row} {score} {figures[row][score]:.3f} < {minimum}"
            for row, targets in TARGETS.items() if row in figures
            for score, minimum in targets.items() if figures[row][score] < minimum]


WORLD_CHECKPOINT_PARTS = [("UNETLoader", {"unet_name": UNET_FILE, "weight_dtype": "default"}),
                          ("TinySDXLCLIPLoader", {"seed": TEXT_ENCODER_SEED}),
                          ("VAELoader", {"vae_name": "taesdxl"})]


def world_workflow(api_prompt: dict, text: str) -> dict:
    """A shared workflow (API format) on the world's models: its checkpoint swapped for the
    world's SDXL parts, its VLM for the world's, the text of its M2Chat node for `text`,
    sizes for the world's, KSampler at STEPS and GUIDANCE. Without a trained adapter for the
    world VLM, the caption goes through the world's text encoders (the CLIP fallback)."""
    prompt = copy_prompt(api_prompt)
    checkpoint = next(node_id for node_id, node in prompt.items() if node["class_type"] == "CheckpointLoaderSimple")
    for node_id in [node_id for node_id, node in prompt.items() if node["class_type"] == "M2ChatAdapterLoader"]:
        del prompt[node_id]
    world_size = size_inputs(IMAGE_SIZE, IMAGE_SIZE)
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] in ("M2ChatEncode", "M2ChatStory"):
            inputs.pop("adapter", None)
            inputs.update(world_size, clip=[checkpoint, 1], **{"premise" if "premise" in inputs else "prompt": text})
        elif node["class_type"] == "M2ChatVLMLoader":
            inputs.update(vlm_name=VLM_NAME, dtype="float32")
        elif node["class_type"] == "EmptyLatentImage":
            inputs.update(width=IMAGE_SIZE, height=IMAGE_SIZE)
        elif node["class_type"] == "KSampler":
            inputs.update(steps=STEPS, cfg=GUIDANCE)
        elif node["class_type"] == "M2ChatStoryboard":
            inputs.update(title=text)
    return swap_checkpoints(prompt, WORLD_CHECKPOINT_PARTS)
