"""The shapes world's data: same seed, same bytes; no held-out (colour, shape) pair in
training; every file readable by train/'s own readers."""

from __future__ import annotations

import json
import random
import re
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest
from world_graphs import (ENCODE_ROWS, Sampling, dialogue_cases, edit_cases, encode_row_graph, fixed_gate_row,
                          graph_for, prompt_cases, story_cases, world_workflow)

from train.data.dialogue import DialogueRecords
from train.data.samples import TrainingSample
from train.data.shards import ImageTextShards
from train.world.dataset import SplitSizes, write_dataset
from train.world.language import caption, parse_caption
from train.world.render import png_bytes, render
from train.world.scenes import Scene, apply_edit, is_held_out, possible_edits, random_scene
from train.world.vocabulary import COLOURS, HELD_OUT_PAIRS, SHAPES

SIZES = {"train": SplitSizes(images=24, dialogues=6, edits=8, stories=3),
         "validation": SplitSizes(images=12, dialogues=6, edits=6, stories=2),
         "test": SplitSizes(images=12, dialogues=6, edits=6, stories=2)}
JSONL_FILES = ("text_to_image", "dialogue", "editing", "stories")


def _write(folder: Path, seed: int) -> Path:
    return write_dataset(folder, seed, SIZES, shard_size=10)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return _write(tmp_path_factory.mktemp("world") / "data", seed=0)


def _records(world: Path, split: str, name: str) -> list[dict]:
    return [json.loads(line) for line in (world / split / f"{name}.jsonl").read_text().splitlines()]


def _shard_entries(world: Path, split: str) -> list[dict]:
    entries = []
    for shard in sorted((world / split / "shards").glob("*.tar")):
        with tarfile.open(shard) as archive:
            entries += [json.load(archive.extractfile(m)) for m in archive if m.name.endswith(".json")]
    return entries


def _named_pairs(text: str) -> set[tuple[str, str]]:
    colours, shapes = "|".join(COLOURS), "|".join(SHAPES)
    return set(re.findall(rf"\b({colours}) ({shapes})\b", text))


def test_same_seed_gives_the_same_bytes_and_another_seed_other_data(world, tmp_path):
    again = _files(_write(tmp_path / "again", seed=0))
    assert again == _files(world)
    other = _files(_write(tmp_path / "other", seed=1))
    assert other.keys() == again.keys()
    assert sum(other[name] != again[name] for name in again) > len(again) // 2


def test_rendering_is_a_pure_function_of_the_scene():
    scene = random_scene(random.Random(5), "train")
    assert png_bytes(render(scene)) == png_bytes(render(Scene.from_dict(scene.to_dict())))


def _scenes_and_texts(world: Path, split: str) -> tuple[list[Scene], list[str]]:
    scenes = [Scene.from_dict(entry["scene"]) for entry in _shard_entries(world, split)]
    texts = [entry["caption"] for entry in _shard_entries(world, split)]
    for name in JSONL_FILES:
        for record in _records(world, split, name):
            scenes.append(Scene.from_dict(record["target_scene"]))
            if "source_scene" in record:
                scenes.append(Scene.from_dict(record["source_scene"]))
            texts += [turn[key] for turn in record["turns"] for key in ("user_text", "answer", "caption")]
    return scenes, texts


@pytest.mark.parametrize("split", ["train", "validation"])
def test_no_held_out_pair_anywhere_in_the_training_or_validation_split(world, split):
    scenes, texts = _scenes_and_texts(world, split)
    assert len(scenes) > 40
    assert not any(is_held_out(scene) for scene in scenes)
    assert not set().union(*map(_named_pairs, texts)) & HELD_OUT_PAIRS
    if split == "train":  # ... while every colour and every shape is still seen in training
        seen = {(o.colour, o.shape) for scene in scenes for o in scene.objects}
        assert {colour for colour, _ in seen} == set(COLOURS) and {shape for _, shape in seen} == set(SHAPES)


def test_the_validation_split_draws_other_scenes_than_training(world):
    """Its own random streams: new scenes of the seen pairs, not copies of training samples."""
    train, _ = _scenes_and_texts(world, "train")
    validation, _ = _scenes_and_texts(world, "validation")
    assert sum(scene not in train for scene in validation) > len(validation) // 2


def test_every_test_target_shows_a_held_out_pair(world):
    targets = [Scene.from_dict(entry["scene"]) for entry in _shard_entries(world, "test")]
    for name in JSONL_FILES:
        targets += [Scene.from_dict(record["target_scene"]) for record in _records(world, "test", name)]
    assert targets and all(is_held_out(scene) for scene in targets)


def test_the_benchmark_draws_test_cases_of_held_out_pairs_and_validation_cases_of_seen_ones():
    """bench/bench_world.py's cases: in the test split the picture asked for shows a held-out
    pair; in the validation split, where recipes are chosen, no held-out pair is named or shown
    anywhere. Both seeded, each split its own cases."""
    for cases_of in (prompt_cases, edit_cases, dialogue_cases):
        test, validation = cases_of(16), cases_of(16, split="validation")
        assert cases_of(16, split="validation") == validation and cases_of(16) == test
        assert all(is_held_out(case.truth) for case in test)
        shown = [scene for case in validation for scene in (case.truth, case.source, *case.earlier) if scene]
        assert len(shown) >= 16 and not any(is_held_out(scene) for scene in shown)
        assert not set().union(*(_named_pairs(" ".join(case.turns)) for case in validation)) & HELD_OUT_PAIRS
    test, validation = story_cases(16), story_cases(16, split="validation")
    assert all((case.colour, case.shape) in HELD_OUT_PAIRS for case in test)
    assert not any((case.colour, case.shape) in HELD_OUT_PAIRS for case in validation)
    assert not set().union(*(_named_pairs(case.premise) for case in validation)) & HELD_OUT_PAIRS
    with pytest.raises(ValueError, match="choose one of"):
        prompt_cases(1, split="train")


