"""The pack on a ComfyUI older than the oldest supported: one clear log line, no nodes,
and nothing imported that needs the V3 API."""

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

IMPORT_THE_PACK = f"""
import importlib.util, logging, sys
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
spec = importlib.util.spec_from_file_location("m2chat", {str(REPO / "__init__.py")!r},
                                              submodule_search_locations=[{str(REPO)!r}])
pack = importlib.util.module_from_spec(spec)
sys.modules["m2chat"] = pack
spec.loader.exec_module(pack)
print("entrypoint", hasattr(pack, "comfy_entrypoint"), "web", hasattr(pack, "WEB_DIRECTORY"),
      "mappings", getattr(pack, "NODE_CLASS_MAPPINGS", None), "comfy_api", "comfy_api" in sys.modules)
"""


def _import_pack_beside(comfyui_root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", IMPORT_THE_PACK], cwd=comfyui_root, capture_output=True,
                          text=True, check=True, env={"PYTHONPATH": str(comfyui_root)})


@pytest.mark.parametrize("version_file", ['__version__ = "0.3.60"\n', None], ids=["0.3.60", "no-version-file"])
def test_an_older_comfyui_gets_one_line_and_no_nodes(tmp_path, version_file):
    if version_file is not None:
        (tmp_path / "comfyui_version.py").write_text(version_file)
    result = _import_pack_beside(tmp_path)

    assert result.stdout.strip() == "entrypoint False web False mappings {} comfy_api False"
    log_lines = result.stderr.strip().splitlines()
    assert len(log_lines) == 1, result.stderr
    found = "0.3.60" if version_file else "an unknown version"
    assert log_lines[0] == (
        f"ERROR m2chat.nodes: M²Chat needs ComfyUI 0.3.75 or newer and found {found}; its nodes are not "
        "registered. Update ComfyUI (git pull, or ComfyUI-Manager's 'Update ComfyUI') and restart.")


def test_the_registry_metadata_names_the_same_oldest_comfyui():
    # Loaded from its file: importing the pack's `nodes` here would shadow ComfyUI's in later tiers.
    spec = importlib.util.spec_from_file_location("m2chat_comfyui_support", REPO / "nodes" / "comfyui_support.py")
    support = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(support)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["tool"]["comfy"]["requires-comfyui"] == ">=" + ".".join(map(str, support.OLDEST_SUPPORTED))
