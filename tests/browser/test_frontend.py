"""The real ComfyUI frontend in Chromium sees the pack's nodes and runs a graph."""

from tiny_graphs import PACK_NODE_IDS, tiny_story_page_graph


def test_frontend_registers_pack_nodes(page, open_app, comfy_server, artifacts_dir):
    open_app(comfy_server.url)
    registered = page.evaluate("() => Object.keys(window.LiteGraph.registered_node_types)")
    assert {node_id for node_id in registered if node_id.startswith("M2Chat")} == PACK_NODE_IDS
    assert "KSampler" in registered
    page.screenshot(path=artifacts_dir / "frontend-loaded.png")
    assert not page.errors, page.errors


def test_graph_queued_from_the_page_runs(page, open_app, comfy_server, artifacts_dir):
    """Queue an API-format graph through the page's own api client, as Run would."""
    open_app(comfy_server.url)
    graph = tiny_story_page_graph(panels=2, filename_prefix="browser")
    prompt_id = page.evaluate(
        "async (graph) => (await window.app.api.queuePrompt(0, {output: graph, workflow: {}})).prompt_id",
        graph)
    entry = comfy_server.wait(prompt_id)
    assert entry["status"]["status_str"] == "success", entry["status"]
    page.screenshot(path=artifacts_dir / "frontend-after-run.png")
    assert "images" in entry["outputs"]["save_page"]


def test_answer_and_caption_show_on_the_encode_node(page, open_app, comfy_server, artifacts_dir):
    from tiny_graphs import encode_graph

    open_app(comfy_server.url)
    graph = encode_graph("a paper boat", filename_prefix="browser-text")
    # Put the graph on the canvas so the page has an M2ChatEncode node with id "encode".
    page.evaluate("async (graph) => { await window.app.loadApiJson(graph, 'm2chat-test'); }", graph)
    prompt_id = page.evaluate(
        "async (graph) => (await window.app.api.queuePrompt(0, {output: graph, workflow: {}})).prompt_id",
        graph)
    entry = comfy_server.wait(prompt_id)
    answer, caption = entry["outputs"]["encode"]["text"]
    shown = page.wait_for_function(
        """() => { const node = window.app.graph.getNodeById('encode');
                   const w = node?.widgets?.find((w) => w.name === 'vlm_text');
                   return w && w.value ? w.value : null; }""").json_value()
    assert caption in shown
    page.screenshot(path=artifacts_dir / "encode-shows-text.png")
