"""API-format graphs on the tiny models, shared by the demo and the ComfyUI test tiers."""

from pathlib import Path

from PIL import Image

TINY_UNET = "m2chat-tiny-sdxl.safetensors"
# The pack's node IDs as DESIGN.md lists them (permanent once released); the tests check
# that ComfyUI and its frontend register exactly these.
PACK_NODE_IDS = frozenset({"M2ChatVLMLoader", "M2ChatAdapterLoader", "M2ChatEncode", "M2ChatStory", "M2ChatStoryboard"})


def native_sdxl_graph(positive: list, negative: list, *, width: int = 64, height: int = 64,
                      batch_size: int = 1, seed: int = 0, steps: int = 2,
                      filename_prefix: str = "m2chat-test", unet_name: str = TINY_UNET) -> dict:
    """UNETLoader -> KSampler -> VAEDecode (taesdxl) -> SaveImage, conditioning wired in
    from the links `positive` and `negative` (["node_id", output_index])."""
    return {
        "unet": {"class_type": "UNETLoader",
                 "inputs": {"unet_name": unet_name, "weight_dtype": "default"}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": "taesdxl"}},
        "latent": {"class_type": "EmptyLatentImage",
                   "inputs": {"width": width, "height": height, "batch_size": batch_size}},
        "sampler": {"class_type": "KSampler",
                    "inputs": {"model": ["unet", 0], "positive": positive, "negative": negative,
                               "latent_image": ["latent", 0], "seed": seed, "steps": steps,
                               "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
                               "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sampler", 0], "vae": ["vae", 0]}},
        "save": {"class_type": "SaveImage",
                 "inputs": {"images": ["decode", 0], "filename_prefix": filename_prefix}},
    }


def tiny_conditioning_graph(**kwargs) -> dict:
    """The native graph fed by the tiny extension's seeded conditioning."""
    graph = native_sdxl_graph(["cond", 0], ["cond", 0], **kwargs)
    graph["cond"] = {"class_type": "TinySDXLConditioning", "inputs": {"seed": 1}}
    return graph


def tiny_story_page_graph(panels: int = 4, **kwargs) -> dict:
    """A batch of panels from the tiny SDXL, laid out by M2ChatStoryboard and saved."""
    graph = tiny_conditioning_graph(batch_size=panels, **kwargs)
    graph["page"] = {"class_type": "M2ChatStoryboard",
                     "inputs": {"panels": ["decode", 0], "title": "M2Chat story",
                                "texts": "\n".join(f"Panel {i + 1}" for i in range(panels)),
                                "columns": 0, "font_size": 0}}
    graph["save_page"] = {"class_type": "SaveImage",
                          "inputs": {"images": ["page", 0], "filename_prefix": "storyboard"}}
    return graph


TINY_VLM = "m2chat-tiny-llava"
TINY_ADAPTER = "m2chat-tiny-adapter.safetensors"
GENERATION = {"seed": 0, "max_new_tokens": 6, "temperature": 0.0, "top_p": 1.0}


def size_inputs(width: int, height: int) -> dict:
    return {"width": width, "height": height, "target_width": width, "target_height": height}


def model_loaders(adapter: str | None = TINY_ADAPTER, vlm: str = TINY_VLM) -> dict:
    graph = {"vlm": {"class_type": "M2ChatVLMLoader",
                     "inputs": {"vlm_name": vlm, "dtype": "float32", "quantization": "none",
                                "trust_remote_code": False}}}
    if adapter is not None:
        graph["adapter"] = {"class_type": "M2ChatAdapterLoader", "inputs": {"adapter_name": adapter}}
    return graph


def encode_graph(prompt: str = "a red fox in the snow", *, width: int = 64, height: int = 64,
                 task: str = "text_to_image", adapter: str | None = TINY_ADAPTER, **kwargs) -> dict:
    """VLMLoader + AdapterLoader -> M2ChatEncode -> native tiny SDXL graph."""
    graph = native_sdxl_graph(["encode", 0], ["encode", 1], width=width, height=height, **kwargs)
    graph.update(model_loaders(adapter))
    inputs = {"vlm": ["vlm", 0], "prompt": prompt, "task": task, "draw_mode": "always",
              "gate_mode": "adapter", "gate_value": 0.5, **size_inputs(width, height), **GENERATION}
    if adapter is not None:
        inputs["adapter"] = ["adapter", 0]
    graph["encode"] = {"class_type": "M2ChatEncode", "inputs": inputs}
    return graph


