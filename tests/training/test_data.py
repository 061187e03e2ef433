"""Training data: image-text shards, dialogue JSONL, target images with SDXL's ids, bad
samples set aside with their reason, and the MMDialog converter."""

from __future__ import annotations

import json
import logging
import random

import pytest
import torch
from PIL import Image

from m2chat_core.vlm import load_vlm
from train.data.batches import Collator, TrainingDataset
from train.data.dialogue import DialogueRecords
from train.data.images import prepare_target_image
from train.data.mmdialog import convert
from train.data.mmdialog import main as mmdialog_main
from train.data.samples import SkippedSample, TrainingSample
from train.data.shards import ImageTextShards
from train.tiny_assets import BAD_SAMPLES, TRAIN_PAIRS_PER_SHARD, write_shard


@pytest.fixture(scope="module")
def processor(assets):
    return load_vlm(assets / "vlm").processor


def _collator(processor, **overrides) -> Collator:
    options = dict(num_image_tokens=4, max_length=512, pad_token_id=3, max_answer_tokens=32, max_caption_tokens=32)
    return Collator(processor, **(options | overrides))


def test_target_image_records_sdxl_size_and_crop_ids():
    image = Image.new("RGB", (200, 100), (10, 20, 30))
    centre = prepare_target_image(image, 64, "center", random.Random(0))
    assert centre.pixels.shape == (3, 64, 64)
    assert torch.allclose(centre.pixels[:, 0, 0], torch.tensor([10, 20, 30]) / 127.5 - 1, atol=1e-2)
    # 200x100 -> 128x64; a centred 64 crop starts 32 px in: (orig h, orig w, top, left, target h, target w)
    assert centre.time_ids.tolist() == [100, 200, 0, 32, 64, 64]
    first = prepare_target_image(image, 64, "random", random.Random(5)).time_ids
    assert first.tolist() == prepare_target_image(image, 64, "random", random.Random(5)).time_ids.tolist()
    lefts = {prepare_target_image(image, 64, "random", random.Random(seed)).time_ids[3].item() for seed in range(20)}
    assert len(lefts) > 3 and all(0 <= left <= 64 for left in lefts)


def test_shard_with_corrupt_samples_yields_good_ones_and_named_skips(assets, processor):
    shards = ImageTextShards([assets / "shards" / "train-000000.tar"], resolution=64, crop="center", seed=0)
    samples = [shards.load(index, decode_target=True) for index in range(len(shards))]
    good = [sample for sample in samples if isinstance(sample, TrainingSample)]
    assert len(good) == TRAIN_PAIRS_PER_SHARD
    assert sorted(sample.reason for sample in samples if isinstance(sample, SkippedSample)) == sorted(BAD_SAMPLES)
    assert good[0].turn.task == "text_to_image" and good[0].turn.caption == good[0].turn.user_text
    assert good[0].target.pixels.shape == (3, 64, 64)

    dataset = TrainingDataset(shards)
    batch = _collator(processor)([dataset[index] for index in range(len(dataset) - 4, len(dataset))])
    assert len(batch) == 1 and batch.pixels.shape == (1, 3, 64, 64) and batch.time_ids.shape == (1, 6)
    assert sorted(sample.reason for sample in batch.skipped) == sorted(BAD_SAMPLES)
    assert batch.forced.input_ids.shape[0] == 1
    all_bad = _collator(processor)([dataset[index] for index in range(len(dataset) - 3, len(dataset))])
    assert len(all_bad) == 0 and batch.forced is not None and all_bad.forced is None


def test_json_caption_is_read_when_there_is_no_txt(tmp_path):
    shard = tmp_path / "json-only.tar"
    write_shard(shard, [("a green owl in the city", Image.new("RGB", (64, 64)))])
    import tarfile

    kept = tmp_path / "kept.tar"
    with tarfile.open(shard) as source, tarfile.open(kept, "w") as target:
        for member in source:
            if not member.name.endswith(".txt"):
                target.addfile(member, source.extractfile(member))
    sample = ImageTextShards([kept], resolution=64, crop="center", seed=0).load(0, decode_target=False)
    assert sample.turn.caption == "a green owl in the city"


def test_too_long_sample_is_skipped_and_the_rest_of_the_batch_kept(assets, processor):
    shards = ImageTextShards([assets / "shards" / "heldout-000000.tar"], resolution=64, crop="center", seed=0)
    long_caption = " ".join(["a red fox in the snow"] * 40)
    long_sample = TrainingSample("long", shards.load(0, decode_target=True).turn.__class__(
        user_text=long_caption, caption="a fox", task="text_to_image"))
    batch = _collator(processor, max_length=200)([shards.load(1, decode_target=False), long_sample])
    assert len(batch) == 1 and [sample.key for sample in batch.skipped] == ["long"]
    assert "cannot teacher-force" in batch.skipped[0].reason


