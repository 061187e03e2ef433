"""The world's VLM: its config is checked before any work, an interrupted run resumes to
the same weights, the saved folder loads and generates through the pack's own path, it
learns, and its training samples never show a held-out (colour, shape) pair."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from m2chat_core.encoder import text_marker_embeddings
from m2chat_core.special_tokens import SPECIAL_TOKENS
from m2chat_core.vlm import load_vlm
from train.world import vlm_data
from train.world.__main__ import main
from train.world.comfyui import REPO
from train.world.config import VlmConfig
from train.world.language import caption, parse_caption
from train.world.judge import CELL_CLASSES, scene_labels
from train.world.loop import CHECKPOINT_NAME, _warmup_cosine
from train.world.render import render
from train.world.scenes import Scene, WorldObject, is_held_out
from train.world.vision_pretraining import VisionHeads, grey_draws, pictures, training_scenes, vision_loss
from train.world.vlm_data import KIND_WEIGHTS, describe_turns, training_turn, world_turn
from train.world.vlm_measure import generate, measure_vlm, measurement_turns
from train.world.vlm_model import build_world_vlm, marker_rows
from train.world.layout import SHIPPED, VLM_NAME
from train.world.vlm_training import FIGURES_FILE, SAVED_DTYPE, VlmTask, train_vlm, word_tokens
from train.world.vocabulary import COLOURS, HELD_OUT_PAIRS, POSITION_WORDS, SHAPES

TINY_VLM = dict(width=32, layers=1, vision_width=32, vision_layers=1, image_size=48, batch_size=2, steps=4,
                warmup_steps=1, checkpoint_every=2, evaluate_every=2, eval_images=1, vision_steps=1,
                vision_batch_size=2)
VISION_STEPS = 150


def _tiny_vlm(out: Path, **overrides) -> VlmConfig:
    return VlmConfig(out=str(out), **(TINY_VLM | overrides))


def _checkpoint_weights(run: Path) -> dict[str, torch.Tensor]:
    with safe_open(run / CHECKPOINT_NAME, framework="pt") as file:
        return {key: file.get_tensor(key) for key in file.keys() if key.startswith("model.")}  # noqa: SIM118


@pytest.mark.parametrize("flags, field", [
    (["--steps", "0"], "steps"),
    (["--width", "48"], "width"),
    (["--vision-layers", "0"], "vision_layers"),
    (["--image-size", "100"], "image_size"),
    (["--vision-steps", "8000"], "vision_steps"),  # not fewer than the 7000 steps
    (["--learning-rate", "fast"], "learning_rate"),
    (["--word-dropout", "1"], "word_dropout"),
    (["--attribute-weight", "0"], "attribute_weight"),
    (["--position-weight", "-2"], "position_weight"),
    (["--projector-vision-weight", "-1"], "projector_vision_weight"),
    (["--vision-grey", "1.5"], "vision_grey"),
    (["--cell-identity", "maybe"], "cell_identity"),
])
def test_a_bad_vlm_config_is_refused_before_any_work(tmp_path, capsys, flags, field):
    out = tmp_path / "run"
    assert main(["vlm", "--out", str(out), *flags]) == 2
    assert field in capsys.readouterr().err
    assert not out.exists()


def test_an_interrupted_vlm_run_resumes_to_the_same_weights(tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train_vlm(_tiny_vlm(whole))
    curve = train_vlm(_tiny_vlm(parts), stop_after=2)
    assert [point["step"] for point in curve] == [2] and not (parts / VLM_NAME).exists()
    curve = train_vlm(_tiny_vlm(parts))
    assert [point["step"] for point in curve] == [2, 4]
    expected, resumed = _checkpoint_weights(whole), _checkpoint_weights(parts)
    assert expected.keys() == resumed.keys()
    for name in expected:
        torch.testing.assert_close(resumed[name], expected[name], rtol=0, atol=1e-6)
    figures = json.loads((parts / FIGURES_FILE).read_text())
    assert {"caption_exact", "follow_up_resolved", "follow_up_exact"} <= figures["saved_folder"].keys()


def test_the_saved_folder_loads_offline_and_generates_through_the_pack(tmp_path):
    train_vlm(_tiny_vlm(tmp_path, steps=1, evaluate_every=1, vision_steps=0))
    vlm = load_vlm(tmp_path / VLM_NAME)
    assert vlm.dtype == SAVED_DTYPE
    trained = _checkpoint_weights(tmp_path)["model.vlm.model.language_model.embed_tokens.weight"]
    torch.testing.assert_close(vlm.input_embeddings.weight.float(), trained.to(SAVED_DTYPE).float(), rtol=0, atol=0)
    for marker in SPECIAL_TOKENS:  # the nodes' markers without an adapter are single trained tokens
        assert len(vlm.tokenizer(marker, add_special_tokens=False)["input_ids"]) == 1
    sample = describe_turns(0, 1)[0]
    result = generate(vlm, sample)
    assert result.draws_image and result.features is not None
    assert result.prompt_tokens > 9  # the picture's 9 patches, one per grid cell, and the text
    assert result.session.turns[-1].caption == result.caption


def test_the_markers_the_nodes_feed_are_the_rows_training_teaches():
    vlm = build_world_vlm(_tiny_vlm(Path("unused")))
    torch.testing.assert_close(text_marker_embeddings(vlm), marker_rows(vlm).detach(), rtol=0, atol=0)
    assert marker_rows(vlm).requires_grad


def test_the_vlm_learns_on_a_short_schedule(tmp_path):
    """Teacher-forced L_text on fresh batches falls well below its start within 30 steps;
    a model whose inputs or labels were misaligned would stay near it."""
    config = _tiny_vlm(tmp_path, width=64, batch_size=4, steps=30, warmup_steps=3, checkpoint_every=30,
                       evaluate_every=15, learning_rate=3e-3, vision_steps=0)
    # the first step's L_text is measured before any update, with or without the projector heads:
    # run without them, so that path reports L_text too
    first = train_vlm(_tiny_vlm(tmp_path / "untrained", steps=1, evaluate_every=1, vision_steps=0,
                                projector_vision_weight=0))[-1]
    last = train_vlm(config)[-1]
    assert last["text_loss"] < 0.5 * first["text_loss"]


def test_each_cells_targets_belong_to_the_patch_that_shows_it():
    """The tower's patch order (before any attention mixes them) is the targets' cell order."""
    vlm = build_world_vlm(_tiny_vlm(Path("unused")))
    empty = Scene("grey", ())
    for row, column in ((0, 2), (2, 0), (1, 1)):
        scene = Scene("grey", (WorldObject("red", "star", "large", row, column),))
        pixels = vlm.processor.image_processor([render(empty), render(scene)], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            embedded = vlm.model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[0][:, 1:]
        changed = (embedded[0] - embedded[1]).abs().amax(dim=-1).nonzero().flatten().tolist()
        shown = scene_labels([scene]).cell[0].nonzero().flatten().tolist()
        assert changed == shown == [row * 3 + column]


def test_the_vision_phase_teaches_the_tower_to_read_cells_and_then_freezes_it(tmp_path):
    config = _tiny_vlm(tmp_path, steps=VISION_STEPS + 2, vision_steps=VISION_STEPS, vision_batch_size=16,
                       learning_rate=3e-3, evaluate_every=VISION_STEPS, checkpoint_every=VISION_STEPS, eval_images=16,
                       cell_identity=True)
    curve = train_vlm(config, stop_after=VISION_STEPS)
    assert curve[-1]["vision_colour"] >= 0.6 and curve[-1]["vision_position"] >= 0.6  # chance: 1/8, about 0
    assert curve[-1]["vision_cell_identity"] >= 0.6  # chance: 1/9
    pretrained = _checkpoint_weights(tmp_path)
    train_vlm(config)
    trained = _checkpoint_weights(tmp_path)
    tower = [name for name in trained if ".vision_tower." in name]
    assert tower and all(torch.equal(trained[name], pretrained[name]) for name in tower)
    language = "model.vlm.model.language_model.embed_tokens.weight"
    assert not torch.equal(trained[language], pretrained[language])


def test_the_projector_heads_train_the_image_tokens_in_the_language_phase_only(tmp_path):
    config = _tiny_vlm(tmp_path, steps=3, vision_steps=1, projector_vision_weight=1.0, checkpoint_every=1)
    train_vlm(config, stop_after=1)
    after_vision = _checkpoint_weights(tmp_path)
    curve = train_vlm(config)
    trained = _checkpoint_weights(tmp_path)
    heads = [name for name in trained if name.startswith("model.projector_heads.")]
    initial = VlmTask(config).projector_heads.state_dict()
    assert heads and all(torch.equal(after_vision[name], initial[name.removeprefix("model.projector_heads.")])
                         for name in heads)
    assert all(not torch.equal(trained[name], after_vision[name]) for name in heads)
    assert curve[-1]["projector_vision_loss"] > 0
    tower = [name for name in trained if ".vision_tower." in name]
    assert all(torch.equal(trained[name], after_vision[name]) for name in tower)


def test_grey_pictures_are_seeded_keep_their_shapes_and_ask_no_colour():
    scenes = training_scenes(0, 0, 32)
    draws = grey_draws(0, 0, len(scenes), 0.5)
    assert 0 < sum(w is not None for w in draws) < len(scenes)
    assert all(w is None for w in grey_draws(0, 0, len(scenes), 0.0))
    assert [None if w is None else w.tolist() for w in grey_draws(0, 0, len(scenes), 0.5)] == \
        [None if w is None else w.tolist() for w in draws]
    for scene, weights, image in zip(scenes, draws, pictures(scenes, draws)):
        pixels, coloured = np.asarray(image, dtype=np.int16), np.asarray(render(scene), dtype=np.int16)
        if weights is None:
            assert np.array_equal(pixels, coloured)
        else:  # one shade per pixel; the object still stands apart from the background where it did
            assert np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2])
            assert np.abs(pixels[..., 0] - np.round(coloured @ weights)).max() <= 1
    heads = VisionHeads(16, cell_identity=True)
    features = torch.randn(len(scenes), 9, 16)
    vision_loss(heads, features, scenes, [True] * len(scenes)).backward()
    colour_rows = heads.cells.weight.grad[len(CELL_CLASSES):len(CELL_CLASSES) + len(COLOURS)]
    assert torch.count_nonzero(colour_rows) == 0 and torch.count_nonzero(heads.cells.weight.grad) > 0
    assert torch.count_nonzero(heads.cell_identity.weight.grad) > 0


def test_word_dropout_hides_written_colour_and_shape_words_only_and_is_seeded():
    task = VlmTask(_tiny_vlm(Path("unused"), word_dropout=0.5))
    samples = [training_turn(0, 0, index) for index in range(4)]
    batch = task._batch(samples)
    dropped = task._drop_pair_words(batch, torch.Generator().manual_seed(1))
    changed = dropped.input_ids != batch.input_ids
    pair_words = torch.isin(batch.input_ids, word_tokens(task.vlm, (*COLOURS, *SHAPES)))
    written = batch.answer_mask | batch.caption_mask
    assert changed.any() and not (changed & ~(written & pair_words)).any()
    assert (dropped.input_ids[changed] == task.vlm.tokenizer.pad_token_id).all()
    assert 0.2 < changed.sum() / (written & pair_words).sum() < 0.8
    assert torch.equal(dropped.labels, batch.labels)
    again = task._drop_pair_words(batch, torch.Generator().manual_seed(1))
    assert torch.equal(again.input_ids, dropped.input_ids)


def test_l_text_weighs_the_attribute_and_position_words_as_configured():
    task = VlmTask(_tiny_vlm(Path("unused"), attribute_weight=4.0, position_weight=3.0))
    expected = {"star": 4.0, "small": 4.0, "red": 1.0, "the": 1.0, "background": 1.0,
                **{word: 3.0 for word in POSITION_WORDS}}
    for word, weight in expected.items():
        token, = word_tokens(task.vlm, (word,))  # every world word is one token
        assert task.token_weights[token] == weight, word


def test_the_language_phase_gets_its_own_warmup_and_cosine():
    factor = _warmup_cosine(_tiny_vlm(Path("unused"), steps=20, vision_steps=10, warmup_steps=2).loop_settings())
    assert factor(0) == factor(10) == 0.5 and factor(1) == factor(11) == 1.0
    assert factor(9) < 0.2 and factor(19) < 0.2  # each phase anneals before it ends


@pytest.mark.parametrize("kind", sorted(KIND_WEIGHTS))
def test_training_turns_never_show_a_held_out_pair(monkeypatch, kind):
    pictured = []
    original = vlm_data.picture
    monkeypatch.setattr(vlm_data, "picture", lambda scene: pictured.append(scene) or original(scene))
    texts = []
    for index in range(40):
        sample = world_turn(kind, vlm_data.sample_rng(0, "train", "test-held-out", index), "train")
        assert not is_held_out(sample.scene)
        for turn in (*sample.history, sample.turn):
            texts += [turn.user_text, turn.answer, turn.caption]
    assert pictured or kind == "text_to_image"
    assert not any(is_held_out(scene) for scene in pictured)
    for colour, shape in HELD_OUT_PAIRS:
        assert not any(f"{colour} {shape}" in text for text in texts)


def test_training_turns_are_a_pure_function_of_seed_step_and_index():
    assert training_turn(3, 7, 1) == training_turn(3, 7, 1)
    assert training_turn(3, 7, 1) != training_turn(3, 8, 1)


def test_measured_pictures_are_held_out_and_their_captions_read_back():
    for sample in describe_turns(0, 20):
        assert is_held_out(sample.scene) and len(sample.scene.objects) == 1
        scene = parse_caption(sample.turn.caption)
        assert scene is not None and caption(scene) == sample.turn.caption
    assert parse_caption("a small red star somewhere") is None


def test_the_shipped_vlm_loads_offline_and_writes_world_captions_through_the_pack():
    """The committed folder through the pack's loader and encoder, on 32 held-out pictures
    and 32 test-split follow-ups: issue 15's VLM targets (caption exact >= 0.90, follow-ups
    resolved >= 0.85). Measured on these samples: 1.00 and 0.97 (train/world/RESULTS.md); greedy
    on fixed samples, so the figures move only with the weights or the code."""
    vlm = load_vlm(SHIPPED.vlm)
    result = generate(vlm, describe_turns(0, 1)[0])
    assert result.draws_image and not result.caption_start_forced  # it emits <|IC|> itself
    assert parse_caption(result.caption) is not None
    figures = measure_vlm(vlm, measurement_turns(0, 32))
    assert figures["caption_exact"] >= 0.90 and figures["follow_up_resolved"] >= 0.85, figures
    for attribute in ("colour", "shape", "size", "position"):  # measured 1.00 each
        assert figures[f"caption_{attribute}"] >= 0.90, attribute


def test_the_vlm_bench_reads_each_attribute_back_from_the_captions(capsys):
    spec = importlib.util.spec_from_file_location("bench_world_vlm", REPO / "bench" / "bench_world_vlm.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main([str(SHIPPED.vlm), "--pictures", "4", "--follow-ups", "2"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| VLM | held-out pictures: colour / shape / size / position |")
    cells = table[2].split(" | ")
    assert cells[0] == f"| {SHIPPED.vlm}" and len(cells[1].split(" / ")) == len(cells[2].split(" / ")) == 4
