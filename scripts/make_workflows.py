"""Writes workflows/*.json, the UI-format workflows users drag into ComfyUI.

Each workflow below is a compact description: rows of columns of nodes, each node with
its widget values and links by input name. The JSON is built against the live
/object_info of a ComfyUI with this pack, so widget order, control_after_generate values
and input/output slots are the server's own. Regenerate after changing a node's inputs:

    .venv/bin/python scripts/make_workflows.py                 # starts a throw-away ComfyUI
    .venv/bin/python scripts/make_workflows.py --url http://127.0.0.1:8188
"""

from __future__ import annotations

import argparse
import json
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from comfyui_env import REPO, ComfyServer, prepare_base_directory
from workflow_api import (combo_options, input_specs, is_widget, spec_options, validate_workflow,
                          widget_slots)

SDXL_CHECKPOINT = "sd_xl_base_1.0.safetensors"
VLM_FOLDER = "llava-1.5-7b-hf"
ADAPTER_FILE = "m2chat-llava-1.5-7b.safetensors"
INPUT_IMAGE = "example.png"
SIZE = {"width": 1024, "height": 1024, "target_width": 1024, "target_height": 1024}
COLUMN_GAP, ROW_GAP = 60, 40


@dataclass
class Node:
    key: str
    type: str
    values: dict = field(default_factory=dict)  # widget values, and links as (node key, output name)
    title: str | None = None
    control: str = "fixed"  # control_after_generate of its seed


def note(key: str, text: str) -> Node:
    return Node(key, "Note", {"text": text})


def loaders() -> list[Node]:
    return [note("ckpt_note", f"SDXL checkpoint: {SDXL_CHECKPOINT} (or any SDXL fine-tune) goes in "
                              "ComfyUI/models/checkpoints/."),
            Node("ckpt", "CheckpointLoaderSimple", {"ckpt_name": SDXL_CHECKPOINT}),
            note("vlm_note", f"VLM: the Hugging Face folder {VLM_FOLDER} (llava-hf/llava-1.5-7b-hf) "
                             f"goes in ComfyUI/models/LLM/{VLM_FOLDER}/."),
            Node("vlm", "M2ChatVLMLoader", {"vlm_name": VLM_FOLDER}),
            note("adapter_note", f"M³Adapter: {ADAPTER_FILE}, trained for that VLM, goes in "
                                 "ComfyUI/models/m2chat/."),
            Node("adapter", "M2ChatAdapterLoader", {"adapter_name": ADAPTER_FILE})]


def encode(key: str, prompt: str, task: str, image=None, session=None, title=None) -> Node:
    links = {"image": image, "session": session}
    return Node(key, "M2ChatEncode", {"vlm": ("vlm", "vlm"), "adapter": ("adapter", "adapter"),
                                      "prompt": prompt, "task": task, **SIZE,
                                      **{name: link for name, link in links.items() if link}}, title)


def drawing(key: str, prefix: str, text: str = "answer") -> list[list[Node]]:
    """Columns KSampler (+ a preview of the VLM's text) -> VAEDecode -> SaveImage for the
    conditioning of node `key`; the authors' inference settings."""
    sampler = Node(f"{key}_sampler", "KSampler", {
        "model": ("ckpt", "MODEL"), "positive": (key, "positive"), "negative": (key, "negative"),
        "latent_image": ("latent", "LATENT"), "steps": 25, "cfg": 5.0, "sampler_name": "euler",
        "scheduler": "normal"}, control="randomize")
    answer = Node(f"{key}_text", "PreviewAny", {"source": (key, text)}, text.capitalize())
    decode = Node(f"{key}_decode", "VAEDecode", {"samples": (sampler.key, "LATENT"), "vae": ("ckpt", "VAE")})
    save = Node(f"{key}_save", "SaveImage", {"images": (decode.key, "IMAGE"), "filename_prefix": prefix})
    return [[sampler, answer], [decode], [save]]


def latent(batch_size: int = 1) -> Node:
    return Node("latent", "EmptyLatentImage", {"width": 1024, "height": 1024, "batch_size": batch_size})


