"""Load a Hugging Face image-text-to-text VLM folder and expose what the encoder reads.

Supported: LLaVA-1.5, LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL, and any
`AutoModelForImageTextToText` model whose input embeddings, LM head, decoder layers
and `get_image_features` are reachable and whose forward accepts precomputed image
features (`mm_encoder_outputs`), so images are encoded once per turn.

f_img (`LoadedVLM.encode_images`) is what the model's own `get_image_features` yields:
the image embeddings *after* the multimodal projector, i.e. exactly what the language
model reads at the image placeholders ("CLIP ViT + MLP" in the paper). Their width is
the language model's hidden size, which is `VLMInfo.vision_feature_size`.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from transformers import (
    MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING,
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    BatchFeature,
    PretrainedConfig,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .cpu_units import cpu_computes_natively
from .upcast import upcast_releasing_file_pages

logger = logging.getLogger(__name__)

FAMILIES = {"llava": "llava-1.5", "llava_next": "llava-next", "qwen2_vl": "qwen2-vl", "qwen2_5_vl": "qwen2.5-vl"}
GENERIC_FAMILY = "image-text-to-text"
DTYPES = {"auto": "auto", "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
QUANTIZATIONS = ("none", "8bit", "4bit")
# Kept in the compute dtype when quantizing: the vision side and the LM head.
_UNQUANTIZED_MODULES = ["lm_head", "vision_tower", "multi_modal_projector", "visual"]
_FORWARD_ARGUMENTS = ("input_ids", "inputs_embeds", "mm_encoder_outputs")
# The KV cache's forward argument, also the output attribute that returns it: transformers
# 5.24 renamed `past_key_values` to `cache`. Detected on the loaded model, newest first.
_CACHE_ARGUMENTS = ("cache", "past_key_values")
_PIXEL_KEYS = ("pixel_values", "pixel_values_videos")


class VLMFolderError(FileNotFoundError):
    """The VLM folder is missing, incomplete, or holds weights that may not be loaded."""


class UnsupportedVLMError(ValueError):
    """The folder holds a model the M²Chat encoder cannot drive (not a VLM, or a VLM
    whose hidden states, embeddings or vision features cannot be read)."""


class QuantizationUnavailableError(RuntimeError):
    """4/8-bit loading was asked for where CUDA or bitsandbytes is missing."""


@dataclass(frozen=True)
class VLMInfo:
    """Facts about a loaded VLM, used to check adapter compatibility."""

    name: str  # folder name
    model_type: str  # config.model_type, e.g. "llava"
    family: str  # one of FAMILIES' values or GENERIC_FAMILY
    hidden_size: int  # H_vlm, width of the hidden states h_l, e_ans, e_cap
    vision_feature_size: int  # D_vis, width of f_img (projected image embeddings)
    num_layers: int  # decoder layers; hidden-state indices run from -(num_layers + 1) to num_layers
    max_context_length: int  # tokens the language model can attend to


class LoadedVLM:
    """A loaded VLM with its processor; the encoder drives it through these accessors."""

    def __init__(self, model: nn.Module, processor: Any, info: VLMInfo, decoder_layers: nn.ModuleList) -> None:
        self.model = model
        self.processor = processor
        self.info = info
        self.decoder_layers = decoder_layers
        self._forward_arguments = set(inspect.signature(model.forward).parameters)
        self.cache_argument = _cache_argument(self._forward_arguments)
        self._image_feature_arguments = set(inspect.signature(model.get_image_features).parameters)
        # Modules that cache per-sequence state between forwards (Qwen2-VL's M-RoPE deltas).
        self._stateful_modules = [module for module in model.modules() if hasattr(module, "rope_deltas")]

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def device(self) -> torch.device:
        return self.input_embeddings.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.input_embeddings.weight.dtype

    @property
    def input_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    @property
    def output_embeddings(self) -> nn.Module:
        return self.model.get_output_embeddings()

    def eos_token_ids(self) -> frozenset[int]:
        """Token ids that end a generated segment (generation config and tokenizer)."""
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        ids = set(configured if isinstance(configured, (list, tuple)) else [configured])
        ids.add(self.tokenizer.eos_token_id)
        return frozenset(int(token) for token in ids if token is not None)

    def accepts_forward_argument(self, name: str) -> bool:
        return name in self._forward_arguments

    def process(self, text: str, images: Sequence[Image.Image]) -> BatchFeature:
        """Token ids (image placeholders expanded) and pixel inputs for one prompt."""
        return self.processor(text=text, images=list(images) or None, return_tensors="pt")

    def blank_picture_inputs(self) -> BatchFeature:
        """The image processor's inputs for one black picture, for `encode_images`."""
        return self.processor.image_processor(images=[Image.new("RGB", (64, 64))], return_tensors="pt")

    @property
    def image_token_id(self) -> int | None:
        """The id of the placeholder token the processor expands for each image."""
        config = self.model.config
        token_id = getattr(config, "image_token_id", None)
        return token_id if token_id is not None else getattr(config, "image_token_index", None)

    def encode_images(
        self, inputs: Mapping[str, Any], indices: Sequence[int] | None = None
    ) -> tuple[dict[str, Any], list[torch.Tensor]]:
        """Run the vision tower + projector once on the prompt's images (or on those at
        `indices`, in prompt order).

        Returns the forward's `mm_encoder_outputs` (so the forward does not encode them
        again) and one (P_i, D_vis) tensor per image encoded.
        """
        arguments = {
            key: value.to(self.device) if isinstance(value, torch.Tensor) else value
            for key, value in _select_images(inputs, indices).items()
            if key in self._image_feature_arguments
        }
        arguments["pixel_values"] = arguments["pixel_values"].to(self.dtype)
        outputs = self.model.get_image_features(**arguments, return_dict=True)
        return {"image": outputs}, list(outputs.pooler_output)

    @staticmethod
    def image_encoder_outputs(features: Sequence[torch.Tensor]) -> dict[str, Any] | None:
        """`mm_encoder_outputs` for a forward whose placeholders stand for `features`, one
        (P_i, D_vis) tensor per image, in prompt order; None without images."""
        return {"image": BaseModelOutputWithPooling(pooler_output=list(features))} if features else None

    def forward_inputs(
        self, inputs: Mapping[str, Any], start: int = 0, image_indices: Sequence[int] = ()
    ) -> dict[str, Any]:
        """The processor outputs the forward takes once images are encoded (ids, mask,
        grid sizes for M-RoPE, ...), on the model's device.

        With `start` > 0 the first `start` positions come from a KV cache: the sequence
        inputs keep only the positions after it, the attention mask stays whole, the
        per-image inputs keep the images at `image_indices` (those after `start`), and
        M-RoPE models get their position ids for the whole prompt cut the same way. Call
        `reset_generation_state` first.
        """
        forward = {
            key: value.to(self.device)
            for key, value in inputs.items()
            if key not in _PIXEL_KEYS and key in self._forward_arguments
        }
        if start == 0:
            return forward
        position_ids = self._prompt_position_ids(forward)
        length = forward["input_ids"].shape[1]
        for key, value in forward.items():
            if key in self._image_feature_arguments:
                forward[key] = value[list(image_indices)] if image_indices else None
            elif key != "attention_mask" and value.dim() == 2 and value.shape[1] == length:
                forward[key] = value[:, start:]
        if position_ids is not None:
            forward["position_ids"] = position_ids[..., start:]
        return {key: value for key, value in forward.items() if value is not None}

    def _prompt_position_ids(self, forward: Mapping[str, Any]) -> torch.Tensor | None:
        """M-RoPE position ids of the whole prompt, computed (and the rope deltas that later
        steps continue from recorded) by the model's own method; None for 1-D positions."""
        for module in self._stateful_modules:
            compute = getattr(module, "compute_3d_position_ids", None)
            if compute is not None:
                # No cache (so no past length): positions from 0. Arguments the prompt lacks
                # (video grids, the cache under either name) are passed as None.
                parameters = inspect.signature(compute).parameters
                arguments = {name: forward.get(name) for name in parameters if name not in ("self", "kwargs")}
                return compute(**arguments)
        return None

    def reset_generation_state(self) -> None:
        """Forget per-sequence state cached by a previous generation (Qwen2-VL's rope deltas)."""
        for module in self._stateful_modules:
            module.rope_deltas = None


