"""The seeded tiny LLaVA builder: deterministic files that load like a downloaded VLM."""

from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration

from m2chat_core.tiny.vlm import NUM_IMAGE_TOKENS, build_tiny_vlm, tiny_vlm_config, train_byte_level_bpe


def _files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory) -> Path:
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny_vlm"), seed=0)


@pytest.fixture(scope="module")
def model_and_processor(vlm_dir):
    model = AutoModelForImageTextToText.from_pretrained(vlm_dir, local_files_only=True)
    processor = AutoProcessor.from_pretrained(vlm_dir, local_files_only=True)
    return model.eval(), processor


def _image_prompt_inputs(processor):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the cat?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    image = Image.new("RGB", (48, 40), (200, 30, 30))
    return prompt, processor(images=image, text=prompt, return_tensors="pt")


def test_same_seed_rebuilds_byte_identical_and_other_seed_changes_only_weights(vlm_dir, tmp_path):
    original = _files(vlm_dir)
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= original.keys()
    assert _files(build_tiny_vlm(tmp_path / "same", seed=0)) == original

    other = _files(build_tiny_vlm(tmp_path / "other", seed=1))
    assert other.keys() == original.keys()
    assert [name for name in original if other[name] != original[name]] == ["model.safetensors"]


def test_tokenizer_training_is_repeatable():
    first = train_byte_level_bpe().to_str()
    assert all(train_byte_level_bpe().to_str() == first for _ in range(4))


def test_loads_offline_as_llava_with_left_padding(model_and_processor):
    model, processor = model_and_processor
    assert isinstance(model, LlavaForConditionalGeneration)
    assert model.config.text_config.num_hidden_layers >= 4
    assert processor.tokenizer.padding_side == "left"
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_id


def test_chat_prompt_with_image_expands_to_the_models_image_tokens(model_and_processor):
    model, processor = model_and_processor
    prompt, inputs = _image_prompt_inputs(processor)
    assert prompt == "USER: <image>\nWhat colour is the cat? ASSISTANT:"
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == NUM_IMAGE_TOKENS
    assert NUM_IMAGE_TOKENS == model.config.image_seq_length
    assert inputs["pixel_values"].shape == (1, 3, 32, 32)


def test_generate_and_hidden_states(model_and_processor):
    model, processor = model_and_processor
    _, inputs = _image_prompt_inputs(processor)
    prompt_length = inputs["input_ids"].shape[1]
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
        outputs = model(**inputs, output_hidden_states=True)
        image_features = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
    assert generated.shape == (1, prompt_length + 5)
    text_config = model.config.text_config
    assert len(outputs.hidden_states) == text_config.num_hidden_layers + 1
    assert outputs.hidden_states[-1].shape == (1, prompt_length, text_config.hidden_size)
    # One (tokens, hidden) tensor per image: a batch tensor up to transformers 5.23, a list since 5.24.
    assert torch.cat(list(image_features)).shape == (NUM_IMAGE_TOKENS, text_config.hidden_size)


def test_tokenizer_round_trips_text_and_pads_left(model_and_processor):
    tokenizer = model_and_processor[1].tokenizer
    text = "Once upon a time, a brave fox found a golden kite near the river."
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert len(ids) < len(text) // 2  # the trained merges cover the corpus words
    assert tokenizer.decode(ids, skip_special_tokens=True) == text

    batch = tokenizer(["a cat", "a small green dragon sleeps"], padding=True)
    assert batch["input_ids"][0][0] == tokenizer.pad_token_id
    assert batch["attention_mask"][0][0] == 0 and batch["attention_mask"][0][-1] == 1


def test_bench_preset_holds_about_one_gigabyte_of_bfloat16_weights():
    config = tiny_vlm_config("bench-1gb", vocab_size=1000)
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    weight_bytes = sum(parameter.numel() for parameter in model.parameters()) * 2  # bfloat16
    assert 0.9e9 < weight_bytes < 1.1e9
    assert config.text_config.num_hidden_layers >= 4


def test_unknown_preset_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match="bench-1gb"):
        build_tiny_vlm(tmp_path, preset="huge")
