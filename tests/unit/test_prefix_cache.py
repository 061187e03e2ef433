"""The prefix KV cache: multi-turn encodes with the cache give the outputs of encodes
without it (same tokens, hidden states within float tolerance), while the language model
prefills only what no earlier turn processed and the vision tower sees each image once."""

import logging

import pytest
import torch
from PIL import Image

from harness.tiny_qwen import QWEN_FAMILIES, build_tiny_qwen
from m2chat_core.encoder import AdapterReadout, TurnOptions, encode
from m2chat_core.prefix_cache import PrefixCache
from m2chat_core.prompt import build_prompt
from m2chat_core.session import ChatSession, ChatTurn, image_to_png
from m2chat_core.tiny.vlm import build_tiny_vlm
from m2chat_core.vlm import load_vlm

K = 4
LAYERS = (-1, 2, 0)
RED, BLUE = Image.new("RGB", (40, 30), (200, 30, 30)), Image.new("RGB", (30, 40), (20, 40, 220))
STORY = [("A fox finds a lamp.", []), ("Continue the story.", []), ("Continue the story.", []),
         ("And then?", [])]
DIALOGUE = [("What is in this picture?", [RED]), ("Now draw it at night.", []),
            ("Compare it with this one.", [BLUE]), ("Draw both together.", [])]


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    return load_vlm(build_tiny_vlm(tmp_path_factory.mktemp("llava"), seed=0))


@pytest.fixture(scope="module", params=sorted(QWEN_FAMILIES))
def qwen(request, tmp_path_factory):
    return load_vlm(build_tiny_qwen(tmp_path_factory.mktemp(request.param), request.param))


@pytest.fixture(scope="module")
def special():
    return torch.randn(2, 64, generator=torch.Generator().manual_seed(7)) * 1e-3


class _Calls:
    """Forward calls of a module (a hook of the test's own, not the encoder's count)."""

    def __init__(self, module):
        self.count = 0
        self._hook = module.register_forward_pre_hook(lambda *_: setattr(self, "count", self.count + 1))

    def remove(self):
        self._hook.remove()


def _turns(vlm, special, turns, cache, session=None, task="multimodal_dialogue", max_new_tokens=5, seed=0):
    session, results = session or ChatSession(), []
    for prompt, images in turns:
        result = encode(vlm, session, prompt, images, readout=AdapterReadout(special, LAYERS, K),
                        options=TurnOptions(task=task, max_new_tokens=max_new_tokens, seed=seed, temperature=0.7),
                        prefix_cache=cache)
        session = result.session
        results.append(result)
    return results


def _assert_same_outputs(with_cache, without_cache):
    for cached, plain in zip(with_cache, without_cache, strict=True):
        assert (cached.answer_token_ids, cached.caption_token_ids) == (plain.answer_token_ids, plain.caption_token_ids)
        assert cached.session == plain.session and cached.prompt_tokens == plain.prompt_tokens
        for name in ("caption_hidden_states", "answer_embedding", "caption_embedding", "image_features"):
            expected = getattr(plain.features, name)
            if expected is None:
                assert getattr(cached.features, name) is None
            else:
                torch.testing.assert_close(getattr(cached.features, name), expected, atol=1e-5, rtol=1e-4)


def _assert_prefills_only_the_rest(results):
    for result in results:
        generated = len(result.answer_token_ids) + 1 + len(result.caption_token_ids) + K
        assert result.tokens_processed == result.prompt_tokens - result.reused_prompt_tokens + generated


def test_a_story_reuses_each_earlier_panels_prompt_and_gives_the_same_outputs(llava, special):
    without_cache = _turns(llava, special, STORY, None, task="storytelling")
    with_cache = _turns(llava, special, STORY, PrefixCache(max_tokens=4096), task="storytelling")
    _assert_same_outputs(with_cache, without_cache)
    _assert_prefills_only_the_rest(with_cache)
    assert with_cache[0].reused_prompt_tokens == 0
    for earlier, later in zip(with_cache, with_cache[1:]):
        # Everything up to the end of the earlier user turn is shared: the earlier prompt
        # minus the chat template's assistant prefix and "Response:" (a few tokens).
        assert earlier.prompt_tokens - 12 <= later.reused_prompt_tokens < earlier.prompt_tokens
    assert sum(r.tokens_processed for r in with_cache) < 0.6 * sum(r.tokens_processed for r in without_cache)


