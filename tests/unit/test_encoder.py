"""VLM loading and the one-pass encoder (Eq. 1 forced structure) on tiny LLaVA and Qwen2-VL folders."""

import inspect
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, LlamaConfig, LlamaForCausalLM

from harness.tiny_qwen import QWEN_FAMILIES, build_tiny_qwen
from m2chat_core.encoder import (
    AdapterReadout,
    ContextLengthError,
    EncodeError,
    TurnOptions,
    encode,
    text_marker_embeddings,
)
from m2chat_core.prompt import build_prompt
from m2chat_core.session import ChatSession, ChatTurn, image_to_png
from m2chat_core.teacher_forcing import ForcedTurn, _process_within
from m2chat_core.tiny.vlm import NUM_IMAGE_TOKENS, build_tiny_vlm
from m2chat_core.vlm import (
    LoadedVLM,
    QuantizationUnavailableError,
    UnsupportedVLMError,
    VLMFolderError,
    _check_supported,
    load_vlm,
)

K = 4  # <|img|> tokens
LAYERS = (-1, 2, 0)
MAX_NEW = 5


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory) -> Path:
    return build_tiny_vlm(tmp_path_factory.mktemp("llava"), seed=0)


@pytest.fixture(scope="module")
def vlm(llava_dir):
    return load_vlm(llava_dir)


@pytest.fixture(scope="module")
def special():
    # Small rows: their scores (hidden · row) stay below the vocabulary's best logit, so
    # the untuned model never emits the special tokens and the structure is forced.
    return torch.randn(2, 64, generator=torch.Generator().manual_seed(7)) * 1e-3


def _red_image() -> Image.Image:
    return Image.new("RGB", (40, 30), (200, 30, 30))


def _encode(vlm, special, session=None, prompt="Draw a red fox", images=None, chosen_layers=LAYERS, on_token=None,
            **options):
    readout = AdapterReadout(special, tuple(chosen_layers), K)
    return encode(vlm, session or ChatSession(), prompt, images, readout=readout,
                  options=TurnOptions(**({"max_new_tokens": MAX_NEW} | options)), on_token=on_token)


class _CallCounter:
    """Counts forward calls of a module, and the tokens they carry."""

    def __init__(self, module):
        self.calls, self.tokens = 0, 0
        self._hook = module.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        self.calls += 1
        self.tokens += (args[0] if args else kwargs["hidden_states"]).shape[-2]

    def remove(self):
        self._hook.remove()


def _full_forward(vlm, result, images, special):
    """Oracle: the whole sequence (prompt, answer, <|IC|>, caption, <|img|>×K) in one forward without a cache."""
    model = vlm.model
    turn = result.session.turns[-1]
    inputs = vlm.process(build_prompt(vlm.processor, result.session.turns[:-1], turn), turn.pil_images())
    ids = inputs["input_ids"]
    embeddings = model.get_input_embeddings()(ids)[0]
    if images:
        image_rows = ids[0] == model.config.image_token_id
        embeddings[image_rows] = torch.cat(model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output)
    embed = model.get_input_embeddings()
    sequence = [
        embeddings,
        embed(torch.tensor(result.answer_token_ids, dtype=torch.long)),
        special[:1],
        embed(torch.tensor(result.caption_token_ids, dtype=torch.long)),
        special[1:].expand(K, -1),
    ]
    with torch.no_grad():
        outputs = model(inputs_embeds=torch.cat(sequence)[None], output_hidden_states=True)
    return ids.shape[1], outputs


# --- loading -------------------------------------------------------------------------


def test_load_reports_the_llava_layout(vlm, llava_dir):
    assert vlm.info.name == llava_dir.name
    assert (vlm.info.model_type, vlm.info.family) == ("llava", "llava-1.5")
    assert (vlm.info.hidden_size, vlm.info.vision_feature_size, vlm.info.num_layers) == (64, 64, 4)
    assert vlm.info.max_context_length == 512
    assert not vlm.model.training


def test_load_straight_into_the_chosen_dtype(llava_dir):
    loaded = load_vlm(llava_dir, dtype="bfloat16")
    assert {parameter.dtype for parameter in loaded.model.parameters()} == {torch.bfloat16}