def text_to_image() -> list:
    prompt = "A red fox reading a book under a cherry tree, watercolor."
    return [[loaders(), [encode("turn", prompt, "text_to_image"), latent()],
             *drawing("turn", "m2chat/text_to_image", text="caption")]]


def image_editing() -> list:
    image = Node("image", "LoadImage", {"image": INPUT_IMAGE})
    image_note = note("image_note", "Pick the picture to edit here (upload it with the node's button).")
    edit = encode("turn", "Make it winter: cover everything in fresh snow.", "image_editing",
                  image=("image", "IMAGE"))
    return [[[*loaders(), image_note, image], [edit, latent()], *drawing("turn", "m2chat/edit")]]


def multimodal_dialogue() -> list:
    image_note = note("image_note", "Turn 1 talks about this picture; each later turn continues the "
                                    "session and sees the picture the turn before drew.")
    first = [*loaders(), image_note, Node("image", "LoadImage", {"image": INPUT_IMAGE}), latent()]
    prompts = ["What is in this picture? Draw it as a watercolor painting.",
               "Now show the same scene at night, under a full moon.",
               "Add a small fox sitting in the foreground."]
    rows, image, session = [], ("image", "IMAGE"), None
    for index, prompt in enumerate(prompts, start=1):
        key = f"turn{index}"
        turn = encode(key, prompt, "multimodal_dialogue", image, session, f"M²Chat turn {index}")
        rows.append([first if index == 1 else [], [turn], *drawing(key, f"m2chat/dialogue_turn{index}")])
        image, session = (f"{key}_decode", "IMAGE"), (key, "session")
    return rows


def storytelling() -> list:
    story = Node("story", "M2ChatStory", {"vlm": ("vlm", "vlm"), "adapter": ("adapter", "adapter"),
                                          "premise": "A little robot who wants to see the sea.",
                                          "panels": 4, **SIZE})
    draw = drawing("story", "m2chat/story_panel", text="story")
    page = Node("page", "M2ChatStoryboard", {"panels": ("story_decode", "IMAGE"), "texts": ("story", "captions"),
                                             "title": "The robot and the sea"})
    save_page = Node("page_save", "SaveImage", {"images": ("page", "page"), "filename_prefix": "m2chat/storyboard"})
    panels_note = note("panels_note", "One KSampler draws all panels: keep the latent's batch size "
                                      "equal to the story's panels.")
    return [[loaders(), [story, latent(batch_size=4), panels_note], *draw[:2], [draw[2][0], page], [save_page]]]


WORKFLOWS = {"text_to_image": text_to_image, "storytelling": storytelling,
             "multimodal_dialogue": multimodal_dialogue, "image_editing": image_editing}


def widget_values(node: Node, node_info: dict) -> list:
    specs, values = input_specs(node_info), []
    for name, added_by in widget_slots(node_info):
        spec = specs[name]
        default = spec_options(spec).get("default", (combo_options(spec) or [None])[0])
        if added_by is None:  # a linked widget keeps its default
            value = node.values.get(name, default)
            values.append(default if isinstance(value, tuple) else value)
        else:  # the seed's control mode, or the upload button's value
            values.append({"control_after_generate": node.control, "image_upload": "image"}[added_by])
    return values


def estimated_size(node_info: dict | None) -> list[int]:
    """Roughly what the frontend draws (it grows a node that is too small when loading)."""
    if node_info is None:  # a Note
        return [340, 90]
    specs = input_specs(node_info).values()
    multiline = sum(bool(spec_options(spec).get("multiline")) for spec in specs)
    sockets = max(sum(not is_widget(spec) for spec in specs), len(node_info["output"]))
    preview = 320 if node_info.get("output_node") else 0
    return [420 if multiline else 320,
            40 + 22 * sockets + 26 * len(widget_slots(node_info)) + 90 * multiline + preview]


