"""The models an evaluation run generates with, loaded offline, once, when first needed."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from diffusers import StableDiffusionXLPipeline

from m2chat_core.adapter import M3Adapter
from m2chat_core.adapter_file import AdapterFile, check_compatible, load_adapter_file
from m2chat_core.vlm import LoadedVLM, load_vlm

from ..sdxl import SDXLLoadError
from ..vlm_training import merge_vlm_deltas
from .config import SDXL_LAYOUT, ModelsConfig

logger = logging.getLogger(__name__)

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    """"auto": CUDA when available, else the CPU; anything else as torch names it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class EvaluationModels:
    """The VLM, the adapter and the SDXL pipeline of one run.

    The "VLM+SD" baseline reads the stock VLM; M²Chat reads it with the adapter file's
    stage-2 deltas merged in, which happens once, on the first `vlm(with_deltas=True)`;
    so the baseline must run first (generation orders the systems that way)."""

    def __init__(self, config: ModelsConfig) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = TORCH_DTYPES[config.dtype]
        self._vlm: LoadedVLM | None = None
        self._deltas_merged = False
        self._adapter: tuple[AdapterFile, M3Adapter] | None = None
        self._pipeline: StableDiffusionXLPipeline | None = None

    def vlm(self, *, with_deltas: bool) -> LoadedVLM:
        vlm = self._loaded_vlm()
        if not with_deltas:
            if self._deltas_merged:
                raise RuntimeError("The stock VLM was asked for after the adapter's deltas were merged into it.")
            return vlm
        deltas = self.adapter()[0].vlm_deltas
        if deltas is not None and not self._deltas_merged:
            merge_vlm_deltas(vlm.model, deltas)
            self._deltas_merged = True
            logger.info("Merged the adapter's stage-2 VLM deltas (%s, %d tensors)", deltas.kind, len(deltas.tensors))
        return vlm

    def _loaded_vlm(self) -> LoadedVLM:
        if self._vlm is None:
            self._vlm = load_vlm(
                self.config.vlm, dtype=self.config.dtype, device=self.device,
                trust_remote_code=self.config.trust_remote_code,
            )
        return self._vlm

    def adapter(self) -> tuple[AdapterFile, M3Adapter]:
        """The adapter file and its M³Adapter on the run's device, checked against the VLM."""
        if self._adapter is None:
            adapter_file = load_adapter_file(self.config.adapter)
            info = self._loaded_vlm().info
            check_compatible(adapter_file.config, info.hidden_size, info.vision_feature_size, info.name)
            module = adapter_file.build_adapter().to(self.device, self.dtype)
            logger.info("Loaded M³Adapter %s (%d parameters)", self.config.adapter, module.parameter_count())
            self._adapter = (adapter_file, module)
        return self._adapter

    def pipeline(self) -> StableDiffusionXLPipeline:
        if self._pipeline is None:
            folder = Path(self.config.sdxl)
            try:
                pipeline = StableDiffusionXLPipeline.from_pretrained(
                    folder, dtype=self.dtype, local_files_only=True, use_safetensors=True
                )
            except (OSError, ValueError) as error:
                raise SDXLLoadError(
                    f"Cannot load SDXL from {folder} offline ({error}); expected {SDXL_LAYOUT}."
                ) from error
            pipeline.set_progress_bar_config(disable=True)
            self._pipeline = pipeline.to(self.device)
            logger.info("Loaded SDXL from %s (%s) on %s", folder, self.config.dtype, self.device)
        return self._pipeline