def test_dialogue_records_give_history_turn_and_target(assets, processor):
    records = DialogueRecords(
        [assets / "dialogue" / "train.jsonl"], resolution=64, crop="center", seed=0, max_history_turns=2
    )
    samples = [records.load(index, decode_target=True) for index in range(len(records))]
    assert all(isinstance(sample, TrainingSample) for sample in samples)
    tasks = {sample.turn.task for sample in samples}
    assert tasks == {"text_to_image", "image_editing", "multimodal_dialogue"}
    dialogue = next(sample for sample in samples if sample.history)
    assert dialogue.history[0].images and dialogue.turn.answer.startswith("Here is")
    editing = next(sample for sample in samples if sample.turn.task == "image_editing")
    assert len(editing.turn.images) == 1 and editing.target.pixels.shape == (3, 64, 64)

    batch = _collator(processor)([dialogue, editing])
    assert batch.forced.new_image_counts == (0, 1) and batch.forced.image_counts == (1, 1)
    assert batch.forced.answer_mask.sum() > 0


def test_bad_dialogue_records_are_skipped_with_their_reason(tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    good_turn = {"user_text": "hi", "caption": "a cat"}
    lines = [
        "{not json",
        json.dumps({"turns": [{"user_text": "hi"}], "target_image": "ok.png"}),
        json.dumps({"turns": [{**good_turn, "images": ["gone.png"]}], "target_image": "ok.png"}),
        json.dumps({"turns": [good_turn], "target_image": "broken.png"}),
        json.dumps({"turns": [good_turn]}),
        json.dumps({"turns": [good_turn], "target_image": "ok.png", "task": "juggling"}),
        json.dumps({"turns": [good_turn], "target_image": "ok.png"}),
    ]
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    records = DialogueRecords([tmp_path / "data.jsonl"], resolution=32, crop="center", seed=0, max_history_turns=4)
    results = [records.load(index, decode_target=True) for index in range(len(records))]
    reasons = [result.reason if isinstance(result, SkippedSample) else "ok" for result in results]
    assert reasons[:5] == ["invalid JSON", "missing caption", "missing image file", "unreadable image",
                           "missing target image"]
    assert reasons[5].startswith("invalid turn") and "juggling" in reasons[5]
    assert reasons[6] == "ok"


def _mmdialog_fixture(folder):
    images = folder / "images"
    images.mkdir()
    for key in ("m1", "m2", "m3", "m5"):
        Image.new("RGB", (40, 40), (200, 0, 0)).save(images / f"{key}.jpg")
    text = lambda value: {"__TEXT__": value}  # noqa: E731
    media = lambda key, caption=None: {"__MEDIA__": key, **({"caption": caption} if caption else {})}  # noqa: E731
    dialogues = [
        {"conversation": [{"turn": [text("hello there")]}, {"turn": [text("look at my cat"), media("m1")]},
                          {"turn": [text("so cute!")]}, {"turn": [text("another one"), media("m2", "a red cat")]}]},
        {"conversation": [{"turn": [text("hi")]}, {"turn": [text("see"), media("m3")]}]},  # no caption for m3
        {"conversation": [{"turn": [text("hi")]}, {"turn": [text("see"), media("m4", "a dog")]}]},  # no m4.jpg
        {"conversation": [{"turn": [text("hi")]}, {"turn": [text("no pictures here")]}]},
        {"conversation": "broken"},
    ]
    (folder / "conversations.json").write_text(json.dumps(dialogues))
    (folder / "captions.jsonl").write_text(json.dumps({"media_key": "m1", "caption": "a small cat"}) + "\n")
    return folder / "conversations.json", images


def test_mmdialog_converter_keeps_image_replies_and_reports_drops(tmp_path):
    conversations, images = _mmdialog_fixture(tmp_path)
    out = tmp_path / "out" / "mmdialog.jsonl"
    report = convert([conversations], images, out, tmp_path / "captions.jsonl", max_history_turns=4)
    assert (report.dialogues, report.kept_dialogues, report.records) == (5, 1, 2)
    assert dict(report.dropped_dialogues) == {
        "no caption for the reply's image": 1, "image file missing": 1,
        "no image reply after the first turn": 1, "malformed dialogue": 1,
    }
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records[0]["turns"] == [{"user_text": "hello there", "images": [], "answer": "look at my cat",
                                    "caption": "a small cat"}]
    assert records[1]["turns"][-1]["caption"] == "a red cat" and len(records[1]["turns"]) == 2
    assert records[1]["turns"][0]["caption"] == "a small cat"  # the history keeps the earlier image's caption

    samples = DialogueRecords([out], resolution=32, crop="center", seed=0, max_history_turns=4)
    loaded = [samples.load(index, decode_target=True) for index in range(len(samples))]
    assert all(isinstance(sample, TrainingSample) for sample in loaded)
    # As in a live session, an earlier drawn image lives on as its caption, not as an input image.
    assert loaded[1].history[0].caption == "a small cat" and not loaded[1].history[0].images
    assert loaded[1].turn.caption == "a red cat"


def test_mmdialog_command_logs_the_report(tmp_path, caplog):
    conversations, images = _mmdialog_fixture(tmp_path)
    out = tmp_path / "mm.jsonl"
    with caplog.at_level(logging.INFO, logger="train.data.mmdialog"):
        status = mmdialog_main([str(conversations), "--images", str(images), "--out", str(out),
                                "--captions", str(tmp_path / "captions.jsonl")])
    assert status == 0
    assert "kept 1 of 5 dialogues (2 records); dropped 4 dialogues" in caplog.text