def layout(rows: list, sizes: dict) -> dict:
    """Canvas positions: columns side by side, nodes stacked in each; a row starts under
    the previous rows' nodes in the columns it uses (a tall first column spans rows)."""
    columns = max(len(row) for row in rows)
    widths = [max((sizes[node.key][0] for row in rows if i < len(row) for node in row[i]), default=0)
              for i in range(columns)]
    positions, bottoms = {}, [0] * columns
    for row in rows:
        top = max(bottoms[i] for i, column in enumerate(row) if column)
        for index, column in enumerate(row):
            y = top
            for node in column:
                positions[node.key] = [sum(widths[:index]) + COLUMN_GAP * index, y]
                y += sizes[node.key][1] + ROW_GAP
            if column:
                bottoms[index] = y
    return positions


def build(rows: list, object_info: dict) -> dict:
    nodes = {node.key: node for row in rows for column in row for node in column}
    ids = {key: index for index, key in enumerate(nodes, start=1)}
    infos = {key: object_info.get(node.type) for key, node in nodes.items()}
    sizes = {key: estimated_size(info) for key, info in infos.items()}
    positions = layout(rows, sizes)
    links, ui_nodes = [], {}
    for key, node in nodes.items():
        ui = {"id": ids[key], "type": node.type, "pos": positions[key], "size": sizes[key], "flags": {},
              "order": ids[key] - 1, "mode": 0, "inputs": [], "outputs": [], "properties": {}}
        ui_nodes[key] = ui
        if node.type == "Note":
            ui.update(widgets_values=[node.values["text"]], color="#432", bgcolor="#653")
            continue
        specs = input_specs(infos[key])
        if set(node.values) - set(specs):
            raise ValueError(f"{node.type} has no input {sorted(set(node.values) - set(specs))}")
        # sockets first, then widgets turned into sockets, as the frontend lists them
        for name, spec in sorted(specs.items(), key=lambda item: is_widget(item[1])):
            link = node.values.get(name)
            if isinstance(link, tuple):
                origin, output = link
                slot = infos[origin]["output_name"].index(output)
                links.append([len(links) + 1, ids[origin], slot, ids[key], len(ui["inputs"]),
                              infos[origin]["output"][slot]])
                widget = {"widget": {"name": name}} if is_widget(spec) else {}
                ui["inputs"].append({"name": name, "type": spec[0], **widget, "link": links[-1][0]})
            elif not is_widget(spec):
                ui["inputs"].append({"name": name, "type": spec[0], "link": None})
        ui["properties"] = {"Node name for S&R": node.type}
        ui["widgets_values"] = widget_values(node, infos[key])
        if node.title:
            ui["title"] = node.title
    for key, ui in ui_nodes.items():
        if infos[key] is not None:
            ui["outputs"] = [{"name": name, "type": kind, "slot_index": slot,
                              "links": [link[0] for link in links if link[1] == ui["id"] and link[2] == slot]}
                             for slot, (name, kind) in enumerate(zip(infos[key]["output_name"], infos[key]["output"]))]
    return {"last_node_id": len(nodes), "last_link_id": len(links), "nodes": list(ui_nodes.values()),
            "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


def write_workflows(object_info: dict, folder: Path = REPO / "workflows") -> list[Path]:
    written = []
    for name, describe in WORKFLOWS.items():
        workflow = build(describe(), object_info)
        problems = validate_workflow(workflow, object_info)
        if problems:
            raise SystemExit(f"{name} does not validate:\n" + "\n".join(problems))
        path = folder / f"{name}.json"
        path.write_text(json.dumps(workflow, indent=2, ensure_ascii=False) + "\n")
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running ComfyUI with this pack (default: start one)")
    url = parser.parse_args().url
    if url:
        with urllib.request.urlopen(url.rstrip("/") + "/object_info", timeout=60) as response:
            object_info = json.load(response)
    else:
        with tempfile.TemporaryDirectory() as base:
            server = ComfyServer(prepare_base_directory(Path(base)))
            try:
                object_info = server.get("/object_info")
            finally:
                server.stop()
    for path in write_workflows(object_info):
        print(path)


if __name__ == "__main__":
    main()
