"""The tiny-model builder script: same seed, byte-identical files; another seed, other weights."""

import subprocess
import sys
from pathlib import Path

from comfyui_env import HUNG_AFTER_S, REPO


def _build(out: Path, seed: int) -> dict[str, bytes]:
    subprocess.run([sys.executable, str(REPO / "scripts" / "build_tiny_models.py"), str(out),
                    "--seed", str(seed)], check=True, capture_output=True, timeout=HUNG_AFTER_S)
    return {str(path.relative_to(out)): path.read_bytes() for path in sorted(out.rglob("*"))
            if path.is_file()}


def test_same_seed_gives_byte_identical_files_and_another_seed_other_weights(tmp_path):
    first, again, other = (_build(tmp_path / name, seed) for name, seed in
                           (("a", 0), ("b", 0), ("c", 1)))
    assert {"diffusion_models/m2chat-tiny-sdxl.safetensors",
            "LLM/m2chat-tiny-llava/model.safetensors", "LLM/m2chat-tiny-llava/config.json",
            "m2chat/m2chat-tiny-adapter.safetensors"} <= set(first)
    assert first == again
    assert first.keys() == other.keys()
    changed = {name for name in first if first[name] != other[name]}
    assert changed == {name for name in first if name.endswith(".safetensors")}
