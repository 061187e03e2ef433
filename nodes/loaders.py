"""M2ChatVLMLoader and M2ChatAdapterLoader."""

from __future__ import annotations

import comfy.model_management
import comfy.ops
from comfy_api.latest import io

from ..m2chat_core.adapter_file import load_adapter_file
from ..m2chat_core.vlm import DTYPES, QUANTIZATIONS, load_vlm
from ..m2chat_core.prefix_cache import PrefixCache
from .managed import make_patcher, make_vlm_patcher
from .model_folders import list_adapter_files, list_vlm_folders, resolve_adapter_file, resolve_vlm_folder
from .types import AdapterType, M2ChatAdapter, M2ChatVLM, VLMType


class M2ChatVLMLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="M2ChatVLMLoader",
            display_name="M²Chat VLM Loader",
            category="M²Chat",
            description="Loads a vision-language model folder (Hugging Face format) from models/LLM, offline.",
            inputs=[
                io.Combo.Input("vlm_name", options=list_vlm_folders(),
                               tooltip="A folder with config.json under models/LLM (or an LLM path "
                                       "from extra_model_paths.yaml), e.g. llava-1.5-7b-hf."),
                io.Combo.Input("dtype", options=list(DTYPES), default="auto",
                               tooltip="Weight precision; auto keeps the folder's own (float32 on a CPU that would "
                                       "emulate a bfloat16 or float16 folder, hundreds of times slower)."),
                io.Combo.Input("quantization", options=list(QUANTIZATIONS), default="none",
                               tooltip="4/8-bit weights through bitsandbytes (NVIDIA GPUs only); "
                                       "such a model stays on the GPU."),
                io.Boolean.Input("trust_remote_code", default=False,
                                 tooltip="Run Python code shipped inside the model folder. Only "
                                         "for folders from sources you trust."),
            ],
            outputs=[VLMType.Output(display_name="vlm")],
        )

    @classmethod
    def execute(cls, vlm_name, dtype, quantization, trust_remote_code) -> io.NodeOutput:
        loaded = load_vlm(resolve_vlm_folder(vlm_name), dtype=dtype, quantization=quantization,
                          compute_device=comfy.model_management.text_encoder_device(),
                          trust_remote_code=trust_remote_code)
        # One context's worth of KV: a story's or dialogue's growing prompt fits in it.
        prefix_cache = PrefixCache(max_tokens=loaded.info.max_context_length)
        patcher = make_vlm_patcher(loaded.model, prefix_cache, hidden_size=loaded.info.hidden_size,
                                   num_layers=loaded.info.num_layers)
        if quantization != "none":  # bitsandbytes weights cannot move between devices
            patcher.offload_device = patcher.load_device
        return io.NodeOutput(M2ChatVLM(loaded, patcher, prefix_cache))


class M2ChatAdapterLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="M2ChatAdapterLoader",
            display_name="M²Chat Adapter Loader",
            category="M²Chat",
            description="Loads an M³Adapter file (.safetensors) from models/m2chat.",
            inputs=[io.Combo.Input("adapter_name", options=list_adapter_files(),
                                   tooltip="An M³Adapter .safetensors file under models/m2chat "
                                           "(or an m2chat path from extra_model_paths.yaml).")],
            outputs=[AdapterType.Output(display_name="adapter")],
        )

    @classmethod
    def execute(cls, adapter_name) -> io.NodeOutput:
        adapter_file = load_adapter_file(resolve_adapter_file(adapter_name))
        module = adapter_file.build_adapter(operations=comfy.ops.disable_weight_init)
        patcher = make_patcher(module, hidden_size=adapter_file.config.width, num_layers=0)
        return io.NodeOutput(M2ChatAdapter(adapter_file, module, patcher))
