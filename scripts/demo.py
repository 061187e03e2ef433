"""The main job on the embedded tiny models: `make demo`.

Starts ComfyUI headless with this pack and runs workflows/storytelling.json, the file
users drag into ComfyUI, converted to API format with only its model names swapped for
the tiny models. Copies the panels and the storyboard page into demo-output/, writes the
story to demo-output/story.txt, prints their paths, stops the server. Tiny random models
draw noise: the point is that every piece runs for real.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from comfyui_env import REPO, ComfyServer, prepare_base_directory
from tiny_graphs import swap_to_tiny_models
from workflow_api import ui_to_api

OUTPUT = REPO / "demo-output"
WORKFLOW = REPO / "workflows" / "storytelling.json"


def main() -> int:
    shutil.rmtree(OUTPUT, ignore_errors=True)  # each run starts clean
    base = prepare_base_directory(OUTPUT / "comfyui")
    print(f"Starting ComfyUI (base directory {base}) ...", flush=True)
    server = ComfyServer(base)
    try:
        print(f"ComfyUI is up at {server.url} (it stops when the demo ends).", flush=True)
        prompt = swap_to_tiny_models(ui_to_api(json.loads(WORKFLOW.read_text()), server.get("/object_info")))
        print(f"Running {WORKFLOW.relative_to(REPO)} at its own settings (four 1024x1024 panels, "
              "25 steps): a few minutes on a CPU ...", flush=True)
        entry = server.wait(server.queue(prompt))
        if entry["status"]["status_str"] != "success":
            print(f"The demo workflow failed: {entry['status']}\nServer log: {server.log_path}")
            return 1
        written = [Path(shutil.copy2(server.output_file(image), OUTPUT))
                   for node_output in entry["outputs"].values() for image in node_output.get("images", [])]
        story_node = next(node_id for node_id, node in prompt.items() if node["class_type"] == "M2ChatStory")
        story = OUTPUT / "story.txt"
        story.write_text(entry["outputs"][story_node]["text"][0] + "\n", encoding="utf-8")
        written.append(story)
    finally:
        server.stop()
    print("\nWritten:")
    for path in sorted(written):
        print(f"  {path}")
    print(f"\nServer log: {server.log_path}\n"
          "These come from tiny models with random weights, so the pictures are noise and the\n"
          "story is gibberish. For real ones, install the pack into your ComfyUI and load the\n"
          "workflows in workflows/ with real models (README.md, 'Where the models go').")
    return 0


if __name__ == "__main__":
    sys.exit(main())
