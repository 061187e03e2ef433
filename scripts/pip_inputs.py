"""Writes the two pip inputs of one test environment (scripts/setup_env.sh):

    OUT/comfyui-requirements.txt  ComfyUI's requirements.txt without torchaudio, whose
                                  registry builds do not load beside CPU torch 2.13
    OUT/constraints.txt           our constraints (if given) less every package that
                                  ComfyUI pins with `==` and that package's family
                                  (comfyui-workflow-templates-core, ...): ComfyUI's own
                                  pins win, so another ComfyUI (COMFYUI_PATH) resolves

usage: pip_inputs.py COMFYUI_REQUIREMENTS OUT [OUR_CONSTRAINTS]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

LEFT_OUT = {"torchaudio"}


def package_name(line: str) -> str | None:
    """The normalised project name a requirement line names (PEP 503), or None."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line.split("#", 1)[0])
    return re.sub(r"[-_.]+", "-", match.group(1)).lower() if match else None


def _in_family(name: str | None, families: set[str | None]) -> bool:
    return name is not None and any(name == family or name.startswith(f"{family}-") for family in families if family)


def main(comfyui_requirements: Path, out: Path, our_constraints: Path | None = None) -> None:
    comfy_lines = comfyui_requirements.read_text().splitlines()
    kept = [line for line in comfy_lines if package_name(line) not in LEFT_OUT]
    pinned_by_comfyui = {package_name(line) for line in comfy_lines if "==" in line.split("#", 1)[0]}
    ours = our_constraints.read_text().splitlines() if our_constraints else []
    constraints = [line for line in ours if not _in_family(package_name(line), pinned_by_comfyui)]
    (out / "comfyui-requirements.txt").write_text("\n".join(kept) + "\n")
    (out / "constraints.txt").write_text("\n".join(constraints) + "\n")


if __name__ == "__main__":
    if not 3 <= len(sys.argv) <= 4:
        sys.exit(__doc__)
    main(*map(Path, sys.argv[1:]))