def _select_images(inputs: Mapping[str, Any], indices: Sequence[int] | None) -> Mapping[str, Any]:
    """The pixel inputs of the images at `indices` (all when None). Qwen2-VL-style processors
    flatten every image's patches into one `pixel_values` and give each image's grid in
    `image_grid_thw`; others stack one entry per image."""
    if indices is None:
        return inputs
    indices = list(indices)
    selected = dict(inputs)
    grid = inputs.get("image_grid_thw")
    if grid is not None:
        patches = inputs["pixel_values"].split(grid.prod(-1).tolist())
        selected["pixel_values"] = torch.cat([patches[index] for index in indices])
        selected["image_grid_thw"] = grid[indices]
        return selected
    for key in ("pixel_values", "image_sizes"):
        if key in inputs:
            selected[key] = inputs[key][indices]
    return selected


def load_vlm(
    folder: str | Path,
    *,
    dtype: str | torch.dtype = "auto",
    quantization: str = "none",
    device: str | torch.device | None = None,
    compute_device: str | torch.device | None = None,
    trust_remote_code: bool = False,
) -> LoadedVLM:
    """Load a `save_pretrained` VLM folder offline (`local_files_only=True`, safetensors only).

    dtype: "auto" (the folder's), "float32", "float16", "bfloat16" or a torch dtype; weights
    are loaded straight into it. quantization: "none", "8bit" or "4bit" (bitsandbytes, CUDA
    only; the vision side and LM head stay unquantized). device defaults to "cuda" when
    quantizing and "cpu" otherwise. compute_device: where the model will run (the nodes pass
    ComfyUI's text-encoder device); where it is a CPU that would emulate the folder's bfloat16
    or float16 (cpu_units.py), "auto" loads float32 instead.
    """
    folder = Path(folder)
    _check_folder(folder)
    torch_dtype = _resolve_dtype(dtype)
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"Unknown quantization {quantization!r}; choose one of {list(QUANTIZATIONS)}.")
    device = torch.device(device or ("cuda" if quantization != "none" else "cpu"))
    config = _image_text_to_text_config(folder, trust_remote_code)
    stored_dtype = getattr(config, "dtype", None)
    if quantization == "none" and compute_device is not None and torch.device(compute_device).type == "cpu":
        torch_dtype = _cpu_compute_dtype(torch_dtype, stored_dtype, folder.name)
    options: dict[str, Any] = {
        "dtype": torch_dtype,
        "local_files_only": True,
        "trust_remote_code": trust_remote_code,
        "use_safetensors": True,
    }
    if quantization != "none":
        options["quantization_config"] = _quantization_config(quantization, torch_dtype, device)
    if device.type != "cpu":
        options["device_map"] = {"": device}

    try:
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise VLMFolderError(
            f"{folder} has no usable processor (tokenizer, image processor, chat template): "
            f"{str(error).rstrip('.')}. Copy the processor files that came with the model into the folder."
        ) from error
    # float32 from a narrower folder on the CPU: load the folder's dtype (views of the
    # mapped file) and upcast tensor by tensor, so the file's pages and the float32 copies
    # are never all resident together (see upcast.py).
    upcast = (
        torch_dtype == torch.float32 and device.type == "cpu" and quantization == "none"
        and isinstance(stored_dtype, torch.dtype) and stored_dtype != torch.float32
    )
    if upcast:
        options["dtype"] = stored_dtype
    model = AutoModelForImageTextToText.from_pretrained(folder, config=config, **options)
    if upcast:
        upcast_releasing_file_pages(model, torch.float32)
    model.eval()
    decoder_layers = _check_supported(model, processor, folder)
    info = _describe(model, folder, decoder_layers)
    logger.info(
        "Loaded VLM %s (%s, %d layers, hidden %d, %s, %s) on %s",
        info.name, info.family, info.num_layers, info.hidden_size, model.dtype, quantization, device,
    )
    return LoadedVLM(model, processor, info, decoder_layers)


