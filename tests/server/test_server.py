"""ComfyUI's HTTP server: the pack loads, appears in /object_info, and a native
tiny-SDXL graph queued through /prompt writes its image."""

from PIL import Image

from tiny_graphs import tiny_conditioning_graph
from comfyui_env import PACK_NAME


def test_pack_appears_in_object_info(comfy_server):
    info = comfy_server.get("/object_info")
    assert "M2ChatStoryboard" in info
    assert info["M2ChatStoryboard"]["python_module"].endswith(PACK_NAME)


def test_server_log_shows_no_import_failure_for_the_pack(comfy_server):
    # ComfyUI's import-time table has one line per custom node folder.
    pack_lines = [line for line in comfy_server.log().splitlines()
                  if line.rstrip().endswith(f"custom_nodes/{PACK_NAME}")]
    assert pack_lines, comfy_server.log()
    assert not any("IMPORT FAILED" in line for line in pack_lines), pack_lines


def test_queued_native_graph_writes_an_image(comfy_server):
    prompt_id = comfy_server.queue(tiny_conditioning_graph(width=64, height=96,
                                                           filename_prefix="server"))
    entry = comfy_server.wait(prompt_id)
    assert entry["status"]["status_str"] == "success", entry["status"]
    image_info, = entry["outputs"]["save"]["images"]
    with Image.open(comfy_server.output_file(image_info)) as image:
        assert image.size == (64, 96)


def _messages(entry) -> str:
    return " ".join(str(data) for _event, data in entry["status"]["messages"])


def test_encode_and_story_graphs_run_through_http(comfy_server):
    from tiny_graphs import encode_graph, story_graph

    entry = comfy_server.wait(comfy_server.queue(encode_graph(filename_prefix="server-encode")))
    assert entry["status"]["status_str"] == "success", _messages(entry)
    answer, caption = entry["outputs"]["encode"]["text"]
    assert caption
    entry = comfy_server.wait(comfy_server.queue(story_graph(panels=2, filename_prefix="server-story")))
    assert entry["status"]["status_str"] == "success", _messages(entry)
    assert len(entry["outputs"]["save"]["images"]) == 2


def test_bad_inputs_fail_clearly_and_the_server_keeps_answering(comfy_server):
    from tiny_graphs import encode_graph

    adapters = comfy_server.base_directory / "models" / "m2chat"
    (adapters / "renamed-checkpoint.safetensors").write_bytes(b"\x80\x04\x95" + b"\x00" * 64)
    graph = encode_graph(filename_prefix="server-bad")
    graph["adapter"]["inputs"]["adapter_name"] = "renamed-checkpoint.safetensors"
    entry = comfy_server.wait(comfy_server.queue(graph))
    assert entry["status"]["status_str"] == "error"
    assert "never unpickles" in _messages(entry)

    entry = comfy_server.wait(comfy_server.queue(encode_graph("  ", filename_prefix="server-empty")))
    assert "prompt is empty" in _messages(entry)

    status, body = comfy_server.post("/prompt", {"prompt": encode_graph(width=7)})
    assert status == 400 and "width" in str(body)  # refused by validation, nothing queued
    assert "M2ChatEncode" in comfy_server.get("/object_info/M2ChatEncode")
