"""Seeded tiny LLaVA-1.5-style VLM, saved as a Hugging Face `save_pretrained` folder.

The folder is what users download for a real LLaVA-1.5 (config.json, safetensors
weights, a fast tokenizer, a LlavaProcessor with a chat template), so the loading and
encoding code paths are the real ones. Everything is deterministic: the tokenizer is
trained on a fixed generated corpus and the weights come from `seed`, so two builds
with the same seed are byte-identical.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

logger = logging.getLogger(__name__)

UNK, BOS, EOS, PAD, IMAGE = "<unk>", "<s>", "</s>", "<pad>", "<image>"
SPECIAL_TOKENS = (UNK, BOS, EOS, PAD, IMAGE)  # their ids are 0..4, in this order
TOKENIZER_VOCAB_SIZE = 1000



@dataclass(frozen=True)
class VisionTower:
    """The CLIP vision tower: `image_size` px inputs cut into `patch_size` px patches, one
    image token per patch (CLS dropped, "default" strategy), read at `feature_layer`."""

    image_size: int = 32
    patch_size: int = 8
    hidden_size: int = 32
    intermediate_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    feature_layer: int = -2

    @property
    def num_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


DEFAULT_VISION = VisionTower()  # 32 px images, 8 px patches -> 16 image tokens
# LLaVA-1.5's CLIP ViT-L/14 at 336 px: 576 image tokens, read at the penultimate layer.
LLAVA_15_VISION = VisionTower(image_size=336, patch_size=14, hidden_size=1024, intermediate_size=4096,
                              num_layers=24, num_heads=16)
NUM_IMAGE_TOKENS = DEFAULT_VISION.num_image_tokens

# LLaVA-1.5's "USER: <image>\n... ASSISTANT: ...</s>" format, with text/image content parts.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% elif message['role'] == 'assistant' %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}</s>{% endif %} "
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@dataclass(frozen=True)
class TinyVLMPreset:
    """LLM widths of a preset (the vision tower and tokenizer are chosen separately)."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    dtype: torch.dtype  # dtype of the saved weights


PRESETS = {
    # ~0.3M parameters, ~1 MB on disk, builds in about a second.
    "tiny": TinyVLMPreset(64, 128, 4, 4, 2, torch.float32),
    # ~0.52B parameters, ~1.0 GB in bfloat16: the memory benchmark's stand-in for a 7B VLM.
    "bench-1gb": TinyVLMPreset(2048, 5632, 10, 16, 16, torch.bfloat16),
    # LLaVA-1.5-7B's Vicuna-7B widths (6.5 B parameters with this tokenizer's vocabulary; 6.7 B
    # with LLaMA's 32000 tokens): with LLAVA_15_VISION, the paper's VLM at real size, random.
    "llava-1.5-7b": TinyVLMPreset(4096, 11008, 32, 32, 32, torch.bfloat16),
}

_WORDS = {  # slot -> choices; sentences are templates filled from these lists
    "colour": "red blue green yellow white black orange purple grey golden pink brown silver violet crimson",
    "animal": "cat dog fox horse rabbit owl bear duck whale tiger mouse deer squirrel penguin dragon "
    "elephant giraffe turtle parrot wolf lion monkey frog butterfly",
    "person": "girl boy farmer painter sailor teacher princess knight baker child grandmother wizard "
    "musician doctor gardener",
    "place": "forest garden beach city river mountain kitchen meadow castle harbour village desert library "
    "market island bridge valley station cave lighthouse",
    "object": "ball hat boat lamp book kite cup chair flower umbrella apple basket candle guitar mirror "
    "bicycle ladder blanket clock map balloon",
    "action": "runs sleeps jumps sits plays swims waits dances reads sings climbs laughs flies hides "
    "wanders paints whispers",
    "adjective": "small happy old brave quiet tall curious tired bright gentle clever shiny fluffy ancient "
    "lonely cheerful enormous sleepy",
    "time": "dawn morning noon evening night winter summer spring autumn midnight sunset sunrise",
    "weather": "rain snow fog wind sunshine storm clouds",
    "food": "bread cheese soup cake honey carrots berries pie tea noodles",
    "name": "Ada Bruno Clara Dmitri Elena Felix Greta Hugo Iris Jonas Kira Leo Mira Nico Olga Pablo Rosa Tomas",
    "vehicle": "train bus tram ship wagon rocket scooter carriage tractor submarine",
    "feeling": "joyful worried surprised proud nervous grateful excited peaceful",
}
_TEMPLATES = [
    "A {colour} {animal} {action} in the {place} one {time}.",
    "The {adjective} {animal} found a {colour} {object} near the {place}.",
    "Once upon a time, a {adjective} {person} lived by the {place} with a {colour} {object}.",
    "USER: What colour is the {object}? ASSISTANT: The {object} is {colour}.",
    "Draw a picture of a {adjective} {animal} holding a {colour} {object} in the {weather}.",
    "In this image, a {person} {action} next to a {colour} {object}.",
    "The {place} looks {adjective} in the {weather}, and a {animal} {action} there.",
    "Then the {animal} picked up the {object} and walked to the {place}.",
    "Every {time}, the {person} shared {food} with a {adjective} {animal}.",
    "Describe the scene: {weather} over the {place}, a {colour} {object} and a {animal}.",
    "Can you show me a {person} eating {food} in the {place}?",
    "The story ends when the {animal} and the {person} sail home through the {weather}.",
    "{name} took the {vehicle} to the {place} and felt {feeling}.",
    "After the {weather}, {name} and a {adjective} {animal} rode a {colour} {vehicle} one {time}.",
]