def decoder_layer_count(folder: str | Path, *, trust_remote_code: bool = False) -> int:
    """The language model's decoder layers as the folder's config declares them, read
    without loading any weights (to check settings before a long load)."""
    folder = Path(folder)
    _check_folder(folder)
    return int(_image_text_to_text_config(folder, trust_remote_code).get_text_config().num_hidden_layers)


def _check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise VLMFolderError(
            f"VLM folder {folder} does not exist. Put a Hugging Face save_pretrained folder "
            "(config.json, *.safetensors, processor files) under models/LLM/."
        )
    if not (folder / "config.json").is_file():
        raise VLMFolderError(
            f"{folder} has no config.json; choose the folder that holds the model's config.json and weights."
        )
    if not any(folder.glob("*.safetensors")):
        pickled = sorted(path.name for pattern in ("*.bin", "*.pt", "*.pth") for path in folder.glob(pattern))
        reason = (
            f"it only has pickle weights ({', '.join(pickled)}), which are never loaded"
            if pickled
            else "it has no weight files"
        )
        raise VLMFolderError(f"{folder} cannot be loaded: {reason}. Use a folder with *.safetensors weights.")


def _image_text_to_text_config(folder: Path, trust_remote_code: bool) -> PretrainedConfig:
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
    except ValueError as error:
        hint = "" if trust_remote_code else " If it needs custom code, allow trust_remote_code only for code you trust."
        raise UnsupportedVLMError(f"{folder}: {str(error).rstrip('.')}.{hint}") from error
    remote_classes = getattr(config, "auto_map", None) or {}
    if type(config) not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING and "AutoModelForImageTextToText" not in remote_classes:
        raise UnsupportedVLMError(
            f"{folder} holds a {config.model_type!r} model, which is not an image-text-to-text VLM; choose a "
            "vision-language model folder (LLaVA-1.5, LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL, ...)."
        )
    return config


