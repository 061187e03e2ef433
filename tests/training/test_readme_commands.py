"""The README's tiny training and evaluation commands run as written.

Blocks marked `<!-- tested-commands -->` are run line by line (backslash continuations
joined) in a scratch folder that links the repository's code, so their `.artifacts/`
outputs land there."""

import re
import subprocess
import sys
from pathlib import Path

from comfyui_env import HUNG_AFTER_S

REPO = Path(__file__).resolve().parents[2]
MARKED_BLOCK = re.compile(r"<!-- tested-commands -->\n```bash\n(.*?)```", re.DOTALL)


def _commands() -> list[str]:
    blocks = MARKED_BLOCK.findall((REPO / "README.md").read_text())
    return [line for block in blocks for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_readme_tiny_training_and_evaluation_commands_run(tmp_path):
    commands = _commands()
    assert any("train.stage1" in c for c in commands) and any("train.evaluate --config" in c for c in commands)
    (tmp_path / ".venv").symlink_to(sys.prefix)  # the README's `.venv` is this test environment's venv
    for name in ("train", "m2chat_core"):
        (tmp_path / name).symlink_to(REPO / name)
    for command in commands:
        result = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True,
                                timeout=HUNG_AFTER_S,
                                env={"PATH": "/usr/bin:/bin", "TQDM_DISABLE": "1", "PYTHONPATH": str(tmp_path)})
        assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
    assert (tmp_path / ".artifacts/models/m2chat/tiny.safetensors").is_file()
    assert list((tmp_path / ".artifacts/tiny-eval").rglob("results.md"))
