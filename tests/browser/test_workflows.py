"""Every shared workflow in the real ComfyUI frontend: it loads with every node type known
and no widget value the frontend would refuse, the frontend saves it back and converts it
to API format exactly as scripts/workflow_api.py does, and with the tiny models selected
on the page it runs from the Run button to images shown on the canvas."""

import json
import urllib.request

import pytest

from comfyui_env import HUNG_AFTER_S, REPO
from tiny_graphs import TINY_CHECKPOINT_PARTS, TINY_FILE_INPUTS, small_run_inputs, write_tiny_input_image
from workflow_api import FILE_COMBOS, input_specs, ui_to_api

WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
PAGE_SETTINGS = {"Comfy.TutorialCompleted": True,  # no template browser over the canvas
                 "LiteGraph.Canvas.MinFontSizeForLOD": 0,  # full detail in zoomed-out screenshots
                 "Comfy.Minimap.Visible": False}

LOAD = """async (workflow) => {
    window.missingNodeTypes = [];
    const report = app.showMissingNodesError.bind(app);
    app.showMissingNodesError = (types) => { window.missingNodeTypes.push(...types); report(types); };
    await app.loadGraphData(workflow);
}"""
WIDGET_PROBLEMS = """() => app.graph.nodes.flatMap((node) => (node.widgets ?? []).filter((widget) => {
    const { values, min, max } = widget.options ?? {};
    if (widget.type === 'combo') return !(typeof values === 'function' ? values() : values).includes(widget.value);
    return widget.type === 'number' && (widget.value < min || widget.value > max);
}).map((widget) => [node.type, widget.name]))"""
SELECT_TINY_MODELS = """([inputsByType, checkpointParts]) => {
    const setWidgets = (node, values) => Object.entries(values).forEach(([name, value]) => {
        const widget = node.widgets.find((widget) => widget.name === name);
        widget.value = value;
        widget.callback?.(value);  // as a user's choice does (LoadImage shows the picture)
    });
    for (const node of [...app.graph.nodes]) {
        setWidgets(node, inputsByType[node.type] ?? {});
        if (node.type !== 'CheckpointLoaderSimple') continue;
        node.outputs.forEach((output, slot) => {  // one tiny loader per used output
            if (!output.links?.length) return;
            const [type, values] = checkpointParts[slot];
            const part = LiteGraph.createNode(type);
            part.pos = [node.pos[0] - 360, node.pos[1] + 120 * slot];
            app.graph.add(part);
            setWidgets(part, values);
            for (const linkId of [...output.links]) {
                const link = app.graph.links.get(linkId);
                part.connect(0, app.graph.getNodeById(link.target_id), link.target_slot);
            }
        });
        app.graph.remove(node);
    }
}"""
IMAGES_SHOWN = """(nodeIds) => nodeIds.every((id) => {
    const images = app.graph.getNodeById(id).imgs ?? [];
    return images.length > 0 && images.every((image) => image.complete && image.naturalWidth > 0);
})"""


@pytest.fixture(scope="module")
def app_url(comfy_server):
    write_tiny_input_image(comfy_server.base_directory / "input")  # listed by LoadImage on page load
    request = urllib.request.Request(comfy_server.url + "/settings", data=json.dumps(PAGE_SETTINGS).encode())
    urllib.request.urlopen(request, timeout=HUNG_AFTER_S).close()
    return comfy_server.url


def socket_inputs(node: dict) -> list:
    """The inputs a workflow file lists: sockets and linked widgets (the frontend adds the rest)."""
    return [(slot["name"], slot["link"]) for slot in node["inputs"] if "widget" not in slot or slot["link"]]


def schema_inputs(api_prompt: dict, object_info: dict) -> dict:
    """Node type and inputs by node id, without inputs the node type does not declare (the
    frontend sends along the text PreviewAny shows; the server ignores it)."""
    return {node_id: (node["class_type"], {name: value for name, value in node["inputs"].items()
                                           if name in input_specs(object_info[node["class_type"]])})
            for node_id, node in api_prompt.items()}


def _run_button(page):
    """The frontend's Run button: a button inside the `queue-button` group up to frontend
    1.3x, the `queue-button` itself since 1.4x (one of the two matches)."""
    return page.locator('button[data-testid="queue-button"]').or_(
        page.get_by_test_id("queue-button").get_by_role("button", name="Run"))


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda path: path.stem)
def test_workflow_loads_and_runs_in_the_frontend(path, page, open_app, app_url, comfy_server, artifacts_dir):
    workflow = json.loads(path.read_text())
    open_app(app_url)
    page.evaluate(LOAD, workflow)

    on_canvas = page.evaluate("() => app.graph.nodes.map((node) => [String(node.id), node.type])")  # 1.49: "1"
    assert sorted(on_canvas) == sorted([str(node["id"]), node["type"]] for node in workflow["nodes"])
    assert page.evaluate("() => window.missingNodeTypes") == []
    registered = page.evaluate("() => Object.keys(LiteGraph.registered_node_types)")
    assert {node["type"] for node in workflow["nodes"]} <= set(registered)
    assert page.locator(".p-dialog").count() == 0  # no missing-nodes or error dialog
    assert page.locator(".p-toast-message").count() == 0  # no workflow-validation warning
    refused = {(node_type, name) for node_type, name in page.evaluate(WIDGET_PROBLEMS)}
    assert ("CheckpointLoaderSimple", "ckpt_name") in refused  # sd_xl_base is not on this server,
    assert refused <= FILE_COMBOS  # and only the files a user downloads are missing

    saved = {node["id"]: node for node in page.evaluate("() => app.graph.serialize()")["nodes"]}
    for node in workflow["nodes"]:
        # Newer frontends (1.49) leave the key out for nodes without widgets.
        assert saved[node["id"]].get("widgets_values", []) == node.get("widgets_values", []), node["type"]
        assert socket_inputs(saved[node["id"]]) == socket_inputs(node), node["type"]
    object_info = comfy_server.get("/object_info")
    frontend_prompt = page.evaluate("async () => (await app.graphToPrompt()).output")
    ours = {node_id: (node["class_type"], node["inputs"]) for node_id, node in ui_to_api(workflow, object_info).items()}
    assert schema_inputs(frontend_prompt, object_info) == ours

    page.evaluate(SELECT_TINY_MODELS, [{**TINY_FILE_INPUTS, **small_run_inputs()}, TINY_CHECKPOINT_PARTS])
    assert page.evaluate(WIDGET_PROBLEMS) == []
    with page.expect_response(lambda r: r.url.endswith("/prompt") and r.request.method == "POST") as response:
        _run_button(page).click()
    entry = comfy_server.wait(response.value.json()["prompt_id"])
    assert entry["status"]["status_str"] == "success", entry["status"]
    save_nodes = [node["id"] for node in workflow["nodes"] if node["type"] == "SaveImage"]
    assert all(entry["outputs"][str(node_id)]["images"] for node_id in save_nodes)
    page.wait_for_function(IMAGES_SHOWN, arg=save_nodes)

    page.set_viewport_size({"width": 2000, "height": 1300})
    page.evaluate("() => app.canvas.fitViewToSelectionAnimated({ duration: 1 })")
    page.wait_for_timeout(300)
    page.screenshot(path=artifacts_dir / f"{path.stem}.png")
    assert not page.errors, page.errors
