"""One M²Chat turn through the VLM, in one pass over a KV cache (Eq. 1, forced structure):

    prompt -> answer y_res -> <|IC|> -> caption yhat_cap -> <|img|>×K (one step)

and the features the M³Adapter reads (`VLMFeatures`): h_l, the hidden states of the
chosen layers at the caption and <|img|> positions (t_{cap,img}); e_ans / e_cap, the
mean last-layer hidden state over answer / caption tokens; f_img, the new turn's image
embeddings as `get_image_features` yields them (after the projector, see vlm.py).

The special tokens are not in the VLM's vocabulary: their embeddings (rows in
SPECIAL_TOKENS order, from the adapter file) are fed through `inputs_embeds`. A tuned
model can still emit them: each one's score, final hidden state · its embedding (as if
the output embedding were tied), competes with the vocabulary's logits, <|IC|> while
answering and <|img|> while captioning. `always` forces <|IC|> when the answer ends
without it; `auto` draws only when the model emitted <|IC|>; `never` answers only.

Hidden-state indices follow transformers' `output_hidden_states`: 0 is the embedding
output, i the output of decoder layer i, -1 the last layer after the final norm.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from PIL import Image
from transformers import BatchFeature

from .encoding import VLMFeatures
from .prefill import plan_prefill
from .prefix_cache import PrefixCache
from .prompt import PromptTooLongError, fit_prompt, strip_markers
from .tasks import get_task
from .session import ChatSession, ChatTurn, image_to_png
from .special_tokens import CAPTION_START, SPECIAL_TOKENS
from .vlm import LoadedVLM

logger = logging.getLogger(__name__)

DRAW_MODES = ("always", "auto", "never")
TokenCallback = Callable[[int, int], None]


class EncodeError(ValueError):
    """Encode arguments that do not fit the VLM or each other."""


class ContextLengthError(EncodeError):
    """The new turn does not fit the VLM's context even without earlier turns."""


@dataclass(frozen=True)
class AdapterReadout:
    """What the adapter gives the encoder and reads back: the learned embeddings of the
    special tokens (rows in SPECIAL_TOKENS order), the hidden-state layers of h_l, and K,
    the number of <|img|> tokens."""

    special_token_embeddings: torch.Tensor
    chosen_layers: tuple[int, ...]
    num_image_tokens: int


@dataclass(frozen=True)
class TurnOptions:
    """How one turn is generated. max_new_tokens caps the answer and the caption each;
    temperature 0 is greedy, else temperature + top-p sampling from a generator seeded
    with `seed` (a seed gives identical outputs)."""

    task: str = "multimodal_dialogue"
    draw_mode: str = "always"
    seed: int = 0
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.draw_mode not in DRAW_MODES:
            raise EncodeError(f"Unknown draw_mode {self.draw_mode!r}; choose one of {list(DRAW_MODES)}.")
        if self.max_new_tokens < 1:
            raise EncodeError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}.")
        if not (self.temperature >= 0 and 0 < self.top_p <= 1):  # also refuses NaN, which fails every comparison
            raise EncodeError(
                f"temperature must be >= 0 and top_p in (0, 1]; got {self.temperature} and {self.top_p}.")
        get_task(self.task)


@dataclass(frozen=True)
class EncodeResult:
    """What one turn produced. `features` is None when the turn draws no image
    (`draw_mode` "never", or "auto" and the model never emitted <|IC|>)."""

    answer: str
    caption: str
    session: ChatSession  # the input session with this turn appended
    features: VLMFeatures | None
    draws_image: bool
    caption_start_forced: bool  # the encoder appended <|IC|> because the model did not emit it
    answer_token_ids: tuple[int, ...]
    caption_token_ids: tuple[int, ...]
    prompt_tokens: int
    reused_prompt_tokens: int  # of them, taken from the prefix cache instead of prefilled
    tokens_processed: int  # prompt - reused + answer + <|IC|> + caption + K, each fed to the LLM once
    dropped_turns: int  # oldest session turns left out of the prompt to fit the context


@dataclass(frozen=True)
class _Step:
    logits: torch.Tensor  # (V,) next-token logits after the step's last position
    final_hidden: torch.Tensor  # (H,) last-layer hidden state there (the LM head's input)
    layer_states: torch.Tensor | None  # (L_chosen, n, H) at the step's n positions, when read


