"""The pack's ComfyUI socket types and the objects that travel through them."""

from __future__ import annotations

from dataclasses import dataclass, field

from comfy_api.latest import io

from ..m2chat_core.adapter import M3Adapter
from ..m2chat_core.adapter_file import AdapterFile, VLMDeltas
from ..m2chat_core.prefix_cache import PrefixCache
from ..m2chat_core.vlm import LoadedVLM

VLMType = io.Custom("M2CHAT_VLM")
AdapterType = io.Custom("M2CHAT_ADAPTER")
SessionType = io.Custom("M2CHAT_SESSION")


@dataclass
class TokenCounter:
    """Tokens the VLM has processed since it was loaded (shows what ComfyUI's cache saved)."""

    total: int = 0


@dataclass
class M2ChatVLM:
    loaded: LoadedVLM
    patcher: object  # managed.VLMPatcher (a ModelPatcher) around the VLM
    prefix_cache: PrefixCache  # KV and vision features of earlier turns, shared by the nodes using this VLM
    counter: TokenCounter = field(default_factory=TokenCounter)
    # The patcher clone carrying an adapter's stage-2 deltas, kept while that adapter is in use
    # so that consecutive turns load the same clone (a new clone would unload the VLM).
    delta_patcher: tuple[VLMDeltas, object] | None = None


@dataclass
class M2ChatAdapter:
    file: AdapterFile
    module: M3Adapter
    patcher: object  # comfy.model_patcher.ModelPatcher around the adapter
