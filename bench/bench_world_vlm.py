"""Where a world VLM's words go wrong: for each VLM folder, the greedy captions of
single-object pictures through the pack's encoder (train/world/vlm_measure.py), with each
attribute read back, on held-out pictures (a held-out (colour, shape) pair in each) and on
train-split pictures, and dialogue follow-ups resolved. The table of VLM recipes in
train/world/RESULTS.md ("Where the words go wrong") is this script's output.

    .venv/bin/python bench/bench_world_vlm.py [FOLDER ...] [--pictures 48] [--follow-ups 32]

FOLDER: a world VLM folder (default: the shipped one), e.g. RUN/m2chat-world-vlm of
`python -m train.world vlm --out RUN`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from m2chat_core.vlm import load_vlm  # noqa: E402
from train.world.layout import SHIPPED  # noqa: E402
from train.world.vlm_data import describe_turns, follow_up_turns  # noqa: E402
from train.world.vlm_measure import CAPTION_ATTRIBUTES, describe_scores, measure_vlm  # noqa: E402

SEED = 0  # the measurement's samples (the training run's own evaluation uses the same stream)


def row(folder: Path, pictures: int, follow_ups: int) -> list[str]:
    vlm = load_vlm(folder)
    turns = {"describe": describe_turns(SEED, pictures), "follow_up": follow_up_turns(SEED, follow_ups)}
    held_out = measure_vlm(vlm, turns)
    train = describe_scores(vlm, describe_turns(SEED, pictures, split="train"))
    def attributes(scores: dict[str, float]) -> str:
        return " / ".join(f"{scores[f'caption_{name}']:.2f}" for name in CAPTION_ATTRIBUTES)
    return [str(folder), attributes(held_out), attributes(train), f"{held_out['caption_exact']:.2f}",
            f"{train['caption_exact']:.2f}", f"{held_out['follow_up_resolved']:.2f}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", type=Path, default=[SHIPPED.vlm])
    parser.add_argument("--pictures", type=int, default=48, help="pictures to describe, per split")
    parser.add_argument("--follow-ups", type=int, default=32, help="test-split dialogue follow-ups")
    options = parser.parse_args(argv)
    attributes = " / ".join(CAPTION_ATTRIBUTES)
    print(f"| VLM | held-out pictures: {attributes} | train pictures: {attributes} | caption exact, held-out "
          f"| caption exact, train | follow-ups resolved |")
    print("|---" * 6 + "|")
    for folder in options.folders:
        print("| " + " | ".join(row(folder, options.pictures, options.follow_ups)) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
