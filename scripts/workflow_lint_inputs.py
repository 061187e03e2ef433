"""What comfy-lint needs to check the shipped workflows offline: the API form of each file in
workflows/ and the /object_info schema of a real ComfyUI with this pack.

The ComfyUI it starts (scripts/comfyui_env.py; COMFYUI_PATH picks the tree) has this pack
as its only custom node and, in place of the models and the input image each workflow
names, empty files of those names, as a user who downloaded them would have: /object_info
then lists them, and comfy-lint checks every other value. Nothing is loaded or run.

    .venv/bin/python scripts/workflow_lint_inputs.py OUT_DIR
    # writes OUT_DIR/object_info.json and OUT_DIR/api/<workflow>.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from comfyui_env import PACK_NAME, REPO, ComfyServer
from workflow_api import FILE_COMBO_FOLDERS, FRONTEND_ONLY_TYPES, ui_to_api, widget_slots

WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
VLM_LOADER = "M2ChatVLMLoader"  # its combo lists folders, each holding a config.json


def named_files(workflow: dict, object_info: dict) -> set[tuple[str, str, str]]:
    """(node type, folder, name) of every file a workflow's file combos name."""
    named = set()
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY_TYPES:
            continue
        slots = widget_slots(object_info[node["type"]])
        for (input_name, added_by), value in zip(slots, node.get("widgets_values", [])):
            folder = FILE_COMBO_FOLDERS.get((node["type"], input_name))
            if added_by is None and folder:
                named.add((node["type"], folder, value))
    return named


def place_named_files(base: Path, named: set[tuple[str, str, str]]) -> None:
    for node_type, folder, name in named:
        path = base / folder / name
        if node_type == VLM_LOADER:
            path = path / "config.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}" if node_type == VLM_LOADER else "")


def base_directory(base: Path) -> Path:
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    (base / "user").mkdir(exist_ok=True)
    (base / "custom_nodes" / PACK_NAME).symlink_to(REPO, target_is_directory=True)
    return base


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(sys.argv[1]).resolve()
    base = base_directory(out / "comfyui")
    workflows = {path.stem: json.loads(path.read_text(encoding="utf-8")) for path in WORKFLOWS}
    server = ComfyServer(base)
    try:
        schema = server.get("/object_info")  # a first look, to read which files each workflow names
        place_named_files(base, set().union(*(named_files(w, schema) for w in workflows.values())))
        schema = server.get("/object_info")  # ComfyUI lists its folders afresh on each request
    finally:
        server.stop()
    (out / "object_info.json").write_text(json.dumps(schema))
    (out / "api").mkdir(exist_ok=True)
    for name, workflow in workflows.items():
        (out / "api" / f"{name}.json").write_text(json.dumps(ui_to_api(workflow, schema), indent=1))
        print(out / "api" / f"{name}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
