"""UI-format workflows (what users save from and drag into ComfyUI) checked against a
server's /object_info, and converted to the API format that /prompt runs.

A node's `widgets_values` list one value per widget input, in the schema's input order,
plus the values of widgets the frontend adds: the control_after_generate mode after a
seed-like INT, and the upload button after an image-upload combo.
"""

from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_WIDGETS = ("control_after_generate", "image_upload")  # in the frontend's order
CONTROL_MODES = ("fixed", "increment", "decrement", "randomize")
FRONTEND_ONLY_TYPES = {"Note", "MarkdownNote"}  # drawn on the canvas, never sent to /prompt
# Combos that name a file of the user's installation: a workflow names the files users
# download, a server lists what it has, and callers swap these (e.g. for tiny models).
# Each with the folder, under ComfyUI's base directory, that the server lists it from.
FILE_COMBO_FOLDERS = {("CheckpointLoaderSimple", "ckpt_name"): "models/checkpoints",
                      ("UNETLoader", "unet_name"): "models/diffusion_models",
                      ("VAELoader", "vae_name"): "models/vae",
                      ("M2ChatVLMLoader", "vlm_name"): "models/LLM",  # folders holding config.json
                      ("M2ChatAdapterLoader", "adapter_name"): "models/m2chat",
                      ("LoadImage", "image"): "input"}
FILE_COMBOS = set(FILE_COMBO_FOLDERS)


class WorkflowError(ValueError):
    """A workflow that cannot be converted for this server."""


def input_specs(node_info: dict) -> dict[str, list]:
    """Every input of a node type, required then optional, in schema order."""
    inputs = node_info["input"]
    return {**inputs.get("required", {}), **inputs.get("optional", {})}


def spec_options(spec: list) -> dict:
    return spec[1] if len(spec) > 1 else {}


def combo_options(spec: list) -> list | None:
    """The allowed values of a combo input (old style: a list as the type), else None."""
    if isinstance(spec[0], list):
        return spec[0]
    return spec_options(spec).get("options", []) if spec[0] == "COMBO" else None


def is_widget(spec: list) -> bool:
    return (isinstance(spec[0], list) or spec[0] in WIDGET_TYPES) and not spec_options(spec).get("forceInput")


def widget_slots(node_info: dict) -> list[tuple[str, str | None]]:
    """One (input name, added_by) per entry of `widgets_values`: added_by is None for the
    input's own value, else the option (FRONTEND_WIDGETS) that made the frontend add one."""
    slots = []
    for name, spec in input_specs(node_info).items():
        if is_widget(spec):
            slots.append((name, None))
            slots += [(name, flag) for flag in FRONTEND_WIDGETS if spec_options(spec).get(flag)]
    return slots


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """The API-format prompt of a UI-format workflow: widget values by input name, links
    as [node_id, output_slot], Note nodes left out."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY_TYPES:
            continue
        if node["type"] not in object_info:
            raise WorkflowError(f"Node {node['id']}: this server has no node type {node['type']!r}; "
                                "install the pack that provides it.")
        if node.get("mode", 0) != 0:
            raise WorkflowError(f"Node {node['id']} is muted or bypassed; enable it or delete it.")
        slots = widget_slots(object_info[node["type"]])
        inputs = {name: value for (name, added_by), value in zip(slots, node.get("widgets_values", []))
                  if added_by is None}
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                _link_id, origin_id, origin_slot, *_ = links[slot["link"]]
                inputs[slot["name"]] = [str(origin_id), origin_slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def widget_value_problem(node_type: str, name: str, spec: list, value) -> str | None:
    """Why `value` is not allowed for this widget input, or None."""
    options = combo_options(spec)
    if options is not None:
        if (node_type, name) not in FILE_COMBOS and value not in options:
            return f"{value!r} is not one of {options}"
        return None
    kind, limits = spec[0], spec_options(spec)
    expected = {"INT": int, "FLOAT": (int, float), "STRING": str, "BOOLEAN": bool}[kind]
    if not isinstance(value, expected) or (kind != "BOOLEAN" and isinstance(value, bool)):
        return f"{value!r} is not a {kind}"
    if kind in ("INT", "FLOAT") and not limits.get("min", value) <= value <= limits.get("max", value):
        return f"{value} is outside [{limits.get('min')}, {limits.get('max')}]"
    return None


def node_problems(node: dict, node_info: dict, links: dict) -> list[str]:
    where = f"node {node['id']} ({node['type']})"
    specs = input_specs(node_info)
    problems = [f"{where}: no input named {slot['name']!r}"
                for slot in node.get("inputs", []) if slot["name"] not in specs]
    linked = {slot["name"] for slot in node.get("inputs", []) if slot.get("link") in links}
    problems += [f"{where}: required input {name!r} is not connected"
                 for name, spec in node_info["input"].get("required", {}).items()
                 if not is_widget(spec) and name not in linked]
    slots, values = widget_slots(node_info), node.get("widgets_values", [])
    if len(values) != len(slots):
        expected = [name if added_by is None else f"{name}:{added_by}" for name, added_by in slots]
        return problems + [f"{where}: {len(values)} widget values, the node has {len(slots)} {expected}"]
    for (name, added_by), value in zip(slots, values):
        problem = None
        if added_by == "control_after_generate" and value not in CONTROL_MODES:
            problem = f"control_after_generate {value!r} is not one of {list(CONTROL_MODES)}"
        elif added_by is None and name not in linked:
            problem = widget_value_problem(node["type"], name, specs[name], value)
        if problem:
            problems.append(f"{where}, {name}: {problem}")
    return problems


def validate_workflow(workflow: dict, object_info: dict) -> list[str]:
    """What would stop this workflow on a server with this /object_info (empty: nothing).
    File combos (FILE_COMBOS) are not checked against the server's files."""
    node_ids = {node["id"] for node in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}
    problems = [f"link {link[0]} joins a node that is not in the workflow"
                for link in workflow["links"] if not {link[1], link[3]} <= node_ids]
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY_TYPES:
            continue
        if node["type"] not in object_info:
            problems.append(f"node {node['id']}: unknown node type {node['type']!r} (is its pack installed?)")
        else:
            problems += node_problems(node, object_info[node["type"]], links)
    return problems