class _KVDecoder:
    """Feeds a sequence to the VLM step by step over one KV cache. Counts the tokens the
    language model processes with a pre-hook on its first decoder layer, and reads the
    final hidden state with a pre-hook on the LM head."""

    def __init__(self, vlm: LoadedVLM, chosen_layers: Sequence[int]) -> None:
        self.vlm = vlm
        self.chosen_layers = tuple(chosen_layers)
        self.tokens_processed = 0
        self._cache: Any = None
        self._lm_head_input: torch.Tensor | None = None
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> _KVDecoder:
        self._hooks = [
            self.vlm.decoder_layers[0].register_forward_pre_hook(self._count_tokens, with_kwargs=True),
            self.vlm.output_embeddings.register_forward_pre_hook(self._keep_lm_head_input),
        ]
        return self

    def __exit__(self, *exc_info: object) -> None:
        for hook in self._hooks:
            hook.remove()

    def _count_tokens(self, module: Any, args: tuple, kwargs: dict) -> None:
        hidden_states = args[0] if args else kwargs["hidden_states"]
        self.tokens_processed += hidden_states.shape[-2]

    def _keep_lm_head_input(self, module: Any, args: tuple) -> None:
        self._lm_head_input = args[0]

    @property
    def kv_cache(self) -> Any:
        return self._cache

    def prefill(self, inputs: dict[str, Any], kv_cache: Any = None) -> _Step:
        """Feed the prompt's `inputs` after the positions `kv_cache` already holds (if any)."""
        self._cache = kv_cache
        return self._forward(read_layers=False, **inputs)

    def feed_token(self, token_id: int, *, read_layers: bool) -> _Step:
        return self._forward(read_layers, input_ids=torch.tensor([[token_id]], device=self.vlm.device))

    def feed_embeddings(self, embeddings: torch.Tensor, *, read_layers: bool) -> _Step:
        return self._forward(read_layers, inputs_embeds=embeddings[None])

    def _forward(self, read_layers: bool, **inputs: Any) -> _Step:
        if self.vlm.accepts_forward_argument("logits_to_keep"):
            inputs["logits_to_keep"] = 1
        cache_argument = self.vlm.cache_argument
        outputs = self.vlm.model(
            **inputs, **{cache_argument: self._cache}, use_cache=True, output_hidden_states=read_layers, return_dict=True
        )
        self._cache = getattr(outputs, cache_argument)
        layer_states = (
            torch.stack([outputs.hidden_states[layer][0] for layer in self.chosen_layers]) if read_layers else None
        )
        return _Step(outputs.logits[0, -1], self._lm_head_input[0, -1], layer_states)


class _Progress:
    """Calls `on_token(step, total)` after every token; the callback may raise to cancel."""

    def __init__(self, on_token: TokenCallback | None, total: int) -> None:
        self.on_token, self.total, self.step = on_token, total, 0

    def advance(self) -> None:
        self.step += 1
        if self.on_token is not None:
            self.on_token(self.step, self.total)

    def finish(self) -> None:
        self.step = self.total - 1
        self.advance()


@dataclass(frozen=True)
class _Sampler:
    """Greedy (temperature 0) or temperature + top-p sampling from a seeded local generator.
    The special token's score is appended to the logits; id `len(logits)` stands for it."""

    temperature: float
    top_p: float
    generator: torch.Generator

    def choose(self, step: _Step, special_embedding: torch.Tensor, banned: frozenset[int]) -> int:
        special_score = step.final_hidden @ special_embedding  # as if the output embedding were tied
        scores = torch.cat([step.logits.float().cpu(), special_score.float().cpu().view(1)])
        if banned:
            scores[list(banned)] = float("-inf")
        if self.temperature == 0:
            return int(scores.argmax())
        probabilities = torch.softmax(scores / self.temperature, dim=-1)
        if self.top_p < 1:
            sorted_probabilities, order = probabilities.sort(descending=True, stable=True)
            mass_before = sorted_probabilities.cumsum(0) - sorted_probabilities
            probabilities[order[mass_before >= self.top_p]] = 0  # nucleus: smallest set reaching top_p
        return int(torch.multinomial(probabilities, 1, generator=self.generator))


@dataclass
class _Segment:
    """The answer or the caption: its tokens and the hidden states read at them."""

    token_ids: list[int] = field(default_factory=list)
    final_hidden: list[torch.Tensor] = field(default_factory=list)  # (H,) per token
    layer_states: list[torch.Tensor] = field(default_factory=list)  # (L_chosen, 1, H) per token, when read
    special_emitted: bool = False  # ended because the model chose the special token


