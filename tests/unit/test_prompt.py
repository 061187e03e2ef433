"""The Eq. 1 instruction format: tasks, prompt rendering and parsing generated text."""

import pytest
from comfyui_env import HUNG_AFTER_S
from PIL import Image
from transformers import AutoProcessor

from m2chat_core.prompt import RESPONSE_LABEL, PromptFormatError, build_prompt, format_response, parse_generation
from m2chat_core.session import ChatTurn, image_to_png
from m2chat_core.special_tokens import CAPTION_START, IMAGE_TOKEN
from m2chat_core.tasks import TASKS, get_task
from m2chat_core.tiny.vlm import NUM_IMAGE_TOKENS, build_tiny_vlm


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    return AutoProcessor.from_pretrained(build_tiny_vlm(tmp_path_factory.mktemp("vlm")), local_files_only=True)


def _png(colour=(10, 20, 30)) -> bytes:
    return image_to_png(Image.new("RGB", (8, 8), colour))


def test_the_four_tasks_have_descriptions_and_only_text_to_image_skips_the_answer():
    assert set(TASKS) == {"text_to_image", "image_editing", "storytelling", "multimodal_dialogue"}
    assert all(task.description and CAPTION_START in task.description for task in TASKS.values())
    assert [name for name, task in TASKS.items() if not task.answer_first] == ["text_to_image"]
    with pytest.raises(ValueError, match="multimodal_dialogue"):
        get_task("painting")


def test_prompt_follows_eq1_inside_the_chat_template(processor):
    history = [ChatTurn("Draw a cat", (_png(),), "Here it is.", "a grey cat on a mat", "text_to_image")]
    new_turn = ChatTurn("Make it orange", (_png((200, 100, 0)),), task="image_editing")

    prompt = build_prompt(processor, history, new_turn)

    assert prompt.startswith(f"USER: Instruction: {TASKS['image_editing'].description}\nInput:")
    # Earlier turns are plain text with the response written in the Eq. 1 form.
    assert f"\nUser: Draw a cat<image>\n\nAssistant: Here it is. {CAPTION_START} a grey cat on a mat" in prompt
    assert prompt.endswith(f"\nUser: Make it orange<image>\n ASSISTANT: {RESPONSE_LABEL}")
    assert prompt.count("<image>") == 2
    # The processor expands each placeholder to the vision tower's tokens.
    images = [image for turn in (*history, new_turn) for image in turn.pil_images()]
    ids = processor(text=prompt, images=images, return_tensors="pt")["input_ids"]
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert int((ids == image_id).sum()) == 2 * NUM_IMAGE_TOKENS


def test_prompt_without_chat_template_uses_the_processors_image_placeholder(processor):
    processor_without_template = type(processor)(
        image_processor=processor.image_processor, tokenizer=processor.tokenizer, image_token="<image>",
        patch_size=processor.patch_size, num_additional_image_tokens=1,
    )
    prompt = build_prompt(processor_without_template, [], ChatTurn("Tell me a story", (_png(),), task="storytelling"))
    assert prompt == (
        f"Instruction: {TASKS['storytelling'].description}\nInput:\nUser: Tell me a story<image>\n{RESPONSE_LABEL}"
    )


def test_prompt_with_an_image_fails_clearly_when_the_processor_cannot_place_it():
    class TokenizerOnly:
        chat_template = None

    with pytest.raises(PromptFormatError, match="chat template"):
        build_prompt(TokenizerOnly(), [], ChatTurn("hi", (_png(),)))
    assert build_prompt(TokenizerOnly(), [], ChatTurn("hi")).endswith(f"User: hi\n{RESPONSE_LABEL}")


def test_format_response_writes_the_eq1_response():
    assert format_response("Sure.", "a red fox", 3) == f"Sure. {CAPTION_START} a red fox{IMAGE_TOKEN * 3}"
    assert format_response("", "a red fox") == f"{CAPTION_START} a red fox"
    assert format_response("Just text. ", "") == "Just text."


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"Sure. {CAPTION_START} a red fox{IMAGE_TOKEN * 4}", ("Sure.", "a red fox")),
        ("No marker here.", ("No marker here.", "")),
        (f"One {CAPTION_START} two {CAPTION_START} three", ("One", "two three")),
        (f"Answer {CAPTION_START}   ", ("Answer", "")),
        (f"Ans{IMAGE_TOKEN}wer{CAPTION_START}cap {IMAGE_TOKEN} tion", ("Ans wer", "cap tion")),
        (f"{CAPTION_START}only a caption", ("", "only a caption")),
        ("", ("", "")),
    ],
)
def test_parse_generation_is_robust(text, expected):
    assert parse_generation(text) == expected


def test_parse_generation_inverts_format_response():
    assert parse_generation(format_response("Here you go.", "a blue boat at dawn", 8)) == (
        "Here you go.",
        "a blue boat at dawn",
    )


def test_session_and_prompt_do_not_import_each_other():
    import subprocess
    import sys
    from pathlib import Path

    check = ("import sys, m2chat_core.session; assert 'm2chat_core.prompt' not in sys.modules; "
             "import m2chat_core.prompt; assert m2chat_core.prompt.get_task is m2chat_core.session.get_task")
    repo = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", check], cwd=repo, check=True, timeout=HUNG_AFTER_S)
