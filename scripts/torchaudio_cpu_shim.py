"""Lets ComfyUI 0.33 start where no torchaudio loads beside the installed torch (test-only).

Why: ComfyUI 0.33 imports `torchaudio` at start-up (`comfy/sd.py` and its audio models),
and the newest torchaudio on the registry (2.11.1) does not load with torch 2.13.0 CPU,
so ComfyUI cannot start there. The pack and its tests use no audio.

What: the set-up script copies this file into the virtual environment's site-packages
with a one-line `.pth` that imports it, only when `import torchaudio` fails in that venv
(never where a real torchaudio loads). At interpreter start it adds a finder that
answers `import torchaudio` (and its submodules) with empty modules; using anything from
them raises an AttributeError that says audio is unavailable in this environment.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types

_MESSAGE = ("torchaudio.{name} is unavailable: this test environment has no torchaudio that loads with "
            "its torch build, only the set-up script's import stand-in (scripts/torchaudio_cpu_shim.py).")


class _StandInLoader(importlib.abc.Loader):
    def create_module(self, spec):
        module = types.ModuleType(spec.name)

        def __getattr__(name: str):
            raise AttributeError(_MESSAGE.format(name=f"{spec.name.partition('.')[2]}.{name}".lstrip(".")))

        module.__getattr__ = __getattr__
        return module

    def exec_module(self, module):
        pass


class _StandInFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchaudio" and not fullname.startswith("torchaudio."):
            return None
        return importlib.machinery.ModuleSpec(fullname, _StandInLoader(), is_package=True)


def install() -> None:
    if not any(isinstance(finder, _StandInFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _StandInFinder())