def english_corpus(num_sentences: int = 700) -> list[str]:
    """A fixed list of simple English sentences about scenes, animals, colours and stories."""
    rng = random.Random(0)  # fixed: the tokenizer does not depend on the weight seed
    words = {slot: choices.split() for slot, choices in _WORDS.items()}
    return [
        _TEMPLATES[index % len(_TEMPLATES)].format(**{slot: rng.choice(options) for slot, options in words.items()})
        for index in range(num_sentences)
    ]


def train_byte_level_bpe(
    vocab_size: int = TOKENIZER_VOCAB_SIZE,
    corpus: Sequence[str] | None = None,
    extra_special_tokens: Sequence[str] = (),
) -> Tokenizer:
    """Byte-level BPE (GPT-2 style) trained on `corpus` (default `english_corpus()`), `<s>`
    prepended. SPECIAL_TOKENS are ids 0-4, `extra_special_tokens` the ids after them.

    Repeatable: every initial symbol is in the fixed byte alphabet, so ties between
    equally frequent merges always break the same way.
    """
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[*SPECIAL_TOKENS, *extra_special_tokens],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(english_corpus() if corpus is None else corpus, trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return tokenizer


DEFAULT_MAX_CONTEXT = 512


def tiny_vlm_config(
    preset: str | TinyVLMPreset, vocab_size: int, max_context: int = DEFAULT_MAX_CONTEXT,
    vision: VisionTower = DEFAULT_VISION,
) -> LlavaConfig:
    """LlavaConfig of a preset (a name in PRESETS or widths): a LLaMA text model and a CLIP vision tower."""
    llm = _preset(preset)
    ids = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    text_config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=llm.hidden_size,
        intermediate_size=llm.intermediate_size,
        num_hidden_layers=llm.num_layers,
        num_attention_heads=llm.num_heads,
        num_key_value_heads=llm.num_kv_heads,
        max_position_embeddings=max_context,
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        pad_token_id=ids[PAD],
        tie_word_embeddings=False,
    )
    vision_config = CLIPVisionConfig(
        image_size=vision.image_size,
        patch_size=vision.patch_size,
        hidden_size=vision.hidden_size,
        intermediate_size=vision.intermediate_size,
        num_hidden_layers=vision.num_layers,
        num_attention_heads=vision.num_heads,
        projection_dim=vision.hidden_size,
    )
    return LlavaConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_index=ids[IMAGE],
        image_seq_length=vision.num_image_tokens,
        vision_feature_select_strategy="default",
        vision_feature_layer=vision.feature_layer,
        dtype=llm.dtype,
    )


def _preset(preset: str | TinyVLMPreset) -> TinyVLMPreset:
    if isinstance(preset, TinyVLMPreset):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"Unknown tiny VLM preset {preset!r}; choose one of {sorted(PRESETS)}.")
    return PRESETS[preset]


def _processor(tokenizer: Tokenizer, max_context: int, vision: VisionTower) -> LlavaProcessor:
    fast_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        padding_side="left",  # generation appends on the right
        model_max_length=max_context,
    )
    size = vision.image_size
    image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=fast_tokenizer,
        patch_size=vision.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE,
    )


def build_tiny_vlm(
    out_dir: str | Path,
    *,
    seed: int = 0,
    preset: str | TinyVLMPreset = "tiny",
    max_context: int = DEFAULT_MAX_CONTEXT,
    vision: VisionTower = DEFAULT_VISION,
    tokenizer: Tokenizer | None = None,
    device: str = "cpu",
) -> Path:
    """Write a seeded LLaVA-1.5-style VLM folder to `out_dir` and return its path.

    Loads with `AutoModelForImageTextToText` / `AutoProcessor` (`local_files_only=True`).
    Presets (see `PRESETS`): "tiny" (4-layer LLaMA, width 64, float32, ~1 MB, ~1 s) and
    "bench-1gb" (10 layers, width 2048, bfloat16, ~1 GB, ~15 s on 2 cores, for memory
    benchmarks). Both share a byte-level BPE tokenizer of ~940 tokens (`<unk> <s> </s>
    <pad> <image>` are ids 0-4) and a 32 px CLIP vision tower giving 16 image tokens;
    a caller may pass its own widths (a TinyVLMPreset), `vision` tower and `tokenizer`
    (with SPECIAL_TOKENS as ids 0-4). `max_context` is the language model's context in
    tokens. Same seed, byte-identical files. `device`: where the weights are drawn ("cuda"
    for the 7B preset, many times faster than the CPU; its draws differ from the CPU's).
    """
    out_dir = Path(out_dir)
    tokenizer = tokenizer or train_byte_level_bpe()
    config = tiny_vlm_config(preset, vocab_size=tokenizer.get_vocab_size(), max_context=max_context, vision=vision)
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG alone
        torch.manual_seed(seed)
        with torch.device(device):
            model = LlavaForConditionalGeneration(config)
    model.to(_preset(preset).dtype).save_pretrained(out_dir)
    _processor(tokenizer, max_context, vision).save_pretrained(out_dir)
    logger.info("Built tiny VLM %r (seed %d) in %s", preset, seed, out_dir)
    return out_dir
