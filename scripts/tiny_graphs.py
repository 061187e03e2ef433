"""API-format graphs on the tiny models, shared by the demo and the ComfyUI test tiers."""

TINY_UNET = "m2chat-tiny-sdxl.safetensors"


def native_sdxl_graph(positive: list, negative: list, *, width: int = 64, height: int = 64,
                      batch_size: int = 1, seed: int = 0, steps: int = 2,
                      filename_prefix: str = "m2chat-test") -> dict:
    """UNETLoader -> KSampler -> VAEDecode (taesdxl) -> SaveImage, conditioning wired in
    from the links `positive` and `negative` (["node_id", output_index])."""
    return {
        "unet": {"class_type": "UNETLoader",
                 "inputs": {"unet_name": TINY_UNET, "weight_dtype": "default"}},
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
