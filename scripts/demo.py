"""The main job: `make demo`, on the shapes world's trained models.

Starts ComfyUI headless with this pack and runs two of the shared workflows, the files
users drag into ComfyUI, converted to API format and pointed at the world's models
(scripts/world_graphs.py): workflows/storytelling.json with a world premise, and
workflows/text_to_image.json with a world request. Copies the panels, the storyboard page
and the picture into demo-output/, writes the story and the text-to-image answer and
caption to demo-output/story.txt and text_to_image.txt, prints their paths, stops the server.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from comfyui_env import REPO, ComfyServer, prepare_base_directory
from workflow_api import ui_to_api
from world_graphs import world_workflow

OUTPUT = REPO / "demo-output"
RUNS = {  # workflow -> (the world text it runs with, the text file its words go to)
    "storytelling": ("a story about a yellow star", "story.txt"),
    "text_to_image": ("draw a large blue circle at the top right on a white background", "text_to_image.txt"),
}


def _texts(prompt: dict, entry: dict) -> str:
    """What the workflow's PreviewAny shows: the story, or the caption."""
    lines = [line for node_id, node in prompt.items() if node["class_type"] == "PreviewAny"
             for line in entry["outputs"].get(node_id, {}).get("text", [])]
    return "\n".join(lines) + "\n"


def main() -> int:
    shutil.rmtree(OUTPUT, ignore_errors=True)  # each run starts clean
    base = prepare_base_directory(OUTPUT / "comfyui")
    print(f"Starting ComfyUI (base directory {base}) ...", flush=True)
    server = ComfyServer(base)
    written = []
    try:
        print(f"ComfyUI is up at {server.url} (it stops when the demo ends).", flush=True)
        for name, (text, text_file) in RUNS.items():
            workflow = REPO / "workflows" / f"{name}.json"
            prompt = world_workflow(ui_to_api(json.loads(workflow.read_text()), server.get("/object_info")), text)
            print(f"Running {workflow.relative_to(REPO)} on the shapes world: {text!r} ...", flush=True)
            entry = server.wait(server.queue(prompt))
            if entry["status"]["status_str"] != "success":
                print(f"The demo workflow {name} failed: {entry['status']}\nServer log: {server.log_path}")
                return 1
            written += [Path(shutil.copy2(server.output_file(image), OUTPUT))
                        for node_output in entry["outputs"].values() for image in node_output.get("images", [])]
            (OUTPUT / text_file).write_text(_texts(prompt, entry), encoding="utf-8")
            written.append(OUTPUT / text_file)
    finally:
        server.stop()
    print("\nWritten:")
    for path in sorted(written):
        print(f"  {path}")
    print(f"\nServer log: {server.log_path}\n"
          "These come from the shapes world's small models (train/world/weights), trained on a\n"
          "CPU and still short of their targets: README.md, 'Shapes world', says what they follow.\n"
          "For your own pictures, install the pack into your ComfyUI and load workflows/ with real\n"
          "models (README.md, 'Where the models go').")
    return 0


if __name__ == "__main__":
    sys.exit(main())
