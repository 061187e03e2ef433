"""The shared workflows (workflows/*.json) against ComfyUI's HTTP server: they validate
against its /object_info, broken copies do not, and each one, converted to API format
with the tiny models swapped in, runs to images."""

import json

import pytest
from PIL import Image

from comfyui_env import REPO
from tiny_graphs import TINY_CHECKPOINT_PARTS, set_inputs, small_run_inputs, swap_to_tiny_models, write_tiny_input_image
from workflow_api import combo_options, input_specs, ui_to_api, validate_workflow

WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))


@pytest.fixture(scope="module")
def object_info(comfy_server):
    return comfy_server.get("/object_info")


def load(name: str) -> dict:
    return json.loads((REPO / "workflows" / f"{name}.json").read_text())


def node_of(workflow: dict, node_type: str) -> dict:
    return next(node for node in workflow["nodes"] if node["type"] == node_type)


def test_the_four_workflows_are_shared():
    assert [path.stem for path in WORKFLOWS] == ["image_editing", "multimodal_dialogue", "storytelling",
                                                 "text_to_image"]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda path: path.stem)
def test_workflow_validates_against_the_server(path, object_info):
    workflow = json.loads(path.read_text())
    assert validate_workflow(workflow, object_info) == []
    assert node_of(workflow, "CheckpointLoaderSimple")["widgets_values"] == ["sd_xl_base_1.0.safetensors"]
    assert any(node["type"] == "Note" and "models/checkpoints/" in node["widgets_values"][0]
               for node in workflow["nodes"])


def test_node_type_the_server_lacks_fails_validation(object_info):
    workflow = load("text_to_image")
    node_of(workflow, "M2ChatEncode")["type"] = "M2ChatEncodeV2"
    assert any("unknown node type 'M2ChatEncodeV2'" in problem for problem in validate_workflow(workflow, object_info))


@pytest.mark.parametrize("node_type, index, value, expected", [
    ("M2ChatEncode", 1, "image_to_video", "task: 'image_to_video' is not one of"),  # a task name not in the list
    ("KSampler", 2, 0, "steps: 0 is outside [1, 10000]"),
    ("M2ChatEncode", 5, 7, "width: 7 is outside [64, 16384]"),
    ("M2ChatVLMLoader", 1, "float64", "dtype: 'float64' is not one of"),
    ("KSampler", 1, "sometimes", "control_after_generate 'sometimes'"),
    ("M2ChatEncode", 0, 42, "prompt: 42 is not a STRING"),
])
def test_stale_widget_value_fails_validation(object_info, node_type, index, value, expected):
    workflow = load("image_editing")
    node_of(workflow, node_type)["widgets_values"][index] = value
    problems = validate_workflow(workflow, object_info)
    assert len(problems) == 1 and expected in problems[0], problems


def test_widget_count_input_names_and_links_are_checked(object_info):
    workflow = load("storytelling")
    del node_of(workflow, "KSampler")["widgets_values"][1]  # the control_after_generate value
    node_of(workflow, "M2ChatStory")["inputs"][0]["name"] = "vision_model"
    workflow["links"].append([99, 1234, 0, node_of(workflow, "VAEDecode")["id"], 0, "LATENT"])
    problems = "\n".join(validate_workflow(workflow, object_info))
    assert "6 widget values, the node has 7" in problems
    assert "no input named 'vision_model'" in problems and "required input 'vlm' is not connected" in problems
    assert "link 99 joins a node that is not in the workflow" in problems


def test_model_file_names_may_differ_from_the_server(object_info):
    workflow = load("text_to_image")
    for node_type, name, value in [("CheckpointLoaderSimple", "ckpt_name", "sd_xl_base_1.0.safetensors"),
                                   ("M2ChatVLMLoader", "vlm_name", "llava-1.5-7b-hf")]:
        assert value not in combo_options(input_specs(object_info[node_type])[name])  # not on this server
    node_of(workflow, "M2ChatAdapterLoader")["widgets_values"] = ["my-own-adapter.safetensors"]
    assert validate_workflow(workflow, object_info) == []


def test_ui_to_api_names_widget_values_and_links(object_info):
    workflow = load("text_to_image")
    prompt = ui_to_api(workflow, object_info)
    ids = {node["type"]: str(node["id"]) for node in workflow["nodes"]}
    assert "Note" not in {node["class_type"] for node in prompt.values()}
    assert prompt[ids["KSampler"]]["inputs"] == {
        "seed": 0, "steps": 25, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
        "model": [ids["CheckpointLoaderSimple"], 0], "positive": [ids["M2ChatEncode"], 0],
        "negative": [ids["M2ChatEncode"], 1], "latent_image": [ids["EmptyLatentImage"], 0]}
    encode = prompt[ids["M2ChatEncode"]]["inputs"]
    assert (encode["task"], encode["seed"], encode["max_new_tokens"], encode["width"]) == ("text_to_image", 0, 96, 1024)
    assert prompt[ids["VAEDecode"]]["inputs"]["vae"] == [ids["CheckpointLoaderSimple"], 2]
    dialogue = ui_to_api(load("multimodal_dialogue"), object_info)
    turns = [node_id for node_id, node in dialogue.items() if node["class_type"] == "M2ChatEncode"]
    assert len(turns) == 3 and "session" not in dialogue[turns[0]]["inputs"]
    for previous, turn in zip(turns, turns[1:]):  # the session (output 4) and the drawn picture go on
        assert dialogue[turn]["inputs"]["session"] == [previous, 4]
        assert dialogue[dialogue[turn]["inputs"]["image"][0]]["class_type"] == "VAEDecode"


def test_swap_to_tiny_models_rewires_the_checkpoint(object_info):
    prompt = swap_to_tiny_models(ui_to_api(load("storytelling"), object_info))
    class_types = [node["class_type"] for node in prompt.values()]
    assert "CheckpointLoaderSimple" not in class_types
    assert {"UNETLoader", "VAELoader"} <= set(class_types) and "TinySDXLCLIPLoader" not in class_types  # CLIP unused
    sampler = next(node for node in prompt.values() if node["class_type"] == "KSampler")
    assert prompt[sampler["inputs"]["model"][0]]["inputs"] == TINY_CHECKPOINT_PARTS[0][1]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda path: path.stem)
def test_workflow_runs_on_the_tiny_models(path, comfy_server, object_info):
    write_tiny_input_image(comfy_server.base_directory / "input")
    workflow = json.loads(path.read_text())
    prompt = set_inputs(swap_to_tiny_models(ui_to_api(workflow, object_info)), small_run_inputs())
    entry = comfy_server.wait(comfy_server.queue(prompt))
    assert entry["status"]["status_str"] == "success", entry["status"]["messages"]
    for node in workflow["nodes"]:
        if node["type"] == "SaveImage":
            images = entry["outputs"][str(node["id"])]["images"]
            assert images, node
            with Image.open(comfy_server.output_file(images[0])) as image:
                assert min(image.size) >= 64
        if node["type"] in ("M2ChatEncode", "M2ChatStory"):
            assert any(entry["outputs"][str(node["id"])]["text"])  # the VLM's text