def _generate_segment(
    decoder: _KVDecoder,
    step: _Step,
    sampler: _Sampler,
    progress: _Progress,
    *,
    budget: int,
    end_ids: frozenset[int],
    special_embedding: torch.Tensor,
    special_allowed: bool,
    at_least_one_token: bool,
    read_layers: bool,
) -> _Segment:
    """Generate up to `budget` tokens after `step`, feeding each one once; stop at an end
    token or when the special token wins."""
    segment = _Segment()
    special_id = len(step.logits)
    while len(segment.token_ids) < budget:
        banned = frozenset() if special_allowed else frozenset({special_id})
        if at_least_one_token and not segment.token_ids:
            banned = banned | end_ids | {special_id}
        token = sampler.choose(step, special_embedding, banned)
        if token == special_id:
            segment.special_emitted = True
            break
        if token in end_ids:
            break
        segment.token_ids.append(token)
        progress.advance()
        step = decoder.feed_token(token, read_layers=read_layers)
        segment.final_hidden.append(step.final_hidden)
        if read_layers:
            segment.layer_states.append(step.layer_states)
    return segment


def text_marker_embeddings(vlm: LoadedVLM) -> torch.Tensor:
    """(2, H) stand-ins for `special_token_embeddings` when no adapter supplies trained
    ones: the mean input embedding of each marker's text tokens ("<|IC|>", "<|img|>")."""
    rows = []
    for marker in SPECIAL_TOKENS:
        token_ids = vlm.tokenizer(marker, add_special_tokens=False)["input_ids"]
        rows.append(vlm.input_embeddings.weight[token_ids].mean(0))
    return torch.stack(rows).detach()


def encode(
    vlm: LoadedVLM,
    session: ChatSession,
    prompt: str,
    images: Sequence[Image.Image | torch.Tensor] | None = None,
    *,
    readout: AdapterReadout,
    options: TurnOptions = TurnOptions(),
    on_token: TokenCallback | None = None,
    prefix_cache: PrefixCache | None = None,
) -> EncodeResult:
    """Run one turn: the user's `prompt` and `images` after `session`.

    When the prompt plus the generation budget exceeds the context, the oldest turns
    are left out (logged, `dropped_turns`). `on_token(step, total)` runs after every
    token and may raise to stop generation before the next forward. With a
    `prefix_cache`, the prompt prefix it holds from earlier turns is reused (only the
    rest is prefilled) and this turn's prompt is kept in it; the outputs are the same.
    """
    _check_readout(vlm, readout)
    draw_mode, max_new_tokens, num_image_tokens = options.draw_mode, options.max_new_tokens, readout.num_image_tokens
    caption_start, image_token = readout.special_token_embeddings.detach().to(vlm.device, vlm.dtype)
    new_turn = ChatTurn(prompt, tuple(image_to_png(image) for image in images or ()), task=options.task)
    answer_budget = 0 if draw_mode == "always" and not get_task(options.task).answer_first else max_new_tokens
    may_draw = draw_mode != "never"
    reserve = answer_budget + (1 + max_new_tokens + num_image_tokens if may_draw else 0)
    inputs, dropped_turns, prompt_images = _fit_context(vlm, session, new_turn, reserve)

    progress = _Progress(on_token, answer_budget + (max_new_tokens + 2 if may_draw else 0))
    sampler = _Sampler(options.temperature, options.top_p, torch.Generator().manual_seed(options.seed))

    with torch.no_grad(), _KVDecoder(vlm, readout.chosen_layers) as decoder:
        shared = dict(decoder=decoder, sampler=sampler, progress=progress, end_ids=vlm.eos_token_ids())
        vlm.reset_generation_state()
        prefill = plan_prefill(vlm, inputs, prompt_images, len(new_turn.images), prefix_cache)
        step = decoder.prefill(prefill.forward_inputs, prefill.kv_cache)

        answer = _generate_segment(  # y_res
            step=step, budget=answer_budget, special_embedding=caption_start, special_allowed=may_draw,
            at_least_one_token=False, read_layers=False, **shared,
        )
        draws = draw_mode == "always" or answer.special_emitted
        caption, features = _Segment(), None
        if draws:
            progress.advance()  # <|IC|>
            step = decoder.feed_embeddings(caption_start[None], read_layers=False)
            caption = _generate_segment(  # yhat_cap, ended by an end token, <|img|> or the budget
                step=step, budget=max_new_tokens, special_embedding=image_token, special_allowed=True,
                at_least_one_token=True, read_layers=True, **shared,
            )
            progress.finish()  # <|img|>×K, one step
            image_step = decoder.feed_embeddings(image_token.expand(num_image_tokens, -1), read_layers=True)
            features = _features(answer, caption, image_step.layer_states, prefill.new_image_features)
        elif draw_mode == "auto":
            logger.info("The VLM did not emit %s, so this turn draws no image (draw mode 'auto').", CAPTION_START)
        if prefix_cache is not None and prefill.units is not None:
            prefix_cache.store(prefill.units, decoder.kv_cache)

    answer_text, caption_text = _decode(vlm, answer.token_ids), _decode(vlm, caption.token_ids)
    return EncodeResult(
        answer=answer_text,
        caption=caption_text,
        session=session.with_turn(replace(new_turn, answer=answer_text, caption=caption_text)),
        features=features,
        draws_image=draws,
        caption_start_forced=draws and not answer.special_emitted,
        answer_token_ids=tuple(answer.token_ids),
        caption_token_ids=tuple(caption.token_ids),
        prompt_tokens=inputs["input_ids"].shape[1],
        reused_prompt_tokens=prefill.reused,
        tokens_processed=decoder.tokens_processed,
        dropped_turns=dropped_turns,
    )