def test_float32_from_a_bfloat16_folder_equals_transformers_own_float32_load(tmp_path, llava_dir):
    # load_vlm upcasts tensor by tensor from the mapped file (to bound peak memory); the
    # result must be what transformers loads straight into float32, buffers included.
    bf16_dir = tmp_path / "bf16"
    load_vlm(llava_dir, dtype="bfloat16").model.save_pretrained(bf16_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json", "chat_template.jinja"):
        if (llava_dir / name).is_file():
            (bf16_dir / name).write_bytes((llava_dir / name).read_bytes())
    upcast = load_vlm(bf16_dir, dtype="float32").model
    reference = AutoModelForImageTextToText.from_pretrained(bf16_dir, dtype=torch.float32)
    ours = dict(upcast.named_parameters()) | dict(upcast.named_buffers())
    theirs = dict(reference.named_parameters()) | dict(reference.named_buffers())
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert ours[name].dtype == tensor.dtype and torch.equal(ours[name], tensor), name


def test_load_errors_name_the_problem(tmp_path, llava_dir):
    with pytest.raises(VLMFolderError, match="does not exist"):
        load_vlm(tmp_path / "missing")
    with pytest.raises(VLMFolderError, match="no config.json"):
        load_vlm(tmp_path)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((llava_dir / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(VLMFolderError, match="pickle weights"):
        load_vlm(pickled)
    with pytest.raises(ValueError, match="Unknown dtype"):
        load_vlm(llava_dir, dtype="float8")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_quantization_without_cuda_says_why(llava_dir):
    with pytest.raises(QuantizationUnavailableError, match="CUDA"):
        load_vlm(llava_dir, quantization="4bit")


def test_text_only_model_is_unsupported(tmp_path):
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedVLMError, match="'llama' model, which is not an image-text-to-text VLM"):
        load_vlm(tmp_path)


class _CacheSpelling(torch.nn.Module):
    """The loaded model with its KV-cache forward argument and output attribute spelt
    `spelling` ("past_key_values" before transformers 5.24, "cache" since), whatever
    the installed transformers calls them."""

    def __init__(self, model, spelling):
        super().__init__()
        self.inner = model
        native = next(name for name in ("cache", "past_key_values") if name in inspect.signature(model.forward).parameters)

        def forward(input_ids=None, inputs_embeds=None, mm_encoder_outputs=None, **kwargs):
            kwargs[native] = kwargs.pop(spelling)
            outputs = model(input_ids=input_ids, inputs_embeds=inputs_embeds, mm_encoder_outputs=mm_encoder_outputs,
                            **kwargs)
            return SimpleNamespace(logits=outputs.logits, hidden_states=outputs.hidden_states,
                                   **{spelling: getattr(outputs, native)})

        parameters = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None)
                      for name in ("input_ids", "inputs_embeds", "mm_encoder_outputs", spelling)]
        forward.__signature__ = inspect.Signature(
            [*parameters, inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)])
        self.forward = forward
        self.config, self.generation_config = model.config, model.generation_config
        self.get_input_embeddings, self.get_output_embeddings = model.get_input_embeddings, model.get_output_embeddings
        self.get_image_features, self.get_decoder = model.get_image_features, model.get_decoder


@pytest.mark.parametrize("spelling", ["past_key_values", "cache"])
def test_encode_finds_the_kv_cache_argument_by_feature(vlm, special, spelling):
    respelt = LoadedVLM(_CacheSpelling(vlm.model, spelling), vlm.processor, vlm.info, vlm.decoder_layers)
    assert respelt.cache_argument == spelling
    expected = _encode(vlm, special, images=[_red_image()])
    result = _encode(respelt, special, images=[_red_image()])
    assert (result.answer_token_ids, result.caption_token_ids) == (expected.answer_token_ids, expected.caption_token_ids)
    assert result.tokens_processed == expected.tokens_processed
    torch.testing.assert_close(result.features.caption_hidden_states, expected.features.caption_hidden_states)


def test_a_model_without_a_kv_cache_argument_is_unsupported(vlm, special, llava_dir):
    model = _CacheSpelling(vlm.model, "past_key_values")
    model.forward.__signature__ = inspect.Signature(
        [p for p in inspect.signature(model.forward).parameters.values() if p.name != "past_key_values"])
    with pytest.raises(UnsupportedVLMError, match="lacks a KV-cache forward argument \\('cache' or 'past_key_values'\\)"):
        _check_supported(model, vlm.processor, llava_dir)


# --- encoding on LLaVA ---------------------------------------------------------------