def _cpu_compute_dtype(dtype: str | torch.dtype, stored_dtype: Any, name: str) -> str | torch.dtype:
    """The dtype a model that runs on the CPU loads in: "auto" becomes float32 where the CPU
    would emulate the folder's dtype; an explicit emulated dtype is kept, with a warning."""
    chosen = stored_dtype if dtype == "auto" else dtype
    if not isinstance(chosen, torch.dtype) or cpu_computes_natively(chosen):
        return dtype
    if dtype == "auto":
        logger.info("%s is stored in %s, which this CPU has no units for (PyTorch emulates it, hundreds of times "
                    "slower than float32): loading it in float32 (dtype auto)", name, chosen)
        return torch.float32
    logger.warning("%s runs in %s on a CPU without %s units: PyTorch emulates it, hundreds of times slower than "
                   "float32. Choose dtype auto or float32 (twice the memory of %s).", name, chosen, chosen, chosen)
    return dtype


def _resolve_dtype(dtype: str | torch.dtype) -> str | torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; choose one of {list(DTYPES)}.")
    return DTYPES[dtype]


def _quantization_config(quantization: str, dtype: str | torch.dtype, device: torch.device) -> Any:
    if not torch.cuda.is_available():
        raise QuantizationUnavailableError(
            f"{quantization} loading uses bitsandbytes, which needs a CUDA GPU, and this machine has none. "
            "Load with quantization 'none' (bfloat16 halves memory) instead."
        )
    if device.type != "cuda":
        raise QuantizationUnavailableError(f"{quantization} loading needs a CUDA device, got device {device}.")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise QuantizationUnavailableError(
            f"{quantization} loading needs the bitsandbytes package, which is not installed: "
            "pip install bitsandbytes, or load with quantization 'none'."
        )
    from transformers import BitsAndBytesConfig

    compute_dtype = torch.bfloat16 if dtype == "auto" else dtype
    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_quant_type="nf4",
            llm_int8_skip_modules=_UNQUANTIZED_MODULES,
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=_UNQUANTIZED_MODULES)


def _check_supported(model: nn.Module, processor: Any, folder: Path) -> nn.ModuleList:
    """The decoder layers, or an UnsupportedVLMError naming everything that is missing."""
    missing = []
    if not isinstance(model.get_input_embeddings(), nn.Embedding):
        missing.append("input embeddings (get_input_embeddings)")
    if getattr(model.get_output_embeddings(), "weight", None) is None:
        missing.append("an LM head (get_output_embeddings)")
    if not callable(getattr(model, "get_image_features", None)):
        missing.append("vision features (get_image_features)")
    forward_arguments = inspect.signature(model.forward).parameters
    missing += [f"forward argument {name!r}" for name in _FORWARD_ARGUMENTS if name not in forward_arguments]
    if _cache_argument(forward_arguments) is None:
        missing.append("a KV-cache forward argument (" + " or ".join(map(repr, _CACHE_ARGUMENTS)) + ")")
    layers = getattr(model.get_decoder(), "layers", None) if hasattr(model, "get_decoder") else None
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        missing.append("language-model decoder layers (get_decoder().layers)")
    if getattr(processor, "tokenizer", None) is None:
        missing.append("a tokenizer in the processor")
    if missing:
        raise UnsupportedVLMError(
            f"{folder} ({model.config.model_type}) cannot be used by the M²Chat encoder; it lacks "
            + "; ".join(missing)
            + ". Supported: LLaVA-1.5, LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL."
        )
    return layers


def _cache_argument(forward_arguments: Iterable[str]) -> str | None:
    return next((name for name in _CACHE_ARGUMENTS if name in forward_arguments), None)


def _describe(model: nn.Module, folder: Path, decoder_layers: nn.ModuleList) -> VLMInfo:
    text_config = model.config.get_text_config()
    hidden_size = int(text_config.hidden_size)
    max_context = getattr(text_config, "max_position_embeddings", None)
    if not max_context:
        raise UnsupportedVLMError(
            f"{folder}: the text config has no max_position_embeddings, so the context limit is unknown."
        )
    return VLMInfo(
        name=folder.name,
        model_type=model.config.model_type,
        family=FAMILIES.get(model.config.model_type, GENERIC_FAMILY),
        hidden_size=hidden_size,
        vision_feature_size=hidden_size,  # projected image embeddings live in the LLM's space
        num_layers=len(decoder_layers),
        max_context_length=int(max_context),
    )
