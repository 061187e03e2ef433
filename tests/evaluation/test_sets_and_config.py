"""Evaluation sets in each layout, and the checks that stop a run before any model loads:
a set in the wrong layout, or a model path without the expected layout."""

import json
from pathlib import Path

import pytest
from PIL import Image

from train.config import ConfigError
from train.evaluate.config import parse_command_line
from train.evaluate.datasets import EvaluationSetError, load_evaluation_set
from train.evaluate.store import GenerationStore, OutputDirError, generation_settings


def _image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(path)
    return path


def _config(arguments: list[str], *overrides: str):
    return parse_command_line(arguments + list(overrides))


@pytest.fixture
def model_folders(tmp_path) -> list[str]:
    """Fake model folders with the expected layout (no weights), a one-row CC3M set, and
    the command-line arguments naming them."""
    sdxl = tmp_path / "sdxl"
    for entry in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"):
        (sdxl / entry).mkdir(parents=True)
    (sdxl / "model_index.json").write_text("{}")
    for folder, files in (("vlm", ("config.json",)), ("clip", ("config.json", "preprocessor_config.json"))):
        (tmp_path / folder).mkdir()
        for name in files:
            (tmp_path / folder / name).write_text("{}")
    (tmp_path / "adapter.safetensors").write_bytes(b"")
    (tmp_path / "default.tsv").write_text(f"a red fox\t{_image(tmp_path / 'fox.png').name}\n")
    return [
        "--models.vlm", str(tmp_path / "vlm"), "--models.adapter", str(tmp_path / "adapter.safetensors"),
        "--models.sdxl", str(sdxl), "--metrics.clip_model", str(tmp_path / "clip"),
        "--data.kind", "cc3m", "--data.path", str(tmp_path / "default.tsv"), "--output_dir", str(tmp_path / "run"),
    ]


def test_coco_captions_become_text_to_image_items_with_their_images(tmp_path, model_folders):
    for image_id in (7, 9):
        _image(tmp_path / "val2014" / f"COCO_{image_id}.jpg")
    path = tmp_path / "captions_val2014.json"
    path.write_text(json.dumps({
        "images": [{"id": 7, "file_name": "COCO_7.jpg"}, {"id": 9, "file_name": "COCO_9.jpg"}],
        "annotations": [{"image_id": 7, "caption": " A dog. "}, {"image_id": 9, "caption": "A cat."},
                        {"image_id": 7, "caption": "A brown dog."}],
    }))
    config = _config(model_folders, "--data.kind", "coco", "--data.path", str(path),
                     "--data.image_root", str(tmp_path / "val2014"), "--data.num_samples", "2").data
    evaluation_set = load_evaluation_set(config)
    assert [(item.item_id, item.task, item.turn.user_text, item.turn.caption) for item in evaluation_set.items] == [
        ("000000", "text_to_image", "A dog.", "A dog."), ("000001", "text_to_image", "A cat.", "A cat.")]
    assert evaluation_set.reference_images == [tmp_path / "val2014" / "COCO_7.jpg", tmp_path / "val2014" / "COCO_9.jpg"]
    (tmp_path / "val2014" / "COCO_9.jpg").unlink()  # some images but not all: a wrong image_root, say
    with pytest.raises(EvaluationSetError, match=r"1 of the 2 captions have no image file \(e\.g\. .*COCO_9\.jpg\)"):
        load_evaluation_set(config)

    without_images = tmp_path / "captions_only.json"
    without_images.write_text(json.dumps({"annotations": [{"image_id": 1, "caption": "A boat."}]}))
    config = _config(model_folders, "--data.kind", "coco", "--data.path", str(without_images)).data
    evaluation_set = load_evaluation_set(config)
    assert len(evaluation_set.items) == 1 and evaluation_set.reference_images == []


def test_cc3m_tsv_and_jsonl_give_the_same_items(tmp_path, model_folders):
    _image(tmp_path / "images" / "a.png"), _image(tmp_path / "images" / "b.png")
    (tmp_path / "cc3m.tsv").write_text("caption\timage\na red fox\timages/a.png\na blue owl\timages/b.png\n")
    (tmp_path / "cc3m.jsonl").write_text(
        '{"caption": "a red fox", "image": "images/a.png"}\n\n{"caption": "a blue owl", "image": "images/b.png"}\n')
    sets = [load_evaluation_set(_config(model_folders, "--data.path", str(tmp_path / name)).data)
            for name in ("cc3m.tsv", "cc3m.jsonl")]
    assert sets[0].items == sets[1].items
    captions_and_images = [(item.turn.caption, item.turn.image.name) for item in sets[0].items]
    assert captions_and_images == [("a red fox", "a.png"), ("a blue owl", "b.png")]


def test_mmdialog_turns_follow_their_reference_history(tmp_path, model_folders):
    for name in ("pet.png", "out0.png", "out1.png", "last.png"):
        _image(tmp_path / name)
    lines = [
        {"turns": [{"user_text": "Look", "images": ["pet.png"], "answer": "Nice!", "caption": "a cat",
                    "target_image": "out0.png"},
                   {"user_text": "Another", "answer": "Here.", "caption": "a dog", "target_image": None}]},
        {"task": "storytelling", "turns": [{"user_text": "Once", "answer": "A fox", "caption": "a fox"}],
         "target_image": "last.png"},
    ]
    path = tmp_path / "test.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    evaluation_set = load_evaluation_set(_config(model_folders, "--data.kind", "mmdialog", "--data.path", str(path),
                                                 "--generation.systems", "[m2chat]").data)
    items = evaluation_set.items
    assert [(item.item_id, item.number, item.dialogue, item.task) for item in items] == [
        ("000000-00", 0, 0, "multimodal_dialogue"), ("000000-01", 1, 0, "multimodal_dialogue"),
        ("000001-00", 2, 1, "storytelling")]
    assert items[0].history == () and items[1].history == (items[0].turn,)
    assert items[0].turn.user_images == (tmp_path / "pet.png",)
    assert [item.turn.image for item in items] == [tmp_path / "out0.png", None, tmp_path / "last.png"]
    assert evaluation_set.num_dialogues == 2