def test_encode_with_image_returns_texts_session_and_feature_shapes(vlm, special):
    result = _encode(vlm, special, images=[_red_image()])

    assert result.draws_image and result.caption_start_forced
    assert result.answer and result.caption
    assert len(result.answer_token_ids) <= MAX_NEW and 1 <= len(result.caption_token_ids) <= MAX_NEW
    turn = result.session.turns[-1]
    assert (turn.user_text, turn.answer, turn.caption) == ("Draw a red fox", result.answer, result.caption)
    assert turn.images == (image_to_png(_red_image()),)

    features = result.features
    num_tokens = len(result.caption_token_ids) + K
    assert features.caption_hidden_states.shape == (1, len(LAYERS), num_tokens, 64)
    assert features.caption_mask.shape == (1, num_tokens) and bool(features.caption_mask.all())
    assert features.answer_embedding.shape == features.caption_embedding.shape == (1, 64)
    assert features.has_answer.tolist() == [True]
    assert features.image_features.shape == (1, NUM_IMAGE_TOKENS, vlm.info.vision_feature_size)
    assert bool(features.image_mask.all())
    # f_img is the model's own get_image_features output (after the projector).
    pixels = vlm.process("<image>", [_red_image()])["pixel_values"]
    with torch.no_grad():
        expected = vlm.model.get_image_features(pixel_values=pixels).pooler_output[0]
    torch.testing.assert_close(features.image_features[0], expected)


def test_encode_without_image_has_no_image_features(vlm, special):
    features = _encode(vlm, special).features
    assert features.image_features is None and features.image_mask is None
    assert features.caption_hidden_states.shape[:2] == (1, len(LAYERS))


def test_f_img_holds_only_the_new_turns_images(vlm, special):
    earlier = _encode(vlm, special, images=[_red_image()]).session
    vision_calls = _CallCounter(vlm.model.model.vision_tower)
    try:
        follow_up = _encode(vlm, special, session=earlier, prompt="Now make it blue")
    finally:
        vision_calls.remove()
    assert vision_calls.calls == 1  # the earlier turn's image is still in the prompt
    assert follow_up.features.image_features is None


def test_a_tiny_top_p_samples_the_greedy_tokens(vlm, special):
    greedy = _encode(vlm, special)
    nucleus = _encode(vlm, special, temperature=1.0, top_p=1e-6, seed=5)
    assert (nucleus.answer_token_ids, nucleus.caption_token_ids) == (greedy.answer_token_ids, greedy.caption_token_ids)


def test_one_pass_matches_a_full_forward_and_counts_every_token_once(vlm, special):
    vision_calls = _CallCounter(vlm.model.model.vision_tower)
    try:
        result = _encode(vlm, special, images=[_red_image()])
    finally:
        vision_calls.remove()
    prompt_length, full = _full_forward(vlm, result, [_red_image()], special)
    num_answer, num_caption = len(result.answer_token_ids), len(result.caption_token_ids)

    assert vision_calls.calls == 1  # the image is encoded once
    assert result.prompt_tokens == prompt_length
    assert result.tokens_processed == prompt_length + num_answer + 1 + num_caption + K

    caption_start = prompt_length + num_answer + 1
    for index, layer in enumerate(LAYERS):
        torch.testing.assert_close(
            result.features.caption_hidden_states[0, index],
            full.hidden_states[layer][0, caption_start : caption_start + num_caption + K],
            atol=1e-4, rtol=1e-4,
        )
    last = full.hidden_states[-1][0]
    torch.testing.assert_close(result.features.answer_embedding[0], last[prompt_length : caption_start - 1].mean(0))
    torch.testing.assert_close(
        result.features.caption_embedding[0], last[caption_start : caption_start + num_caption].mean(0)
    )
    # Greedy decoding: every generated token is the full forward's argmax at the position before it.
    greedy = full.logits[0].argmax(-1)
    assert list(result.answer_token_ids) == greedy[prompt_length - 1 : caption_start - 2].tolist()
    assert list(result.caption_token_ids[1:]) == greedy[caption_start : caption_start + num_caption - 1].tolist()


def test_same_seed_gives_identical_outputs_and_seeds_differ(vlm, special):
    sampling = dict(images=[_red_image()], temperature=1.0, top_p=0.9)
    first, again = _encode(vlm, special, seed=3, **sampling), _encode(vlm, special, seed=3, **sampling)
    assert (first.answer, first.caption) == (again.answer, again.caption)
    assert first.session.to_json() == again.session.to_json()
    for name in ("caption_hidden_states", "answer_embedding", "caption_embedding", "image_features"):
        assert torch.equal(getattr(first.features, name), getattr(again.features, name))

    others = {_encode(vlm, special, seed=seed, **sampling).answer_token_ids for seed in range(4, 8)}
    assert len(others | {first.answer_token_ids}) > 1


