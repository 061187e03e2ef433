"""The main job: `make demo`, on the shapes world's trained models.

Starts ComfyUI headless with this pack and runs the four shared workflows, the files
users drag into ComfyUI, converted to API format and pointed at the world's models
(scripts/world_graphs.py), with the world texts and pictures of RUNS. Copies every picture
they save (and the pictures they were given, as <workflow>_source.png) into demo-output/
(or --out), writes each run's transcript (what was typed, what the M2Chat nodes answered) to its text file, prints
the paths, stops the server.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from comfyui_env import REPO, ComfyServer, prepare_base_directory
from workflow_api import ui_to_api
from world_graphs import chat_node_ids, input_picture, world_workflow

from train.world.scenes import Scene, WorldObject

OUTPUT = REPO / "demo-output"


@dataclass(frozen=True)
class DemoRun:
    """A shared workflow's world texts (one per M2Chat node), the text file its words go to,
    and the picture its LoadImage gets (a rendered world scene), if it has one."""

    texts: tuple[str, ...]
    text_file: str
    source: Scene | None = None


RUNS = {
    "storytelling": DemoRun(("a story about a yellow star",), "story.txt"),
    "text_to_image": DemoRun(("draw a large blue circle at the top right on a white background",),
                             "text_to_image.txt"),
    "image_editing": DemoRun(("make it yellow",), "image_editing.txt",
                             Scene("white", (WorldObject("blue", "square", "large", 1, 1),))),
    "multimodal_dialogue": DemoRun(("what is in this picture?", "now make it orange", "move it to the right"),
                                   "multimodal_dialogue.txt",
                                   Scene("grey", (WorldObject("red", "circle", "small", 0, 0),))),
}


def _transcript(prompt: dict, entry: dict) -> str:
    """Each M2Chat node's turn: what the user typed, then what the node shows (its answer
    and caption, or the story)."""
    lines = []
    for node_id in chat_node_ids(prompt):
        inputs = prompt[node_id]["inputs"]
        lines.append(f"> {inputs.get('prompt') or inputs.get('premise')}")
        lines += [text for text in entry["outputs"].get(node_id, {}).get("text", []) if text]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUTPUT, help="where the pictures and texts go (emptied first)")
    output = parser.parse_args(argv).out
    shutil.rmtree(output, ignore_errors=True)  # each run starts clean
    base = prepare_base_directory(output / "comfyui")
    print(f"Starting ComfyUI (base directory {base}) ...", flush=True)
    server = ComfyServer(base)
    written = []
    try:
        print(f"ComfyUI is up at {server.url} (it stops when the demo ends).", flush=True)
        for name, run in RUNS.items():
            workflow = REPO / "workflows" / f"{name}.json"
            source_image = None
            if run.source is not None:  # the picture the workflow's LoadImage reads, from ComfyUI's input folder
                source = input_picture(base, run.source, f"{name}_source.png")
                source_image = source.name
                written.append(Path(shutil.copy2(source, output)))
            api_prompt = ui_to_api(json.loads(workflow.read_text()), server.get("/object_info"))
            prompt = world_workflow(api_prompt, run.texts, source_image)
            print(f"Running {workflow.relative_to(REPO)} on the shapes world: {' / '.join(run.texts)!r} ...",
                  flush=True)
            entry = server.wait(server.queue(prompt))
            if entry["status"]["status_str"] != "success":
                print(f"The demo workflow {name} failed: {entry['status']}\nServer log: {server.log_path}")
                return 1
            written += [Path(shutil.copy2(server.output_file(image), output))
                        for node_output in entry["outputs"].values() for image in node_output.get("images", [])]
            (output / run.text_file).write_text(_transcript(prompt, entry), encoding="utf-8")
            written.append(output / run.text_file)
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