def test_image_turns_reuse_the_prefix_and_encode_each_image_once(llava, special):
    without_cache = _turns(llava, special, DIALOGUE, None)
    tower = _Calls(llava.model.model.vision_tower)
    try:
        cache = PrefixCache(max_tokens=4096)
        with_cache = _turns(llava, special, DIALOGUE, cache)
        assert tower.count == 2  # two distinct images
        assert cache.cached_images == 2
    finally:
        tower.remove()
    _assert_same_outputs(with_cache, without_cache)
    _assert_prefills_only_the_rest(with_cache)
    assert all(result.reused_prompt_tokens > 0 for result in with_cache[1:])


def test_an_image_in_the_cached_prefix_still_gives_f_img_of_the_new_turn(llava, special):
    cache = PrefixCache(max_tokens=4096)
    first, = _turns(llava, special, DIALOGUE[:1], cache)
    again, = _turns(llava, special, DIALOGUE[:1], cache, seed=1)  # a re-run with a new seed
    assert again.reused_prompt_tokens == again.prompt_tokens - 1  # the last position is fed for its logits
    plain, = _turns(llava, special, DIALOGUE[:1], None, seed=1)
    _assert_same_outputs([again], [plain])
    torch.testing.assert_close(again.features.image_features, first.features.image_features)


def test_a_changed_image_is_not_taken_for_the_cached_one(llava, special):
    cache = PrefixCache(max_tokens=4096)
    _turns(llava, special, [("What is in this picture?", [RED])], cache)
    changed = _turns(llava, special, [("What is in this picture?", [BLUE])], cache)
    plain = _turns(llava, special, [("What is in this picture?", [BLUE])], None)
    _assert_same_outputs(changed, plain)
    turn = plain[0].session.turns[-1]
    ids = llava.process(build_prompt(llava.processor, (), turn), turn.pil_images())["input_ids"][0].tolist()
    assert 0 < changed[0].reused_prompt_tokens <= ids.index(llava.image_token_id)


def test_a_session_that_drops_old_turns_reuses_no_prefix_that_is_gone(llava, special, caplog):
    words = "the brave fox found a golden lamp near the river one quiet winter evening " * 3
    session = ChatSession(tuple(ChatTurn(f"{i} {words}", (image_to_png(RED),), words, words) for i in range(4)))
    turns = [("Draw the fox again.", []), ("And the lamp.", []), ("And the river.", [])]
    without_cache = _turns(llava, special, turns, None, session=session)
    cache = PrefixCache(max_tokens=4096)
    with caplog.at_level(logging.DEBUG, logger="m2chat_core.prefix_cache"):
        with_cache = _turns(llava, special, turns, cache, session=session)
    assert all(result.dropped_turns > 0 for result in with_cache)
    _assert_same_outputs(with_cache, without_cache)
    _assert_prefills_only_the_rest(with_cache)
    assert "Prefix cache hit" in caplog.text and "Prefix cache miss" in caplog.text


def test_qwen_turns_with_images_match_without_the_cache(qwen, special):
    without_cache = _turns(qwen, special, DIALOGUE, None)
    cache = PrefixCache(max_tokens=4096)
    with_cache = _turns(qwen, special, DIALOGUE, cache)
    _assert_same_outputs(with_cache, without_cache)
    _assert_prefills_only_the_rest(with_cache)
    assert all(result.reused_prompt_tokens > 0 for result in with_cache[1:])
    assert cache.cached_images == 2


def test_the_cache_keeps_within_its_token_limit_and_forgets_other_weights(llava, special):
    cache = PrefixCache(max_tokens=150)
    results = _turns(llava, special, STORY, cache, task="storytelling")
    assert 0 < cache.cached_tokens <= 150
    assert results[-1].prompt_tokens > 150  # the last prompt was too long to keep
    cache.for_weights("stage-2 deltas")
    assert cache.cached_tokens == 0
    assert cache.for_weights("stage-2 deltas") is cache


def test_a_cache_of_no_tokens_changes_nothing(llava, special):
    cache = PrefixCache(max_tokens=0, max_images=0)
    results = _turns(llava, special, DIALOGUE[:2], cache)
    assert [result.reused_prompt_tokens for result in results] == [0, 0]
    assert cache.cached_tokens == cache.cached_images == 0


def test_cache_limits_must_not_be_negative():
    with pytest.raises(ValueError, match="max_tokens=-1"):
        PrefixCache(max_tokens=-1)


class _UncroppableCache:
    """A KV cache whose layers cannot be cut back (sliding-window layers past their window)."""

    def get_seq_length(self):
        return 12

    def crop(self, tokens_to_remove):
        raise RuntimeError("the sliding window size was already reached")


def test_a_kv_cache_that_cannot_be_cut_back_is_not_kept():
    cache = PrefixCache(max_tokens=100)
    cache.store(tuple(range(10)), _UncroppableCache())
    assert cache.cached_tokens == 0
    assert cache.longest_prefix(tuple(range(10))) == (0, None)