def test_sampling_leaves_the_global_rng_alone(vlm, special):
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    _encode(vlm, special, temperature=1.0, seed=1)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_text_to_image_in_always_mode_draws_without_an_answer(vlm, special):
    result = _encode(vlm, special, task="text_to_image")
    assert result.answer == "" and result.answer_token_ids == ()
    assert result.features.has_answer.tolist() == [False]
    assert not result.features.answer_embedding.any()
    assert result.tokens_processed == result.prompt_tokens + 1 + len(result.caption_token_ids) + K


def test_never_mode_answers_only(vlm, special):
    result = _encode(vlm, special, draw_mode="never")
    assert not result.draws_image and result.features is None and result.caption == ""
    assert result.answer and result.session.turns[-1].caption == ""
    assert result.tokens_processed == result.prompt_tokens + len(result.answer_token_ids)


def _prefill_hidden(vlm, prompt):
    inputs = vlm.process(build_prompt(vlm.processor, [], ChatTurn(prompt)), [])
    with torch.no_grad():
        return vlm.model(**inputs, output_hidden_states=True).hidden_states[-1][0, -1]


def test_auto_mode_draws_when_the_model_emits_the_caption_start(vlm, special):
    hidden = _prefill_hidden(vlm, "Draw a red fox")
    tuned = special.clone()
    tuned[0] = 1000 * hidden / hidden.dot(hidden)  # scores 1000 right after the prompt
    result = _encode(vlm, tuned, draw_mode="auto")
    assert result.draws_image and not result.caption_start_forced
    assert result.answer_token_ids == () and result.features.has_answer.tolist() == [False]
    assert result.tokens_processed == result.prompt_tokens + 1 + len(result.caption_token_ids) + K


def test_auto_mode_draws_nothing_when_the_caption_start_never_wins(vlm, special, caplog):
    silent = special.clone()
    silent[0] = 0  # scores 0, below the vocabulary's best logit
    with caplog.at_level(logging.INFO, logger="m2chat_core.encoder"):
        result = _encode(vlm, silent, draw_mode="auto")
    assert not result.draws_image and result.features is None and result.caption == ""
    assert len(result.answer_token_ids) == MAX_NEW
    assert "draws no image" in caplog.text


def test_on_token_reports_every_token_and_can_cancel_within_one(vlm, special):
    calls = []
    result = _encode(vlm, special, on_token=lambda step, total: calls.append((step, total)))
    total = 2 * MAX_NEW + 2
    generated = len(result.answer_token_ids) + 1 + len(result.caption_token_ids)
    assert calls == [(step, total) for step in range(1, generated + 1)] + [(total, total)]

    class Cancelled(Exception):
        pass

    def cancel_at_third(step, total):
        if step == 3:
            raise Cancelled

    layer_calls = _CallCounter(vlm.decoder_layers[0])
    try:
        with pytest.raises(Cancelled):
            _encode(vlm, special, on_token=cancel_at_third)
    finally:
        layer_calls.remove()
    assert layer_calls.calls == 3  # the prompt and the first two tokens; the third is never fed


def _long_session(turns=6) -> ChatSession:
    words = "the brave fox found a golden lamp near the river one quiet winter evening " * 3
    session = ChatSession()
    for index in range(turns):
        session = session.with_turn(ChatTurn(f"{index} {words}", (image_to_png(_red_image()),), words, words))
    return session


def test_context_limit_drops_the_oldest_turns_and_says_so(vlm, special, caplog):
    session = _long_session()
    with caplog.at_level(logging.WARNING, logger="m2chat_core.encoder"):
        result = _encode(vlm, special, session=session)
    reserve = 2 * MAX_NEW + 1 + K
    limit = vlm.info.max_context_length
    assert result.dropped_turns > 0 and "oldest" in caplog.text
    assert result.prompt_tokens + reserve <= limit
    # Only as many turns as needed: one turn more would not fit.
    kept_one_more = session.turns[result.dropped_turns - 1 :]
    new_turn = result.session.turns[-1]
    images = [image for turn in (*kept_one_more, new_turn) for image in turn.pil_images()]
    longer = vlm.process(build_prompt(vlm.processor, kept_one_more, new_turn), images)
    assert longer["input_ids"].shape[1] + reserve > limit
    # The returned session keeps the whole dialogue.
    assert result.session.turns[:-1] == session.turns


