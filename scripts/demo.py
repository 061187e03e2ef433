"""The main job on the embedded tiny models: `make demo`.

Starts ComfyUI headless with this pack, runs a story graph on the tiny models, copies
the panels and the storyboard page into demo-output/, prints their paths, stops the
server. Tiny random models draw noise: the point is that every piece runs for real.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from comfyui_env import REPO, ComfyServer, prepare_base_directory
from tiny_graphs import tiny_story_page_graph

OUTPUT = REPO / "demo-output"


def main() -> int:
    shutil.rmtree(OUTPUT, ignore_errors=True)  # each run starts clean
    base = prepare_base_directory(OUTPUT / "comfyui")
    print(f"Starting ComfyUI (base directory {base}) ...", flush=True)
    server = ComfyServer(base)
    try:
        print(f"ComfyUI is up at {server.url} (it stops when the demo ends).", flush=True)
        entry = server.wait(server.queue(tiny_story_page_graph(panels=4, width=128, height=128,
                                                               steps=4, filename_prefix="panel")))
        if entry["status"]["status_str"] != "success":
            print(f"The demo graph failed: {entry['status']}\nServer log: {server.log_path}")
            return 1
        written = []
        for node_output in entry["outputs"].values():
            for image in node_output.get("images", []):
                written.append(Path(shutil.copy2(server.output_file(image), OUTPUT)))
    finally:
        server.stop()
    print("\nWritten:")
    for path in sorted(written):
        print(f"  {path}")
    print(f"\nServer log: {server.log_path}\n"
          "These come from tiny models with random weights, so the pictures are noise.\n"
          "For real pictures, install the pack into your ComfyUI and load the workflows in\n"
          "workflows/ with real models (see README.md, 'Models').")
    return 0


if __name__ == "__main__":
    sys.exit(main())
