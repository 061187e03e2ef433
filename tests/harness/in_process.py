"""ComfyUI imported into the test process, graphs run through its own validator and
executor (the same code path as the server's queue, minus HTTP)."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import sys
import uuid
from pathlib import Path

import torch

from comfyui_env import COMFYUI_PATH


class GraphError(AssertionError):
    """A graph failed validation or execution; the message holds ComfyUI's report."""

    def __init__(self, message: str, details):
        super().__init__(f"{message}: {details}")
        self.details = details


class _HeadlessServer:
    """What PromptExecutor needs of PromptServer when no client is connected."""

    client_id = None
    last_node_id = None
    last_prompt_id = None

    def send_sync(self, event, data, sid=None):
        pass


def _cache_args(args) -> dict:
    """The executor's cache arguments as this ComfyUI's main.py builds them for the classic
    cache: one RAM threshold up to 0.3.x; since 0.33 `--cache-ram` is a list and the
    executor also reads an inactive threshold (both unused by the classic cache, so 0)."""
    if isinstance(args.cache_ram, list):
        return {"lru": args.cache_lru, "ram": 0, "ram_inactive": 0}
    return {"lru": args.cache_lru, "ram": args.cache_ram}


class ComfyInProcess:
    def __init__(self, base_directory: Path):
        # ComfyUI's root goes ahead of the repository: both have a top-level `nodes`.
        sys.path.insert(0, str(COMFYUI_PATH))
        import comfy.options
        comfy.options.enable_args_parsing(False)
        from comfy.cli_args import args
        args.cpu = True
        args.base_directory = str(base_directory)
        importlib.import_module("utils.extra_config")  # before `nodes`: comfy/utils.py shadows utils/
        import execution
        import folder_paths
        import nodes

        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
        self.nodes = nodes
        self.execution = execution
        self.output_dir = Path(folder_paths.get_output_directory())
        self.models_dir = Path(folder_paths.models_dir)  # the tiny models: models/LLM, models/m2chat, ...
        self.executor = execution.PromptExecutor(_HeadlessServer(), cache_type=False, cache_args=_cache_args(args))

    def node_class(self, class_type: str):
        return self.nodes.NODE_CLASS_MAPPINGS[class_type]

    def validate(self, prompt: dict) -> list:
        valid, error, outputs, node_errors = asyncio.run(
            self.execution.validate_prompt(str(uuid.uuid4()), prompt, None))
        if not valid:
            raise GraphError(f"invalid graph: {error}", node_errors)
        return outputs

    def run(self, prompt: dict) -> dict:
        """Validate and execute; returns the UI outputs by node id. Raises GraphError with
        ComfyUI's execution_error message when a node fails."""
        outputs = self.validate(prompt)
        prompt_id = str(uuid.uuid4())
        with torch.inference_mode():
            self.executor.execute(prompt, prompt_id, {}, outputs)
        if not self.executor.success:
            errors = [data for event, data in self.executor.status_messages
                      if event == "execution_error"]
            raise GraphError("graph failed", errors[0] if errors else self.executor.status_messages)
        return self.executor.history_result["outputs"]

    def node_outputs(self, node_id: str) -> list:
        """The outputs of the last run's node `node_id`, as ComfyUI's cache holds them
        (one list per output socket)."""
        entry = self.executor.caches.outputs.get(node_id)
        return (asyncio.run(entry) if inspect.isawaitable(entry) else entry).outputs  # a coroutine since 0.33

    def saved_images(self, ui_outputs: dict, node_id: str) -> list[Path]:
        return [self.output_dir / image["subfolder"] / image["filename"]
                for image in ui_outputs[node_id]["images"]]