@pytest.mark.parametrize("kind, name, content, problem", [
    ("coco", "captions.json", '{"images": []}', 'no "annotations" list'),
    ("coco", "captions.json", '{"annotations": [{"image_id": 1}]}', "annotation 0 has no caption"),
    ("cc3m", "val.tsv", "a red fox\n", "row 1 is not a caption and an image path"),
    ("cc3m", "val.tsv", "a red fox\tmissing.png\n", "row 1's image names .*missing.png, which does not exist"),
    ("cc3m", "val.csv", "a red fox,fox.png\n", "unknown suffix '.csv'"),
    ("mmdialog", "test.jsonl", '{"turns": []}\n', 'line 1 has no "turns" list'),
    ("mmdialog", "test.jsonl", "{not json\n", "line 1 is not JSON"),
    ("mmdialog", "test.jsonl", '{"turns": [{"answer": "hi"}]}\n', "line 1, turn 0 has neither user_text nor images"),
    ("mmdialog", "test.jsonl", '{"turns": [{"user_text": "hi", "images": "a.png"}]}\n', "images must be a list"),
])
def test_a_set_in_the_wrong_layout_names_the_path_and_the_expected_layout(
    tmp_path, model_folders, kind, name, content, problem
):
    path = tmp_path / name
    path.write_text(content)
    config = _config(model_folders, "--data.kind", kind, "--data.path", str(path), "--generation.systems", "[m2chat]")
    config = config.data
    with pytest.raises(EvaluationSetError, match=problem) as error:
        load_evaluation_set(config)
    message = str(error.value)
    assert message.startswith(str(path)) and "Expected" in message


def test_model_paths_without_the_expected_layout_fail_naming_field_path_and_layout(tmp_path, model_folders):
    config = _config(model_folders)
    assert config.generation.systems == ("m2chat", "vlm_sd") and config.data.kind == "cc3m"
    (tmp_path / "sdxl" / "unet").rmdir()
    with pytest.raises(ConfigError, match=r"models\.sdxl names .*sdxl, which lacks unet; expected a diffusers SDXL"):
        _config(model_folders)
    (tmp_path / "sdxl" / "unet").mkdir()
    with pytest.raises(ConfigError, match=r"models\.vlm names .*nowhere, which is not a folder; expected a Hugging"):
        _config(model_folders, "--models.vlm", str(tmp_path / "nowhere"))
    lacks = r"lacks config\.json, preprocessor_config\.json or processor_config\.json; expected a Hugging Face CLIP"
    with pytest.raises(ConfigError, match=rf"metrics\.clip_model names .*{lacks}"):
        _config(model_folders, "--metrics.clip_model", str(tmp_path))
    with pytest.raises(ConfigError, match=r"metrics\.fid_weights names .*\.pt; expected .*safetensors"):
        (tmp_path / "inception.pt").write_bytes(b"")
        _config(model_folders, "--metrics.fid_weights", str(tmp_path / "inception.pt"))


def test_config_rejects_bad_values_by_field(tmp_path, model_folders):
    with pytest.raises(ConfigError, match=r"generation\.systems must list distinct systems"):
        _config(model_folders, "--generation.systems", "[m2chat, dalle]")
    with pytest.raises(ConfigError, match=r"generation\.resolution must be a multiple of 8"):
        _config(model_folders, "--generation.resolution", "100")
    with pytest.raises(ConfigError, match=r"generation\.systems lists 'sdxl'"):
        _config(model_folders, "--data.kind", "mmdialog", "--generation.systems", "[sdxl]")
    config_file = tmp_path / "evaluate.yaml"
    config_file.write_text("generation:\n  guidance: 5\n")
    with pytest.raises(ConfigError, match=f"unknown field generation.guidance in {config_file}"):
        _config(model_folders, "--config", str(config_file))


def test_a_resume_with_other_generation_settings_is_refused(tmp_path, model_folders):
    config = _config(model_folders)
    store = GenerationStore(config.output_dir)
    store.check_settings(generation_settings(config))
    store.check_settings(generation_settings(_config(model_folders, "--generation.batch_size", "9")))  # same outputs
    with pytest.raises(OutputDirError, match=r"generation\.steps: 25 -> 2.*another output_dir"):
        store.check_settings(generation_settings(_config(model_folders, "--generation.steps", "2")))


def test_gate_mode_has_one_spelling_for_the_files_own_mode_and_accepts_the_old_one(model_folders):
    from m2chat_core.m3ft_settings import FILE_GATE_MODE

    assert _config(model_folders).generation.gate_mode == FILE_GATE_MODE
    assert _config(model_folders, "--generation.gate_mode", "").generation.gate_mode == FILE_GATE_MODE  # before 0.1.1
    with pytest.raises(ConfigError, match=r"generation\.gate_mode must be one of \['adapter', 'paper'"):
        _config(model_folders, "--generation.gate_mode", "cosine")