def story_graph(premise: str = "a fox who learns to fly", *, panels: int = 4, width: int = 64,
                height: int = 64, **kwargs) -> dict:
    """M2ChatStory -> one batch-N KSampler -> panels -> M2ChatStoryboard page."""
    graph = native_sdxl_graph(["story", 0], ["story", 1], width=width, height=height,
                              batch_size=panels, **kwargs)
    graph.update(model_loaders())
    graph["story"] = {"class_type": "M2ChatStory",
                      "inputs": {"vlm": ["vlm", 0], "adapter": ["adapter", 0], "premise": premise,
                                 "panels": panels, "gate_mode": "adapter", "gate_value": 0.5,
                                 **size_inputs(width, height), **GENERATION}}
    graph["page"] = {"class_type": "M2ChatStoryboard",
                     "inputs": {"panels": ["decode", 0], "texts": ["story", 3], "title": "",
                                "columns": 0, "font_size": 0}}
    graph["save_page"] = {"class_type": "SaveImage",
                          "inputs": {"images": ["page", 0], "filename_prefix": "storyboard"}}
    return graph


# The shared workflows (workflows/*.json) on the tiny models: the files they name are
# swapped for tiny ones, and their sizes shrunk, without touching anything else.
TINY_FILE_INPUTS = {"M2ChatVLMLoader": {"vlm_name": TINY_VLM},
                    "M2ChatAdapterLoader": {"adapter_name": TINY_ADAPTER}}
# CheckpointLoaderSimple cannot read the tiny UNet: each of its outputs (MODEL, CLIP, VAE)
# comes from a native loader of its own instead.
TINY_CHECKPOINT_PARTS = [("UNETLoader", {"unet_name": TINY_UNET, "weight_dtype": "default"}),
                         ("TinySDXLCLIPLoader", {"seed": 0}),
                         ("VAELoader", {"vae_name": "taesdxl"})]
TINY_INPUT_IMAGE = "m2chat-tiny-input.png"


def small_run_inputs(size: int = 64, steps: int = 2, max_new_tokens: int = 4) -> dict[str, dict]:
    """Input values by node type that make a shared workflow quick on the tiny models."""
    turn = {**size_inputs(size, size), "max_new_tokens": max_new_tokens}
    return {"EmptyLatentImage": {"width": size, "height": size}, "KSampler": {"steps": steps},
            "M2ChatEncode": turn, "M2ChatStory": turn, "LoadImage": {"image": TINY_INPUT_IMAGE}}


def copy_prompt(api_prompt: dict) -> dict:
    """A copy of an API prompt whose nodes' inputs can be changed without touching it."""
    return {node_id: {**node, "inputs": dict(node["inputs"])} for node_id, node in api_prompt.items()}


def set_inputs(api_prompt: dict, values_by_type: dict[str, dict]) -> dict:
    """A copy of an API prompt with these input values on every node of these types."""
    prompt = copy_prompt(api_prompt)
    for node in prompt.values():
        node["inputs"].update(values_by_type.get(node["class_type"], {}))
    return prompt


def swap_to_tiny_models(api_prompt: dict) -> dict:
    """A copy of an API prompt that loads the tiny models instead of the ones it names."""
    return swap_checkpoints(set_inputs(api_prompt, TINY_FILE_INPUTS), TINY_CHECKPOINT_PARTS)


def swap_checkpoints(api_prompt: dict, parts: list[tuple[str, dict]]) -> dict:
    """A copy of an API prompt whose CheckpointLoaderSimple nodes are replaced by one native
    loader per output (MODEL, CLIP, VAE): `parts`, as (class_type, inputs) in output order."""
    prompt = copy_prompt(api_prompt)
    checkpoints = [node_id for node_id, node in prompt.items() if node["class_type"] == "CheckpointLoaderSimple"]
    for checkpoint in checkpoints:
        del prompt[checkpoint]
        for node in list(prompt.values()):
            for name, value in node["inputs"].items():
                if isinstance(value, list) and value[0] == checkpoint:
                    part = f"{checkpoint}.{value[1]}"
                    class_type, inputs = parts[value[1]]
                    prompt[part] = {"class_type": class_type, "inputs": dict(inputs)}
                    node["inputs"][name] = [part, 0]
    return prompt


def write_tiny_input_image(input_folder: Path) -> str:
    """A small picture under ComfyUI's input folder, for LoadImage; returns its name."""
    input_folder.mkdir(parents=True, exist_ok=True)
    gradient = Image.linear_gradient("L").resize((64, 64))
    picture = Image.merge("RGB", (gradient, gradient.rotate(90), Image.new("L", (64, 64), 128)))
    picture.save(input_folder / TINY_INPUT_IMAGE)
    return TINY_INPUT_IMAGE