def test_a_fixed_gate_row_draws_every_turn_with_that_gate():
    """bench_world.py --gate G: each M2ChatEncode of a dialogue's graph has its gate fixed at G;
    the two ends are the table's own rows; a gate outside [0, 1] is refused."""
    name, row = fixed_gate_row(0.75)
    graph = encode_row_graph(row, dialogue_cases(1)[0], seed=0, source_image=None)
    encodes = [node["inputs"] for node in graph.values() if node["class_type"] == "M2ChatEncode"]
    assert name == "m2chat_gate0.75" and len(encodes) == 3
    assert all((inputs["gate_mode"], inputs["gate_value"]) == ("fixed", 0.75) for inputs in encodes)
    assert dict([fixed_gate_row(0), fixed_gate_row(1)]) == {
        row: ENCODE_ROWS[row] for row in ("m2chat_gate0", "m2chat_gate1")}
    with pytest.raises(ValueError, match="between 0 and 1"):
        fixed_gate_row(1.5)


def test_captions_name_every_object_and_edits_change_only_what_they_say():
    scene = Scene.from_dict({"background": "grey", "objects": [
        {"colour": "red", "shape": "star", "size": "small", "row": 0, "column": 0, "offset": [0, 0]}]})
    assert caption(scene) == "a small red star at the top left on a grey background"
    moved = {edit.value: apply_edit(scene, edit) for edit in possible_edits(scene) if edit.kind == "move"}
    assert set(moved) == {"right", "down"}  # left and up would leave the grid
    assert caption(moved["right"]) == "a small red star at the top on a grey background"


def test_a_canonical_caption_parses_back_to_its_scene_and_other_text_does_not():
    rng = random.Random(0)
    for _ in range(50):
        scene = random_scene(rng, "any")
        centred = Scene(scene.background, tuple(replace(obj, offset=(0, 0)) for obj in scene.objects))
        assert parse_caption(caption(scene)) == centred
    text = "a large blue square in the middle and a small red star at the top left on a white background"
    assert parse_caption(text).objects[1].cell == (0, 0)
    for text in ("", "a large blue blob in the middle on a white background", "a large blue square in the middle",
                 "a large blue square in the middle on a white backgro"):
        assert parse_caption(text) is None


def test_shards_read_by_the_stage1_reader(world):
    shards = sorted((world / "train" / "shards").glob("*.tar"))
    assert len(shards) == 3  # 24 samples, 10 per shard
    dataset = ImageTextShards(shards, resolution=128, crop="center", seed=0)
    assert len(dataset) == SIZES["train"].images
    entries = _shard_entries(world, "train")
    for index in (0, 23):
        sample = dataset.load(index, decode_target=True)
        assert isinstance(sample, TrainingSample)
        assert sample.turn.caption == entries[index]["caption"]
        assert sample.target.pixels.shape == (3, 128, 128)


@pytest.mark.parametrize("name", JSONL_FILES)
def test_jsonl_read_by_the_stage2_reader(world, name):
    path = world / "train" / f"{name}.jsonl"
    dataset = DialogueRecords([path], resolution=128, crop="center", seed=0, max_history_turns=4)
    records = _records(world, "train", name)
    assert len(dataset) == len(records) > 0
    samples = [dataset.load(index, decode_target=True) for index in range(len(dataset))]
    assert all(isinstance(sample, TrainingSample) for sample in samples)
    for sample, record in zip(samples, records):
        assert sample.turn.task == record["task"]
        assert sample.turn.caption == caption(Scene.from_dict(record["target_scene"]))
        assert len(sample.history) == len(record["turns"]) - 1
    if name == "dialogue":  # follow-ups need the context: "it" and the previous picture
        follow_ups = [s for s in samples if s.history]
        assert follow_ups and all(len(s.turn.images) == 1 for s in follow_ups)
    if name == "stories":
        assert {len(s.history) for s in samples} == {0, 1, 2, 3}


def test_every_world_graph_draws_with_the_tables_protocol():
    """The bench's rows and the demo's workflows on the world sample as the protocol says
    (train/world/sdxl.py: sampler, scheduler, steps, guidance), so the tables and the demo agree."""
    protocol = Sampling()
    expected = {"sampler_name": protocol.sampler, "scheduler": protocol.scheduler, "steps": protocol.steps,
                "cfg": protocol.cfg}
    case = prompt_cases(1)[0]
    graphs = [graph_for(row, case, seed=0, source_image=None) for row in ("zero", "caption", *ENCODE_ROWS)]
    shared = {"sampler": {"class_type": "KSampler", "inputs": {
        "seed": 0, "steps": 25, "cfg": 5.0, "sampler_name": "dpmpp_2m", "scheduler": "karras", "denoise": 1.0}}}
    graphs.append(world_workflow(shared, texts=()))
    samplers = [node["inputs"] for graph in graphs for node in graph.values() if node["class_type"] == "KSampler"]
    assert len(samplers) == len(graphs)
    assert all({key: inputs[key] for key in expected} == expected for inputs in samplers)
