"""bench/bench_world_objects.py: each kind of object counted apart, on the shipped models."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import numpy as np

from train.world.judge import to_tensor
from train.world.language import caption
from train.world.layout import SHIPPED
from train.world.render import render
from train.world.training import load_judge
from train.world.vocabulary import COLOURS

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("bench_world_objects", REPO / "bench" / "bench_world_objects.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def _recoloured_second(scene):
    """The scene with its second object (if any) in another colour."""
    if len(scene.objects) == 1:
        return scene
    first, second = scene.objects
    other = next(colour for colour in COLOURS if colour != second.colour)
    return replace(scene, objects=(first, replace(second, colour=other)))


def test_each_kind_of_object_is_counted_apart():
    """The scenes' own pictures are read right in every kind; with the second object of each
    two-object scene drawn in another colour, only that kind's colour (and both) falls, and
    each two-object scene counts half right."""
    judge, scenes = load_judge(SHIPPED.judge), bench.scenes_of("test", 12)
    kinds = {len(scene.objects) for scene in scenes}
    assert kinds == {1, 2}, kinds
    own = bench.object_accuracy(judge, to_tensor([render(scene) for scene in scenes]), scenes)
    assert own == {**{kind: {"colour": 1.0, "shape": 1.0, "both": 1.0} for kind in bench.KINDS},
                   "per case": {"both": 1.0}}
    recoloured = to_tensor([render(_recoloured_second(scene)) for scene in scenes])
    figures = bench.object_accuracy(judge, recoloured, scenes)
    assert figures["two objects: second"] == {"colour": 0.0, "shape": 1.0, "both": 0.0}
    assert figures["two objects: first"] == figures["one object"] == {"colour": 1.0, "shape": 1.0, "both": 1.0}
    two = sum(len(scene.objects) == 2 for scene in scenes)
    assert figures["per case"]["both"] == (len(scenes) - two + two / 2) / len(scenes)


def test_the_bench_prints_a_row_per_split_and_source(capsys):
    assert bench.main(["--scenes", "2", "--steps", "1", "--guidance", "2", "5"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| test") or
            line.startswith("| validation")]
    assert [row.split(" | ")[1] for row in rows] == ["VAE round trip", "UNet, guidance 2", "UNet, guidance 5"] * 2


def test_a_reversed_caption_names_the_second_object_first_and_draws_the_same_picture():
    """--caption-order reversed: the caption of a two-object scene names its objects the other
    way round, its picture (what the judge compares with) is the same, and the objects keep
    their kinds in the table."""
    for scene in bench.scenes_of("test", 12):
        turned = bench.captioned_as(scene, "reversed")
        assert bench.captioned_as(scene, "scene") == scene
        if len(scene.objects) == 1:
            assert turned == scene
            continue
        first, second = caption(scene).removesuffix(f" on a {scene.background} background").split(" and ")
        assert caption(turned) == f"{second} and {first} on a {scene.background} background"
        assert np.array_equal(np.asarray(render(turned)), np.asarray(render(scene)))


def test_the_bench_names_the_reversed_captions_rows(capsys):
    assert bench.main(["--scenes", "2", "--steps", "1", "--caption-order", "reversed"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| test")]
    assert [row.split(" | ")[1] for row in rows] == ["VAE round trip", f"UNet, guidance {bench.GUIDANCE:g}, caption reversed"]
