"""`make demo`'s job (scripts/demo.py) as a user runs it: its own ComfyUI server, the four
shared workflows on the shipped world models, every picture and transcript written, and the
text-to-image picture showing what was asked."""

from __future__ import annotations

import subprocess
import sys

import pytest
from comfyui_env import HUNG_AFTER_S, REPO
from PIL import Image

from train.world.judge import read_scenes, to_tensor
from train.world.layout import SHIPPED
from train.world.training import load_judge


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-output")
    result = subprocess.run([sys.executable, "scripts/demo.py", "--out", str(out)], cwd=REPO,
                            capture_output=True, text=True, timeout=HUNG_AFTER_S)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result.stdout


def test_the_demo_writes_every_workflows_pictures_and_transcript(demo):
    out, stdout = demo
    pictures = {path.name for path in out.glob("*.png")}
    expected = {"storyboard_00001_.png", "text_to_image_00001_.png", "edit_00001_.png", "image_editing_source.png",
                "multimodal_dialogue_source.png", *(f"story_panel_{i:05d}_.png" for i in range(1, 5)),
                *(f"dialogue_turn{turn}_00001_.png" for turn in range(1, 4))}
    assert pictures == expected
    for name in expected:
        assert str(out / name) in stdout  # the paths are printed
    dialogue = (out / "multimodal_dialogue.txt").read_text().splitlines()
    turns = [line for line in dialogue if line.startswith("> ")]
    assert turns == ["> what is in this picture?", "> now make it orange", "> move it to the right"]
    assert len(dialogue) > len(turns)  # the answers and captions follow each turn
    story = (out / "story.txt").read_text()
    assert story.startswith("> a story about a yellow star\n1. ") and "\n\n4. " in story


def test_the_demo_picture_shows_the_request(demo):
    out, _ = demo
    with Image.open(out / "text_to_image_00001_.png") as image:
        seen, = read_scenes(load_judge(SHIPPED.judge), to_tensor([image.convert("RGB")]))
    # "draw a large blue circle at the top right on a white background"
    assert [(o.colour, o.shape, o.cell) for o in seen.objects] == [("blue", "circle", (0, 2))]
    assert seen.background == "white"
