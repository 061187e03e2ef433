"""Lets PyPI's CUDA build of torchvision import beside a CPU build of torch.

Why: the only torchvision 0.28.0 wheel on PyPI is built for CUDA. Beside CPU torch its
compiled ops library (`torchvision/_C.so`) cannot load, and torchvision's own Python
code then registers fake kernels for `torchvision::nms` and `torchvision::qnms`, which
fails with "operator torchvision::nms does not exist". ComfyUI cannot start without
torchvision (`comfy/sd.py` imports it).

What: the set-up script copies this file into the virtual environment's site-packages
with a one-line `.pth` that imports it, only when torch is a CPU build. At interpreter
start it adds a finder that waits for `import torchvision`; then, and only if `_C.so`
does not load, it declares the two operator schemas with `torch.library` so that
torchvision's Python code imports. Nothing else changes: calling those ops would still
raise, and no code in this project or in ComfyUI's image path calls them.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from pathlib import Path

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)


def _declare_missing_ops(package_dir: Path) -> None:
    import torch

    try:
        torch.ops.load_library(str(next(package_dir.glob("_C*.so"))))
    except (OSError, StopIteration):
        library = torch.library.Library("torchvision", "DEF")  # noqa: TOR901 (kept alive below)
        for schema in _SCHEMAS:
            library.define(schema)
        _DeclareOpsOnImport.library = library


class _DeclareOpsOnImport(importlib.abc.MetaPathFinder):
    library = None

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.origin:
            _declare_missing_ops(Path(spec.origin).parent)
        return spec


def install() -> None:
    if not any(isinstance(finder, _DeclareOpsOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _DeclareOpsOnImport())