def _check_readout(vlm: LoadedVLM, readout: AdapterReadout) -> None:
    info, layers = vlm.info, readout.chosen_layers
    expected = (len(SPECIAL_TOKENS), info.hidden_size)
    if tuple(readout.special_token_embeddings.shape) != expected:
        raise EncodeError(
            f"special_token_embeddings must be {expected} (rows {SPECIAL_TOKENS}, width of {info.name}), "
            f"got {tuple(readout.special_token_embeddings.shape)}; is the adapter made for this VLM?"
        )
    if not layers or any(not -(info.num_layers + 1) <= layer <= info.num_layers for layer in layers):
        raise EncodeError(
            f"chosen_layers {list(layers)} must be non-empty hidden-state indices from "
            f"{-(info.num_layers + 1)} to {info.num_layers} ({info.name} has {info.num_layers} layers)."
        )
    if readout.num_image_tokens < 1:
        raise EncodeError(f"num_image_tokens must be at least 1, got {readout.num_image_tokens}.")


def _fit_context(
    vlm: LoadedVLM, session: ChatSession, new_turn: ChatTurn, reserve: int
) -> tuple[BatchFeature, int, list[bytes]]:
    """Processor inputs of the longest recent history that leaves `reserve` tokens of
    context for generation; also how many turns were dropped and the prompt's images
    (PNG bytes, in prompt order)."""
    limit = vlm.info.max_context_length
    try:
        fitted = fit_prompt(vlm.processor, session.turns, new_turn, limit - reserve)
    except PromptTooLongError as error:
        raise ContextLengthError(
            f"The new turn alone needs {error.prompt_length} prompt tokens plus {reserve} for generation, more "
            f"than {vlm.info.name}'s context of {limit} tokens. Shorten the prompt, give fewer or smaller images, "
            "or lower max_new_tokens / the adapter's number of image tokens."
        ) from None
    if fitted.dropped_turns:
        logger.warning(
            "Left the %d oldest of %d session turns out of the prompt to fit %s's context of %d tokens.",
            fitted.dropped_turns, len(session.turns), vlm.info.name, limit,
        )
    return fitted.inputs, fitted.dropped_turns, fitted.images


def _features(
    answer: _Segment, caption: _Segment, image_layer_states: torch.Tensor, new_image_features: list[torch.Tensor]
) -> VLMFeatures:
    # h_l at t_{cap,img}: (1, L_chosen, n_cap + K, H)
    caption_hidden_states = torch.cat([*caption.layer_states, image_layer_states], dim=1)[None]
    batch_size, _, num_tokens, hidden_size = caption_hidden_states.shape
    device = caption_hidden_states.device
    # e_ans; zeros (with has_answer False) when the turn has no answer.
    answer_embedding = (
        torch.stack(answer.final_hidden).mean(0) if answer.token_ids else caption_hidden_states.new_zeros(hidden_size)
    )
    image_features = torch.cat(new_image_features)[None] if new_image_features else None  # f_img
    return VLMFeatures(
        caption_hidden_states=caption_hidden_states,
        caption_mask=torch.ones(batch_size, num_tokens, dtype=torch.bool, device=device),
        answer_embedding=answer_embedding[None],
        caption_embedding=torch.stack(caption.final_hidden).mean(0)[None],  # e_cap
        has_answer=torch.tensor([bool(answer.token_ids)], device=device),
        image_features=image_features,
        image_mask=(
            None if image_features is None else torch.ones(image_features.shape[:2], dtype=torch.bool, device=device)
        ),
    )


def _decode(vlm: LoadedVLM, token_ids: list[int]) -> str:
    return strip_markers(vlm.tokenizer.decode(token_ids, skip_special_tokens=True))