def test_training_drops_the_same_turns_as_inference(vlm, special):
    session = _long_session()
    result = _encode(vlm, special, session=session)
    new_turn = result.session.turns[-1]
    # Teacher forcing of the same turn, with the same response budget as the encoder reserved.
    forced = ForcedTurn(new_turn, answer_ids=(1,) * MAX_NEW, caption_ids=(1,) * MAX_NEW, history=session.turns)
    inputs, num_images = _process_within(vlm.processor, forced, 2 * MAX_NEW + 1 + K, vlm.info.max_context_length)
    assert inputs["input_ids"].shape[1] == result.prompt_tokens
    assert num_images == len(session.turns) - result.dropped_turns + len(new_turn.images)


def test_a_turn_longer_than_the_context_raises(vlm, special):
    with pytest.raises(ContextLengthError, match="context of 512 tokens"):
        _encode(vlm, special, prompt="fox " * 600)


def test_bad_arguments_are_rejected(vlm, special):
    with pytest.raises(EncodeError, match=r"\(2, 64\)"):
        _encode(vlm, torch.zeros(2, 32))
    with pytest.raises(EncodeError, match="from -5 to 4"):
        _encode(vlm, special, chosen_layers=(5,))
    with pytest.raises(EncodeError, match="draw_mode"):
        _encode(vlm, special, draw_mode="sometimes")
    for temperature, top_p in ((float("nan"), 1.0), (1.0, float("nan")), (-0.5, 1.0)):
        with pytest.raises(EncodeError, match=r"temperature must be >= 0 and top_p in \(0, 1\]"):
            _encode(vlm, special, temperature=temperature, top_p=top_p)


def test_text_marker_embeddings_are_the_mean_embedding_of_the_marker_text(vlm):
    markers = text_marker_embeddings(vlm)
    ids = vlm.tokenizer("<|IC|>", add_special_tokens=False)["input_ids"]
    assert markers.shape == (2, 64)
    torch.testing.assert_close(markers[0], vlm.input_embeddings.weight[ids].mean(0))


# --- Qwen2-VL and Qwen2.5-VL ------------------------------------------------------------------------

@pytest.fixture(scope="module", params=sorted(QWEN_FAMILIES))
def qwen(request, tmp_path_factory):
    loaded = load_vlm(build_tiny_qwen(tmp_path_factory.mktemp(request.param), request.param))
    assert loaded.info.family == request.param
    return loaded


def _generate_reference(vlm, prompt, images):
    turn = ChatTurn(prompt, tuple(map(image_to_png, images)))
    inputs = vlm.process(build_prompt(vlm.processor, [], turn), images)
    with torch.no_grad():
        generated = vlm.model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False)
    new_tokens = generated[0, inputs["input_ids"].shape[1] :].tolist()
    return [token for token in new_tokens if token not in vlm.eos_token_ids()]


def test_qwen_greedy_answers_match_generate_with_and_without_image(qwen, special):
    with_image = _generate_reference(qwen, "What colour is it?", [_red_image()])
    without_image = _generate_reference(qwen, "Tell me a story", [])
    image_result = _encode(qwen, special, prompt="What colour is it?", images=[_red_image()], draw_mode="never")
    text_result = _encode(qwen, special, prompt="Tell me a story", draw_mode="never")
    assert list(image_result.answer_token_ids) == with_image
    assert list(text_result.answer_token_ids) == without_image


def test_qwen_encode_does_not_reuse_the_rope_state_of_an_earlier_image_turn(qwen, special):
    qwen.model.model.rope_deltas = None  # the state of a freshly loaded model
    fresh = _encode(qwen, special, prompt="Tell me a story")
    _encode(qwen, special, prompt="What colour is it?", images=[_red_image()])  # leaves M-RoPE deltas behind
    after_image = _encode(qwen, special, prompt="Tell me a story")
    assert after_image.answer_token_ids == fresh.answer_token_ids
    assert torch.equal(after_image.features.caption_hidden_states, fresh.features.caption_hidden_states)


def test_qwen_encode_draws_with_merged_image_features(qwen, special):
    result = _encode(qwen, special, images=[_red_image()])
    grid = qwen.process(build_prompt(qwen.processor, [], result.session.turns[-1]), [_red_image()])["image_grid_thw"]
    num_patches = int(grid.prod()) // 4  # 2×2 spatial merge
    assert result.features.image_features.shape == (1, num_patches, 64)
    assert result.features.caption_hidden_states.shape == (1, len(LAYERS), len(result.caption_token_ids) + K, 64)
    assert result.tokens_processed == (
        result.prompt_tokens + len(result.answer_token_ids) + 1 + len(result.caption_token_ids) + K
    )
