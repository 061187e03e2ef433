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
