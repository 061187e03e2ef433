"""The shapes world's SDXL measured as users run it: a real ComfyUI server (this pack and
the test/demo extension), native graphs (scripts/world_graphs.py), pictures read by the
shipped judge. Rows, on the same held-out (colour, shape) prompts and seeds:

  zero      conditioning zeroed out: what the UNet draws unprompted (expect chance)
  caption   the ground-truth caption through the world's text encoders (the upper bound)
  fallback  the world VLM's caption of the request through the same encoders (VLM + SD)

Columns: the judge's per-attribute accuracy; colour_and_shape: both right on the same
object; all: every attribute of the scene right. Exits 1 when a target (TARGETS in
scripts/world_graphs.py, issue 15) is missed.

    .venv/bin/python bench/bench_world.py [--prompts 64] [--rows zero,caption,fallback] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from comfyui_env import ComfyServer, prepare_base_directory  # noqa: E402
from world_graphs import CONDITIONINGS, held_out_prompts, measure, missed_targets  # noqa: E402

from train.world.layout import SHIPPED  # noqa: E402
from train.world.training import load_judge  # noqa: E402


def table(figures: dict[str, dict[str, float]]) -> str:
    columns = list(next(iter(figures.values())))
    lines = ["| conditioning | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {row} | " + " | ".join(f"{values[c]:.3f}" for c in columns) + " |" for row, values in figures.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--rows", default=",".join(CONDITIONINGS))
    parser.add_argument("--json", type=Path)
    options = parser.parse_args(argv)
    rows = options.rows.split(",")
    judge = load_judge(SHIPPED.judge)
    prompts = held_out_prompts(options.prompts)
    with tempfile.TemporaryDirectory() as base:
        server = ComfyServer(prepare_base_directory(Path(base)))
        try:
            figures = {row: measure(server, judge, row, prompts) for row in rows}
        finally:
            server.stop()
    print(f"{options.prompts} held-out prompts, {json.dumps(rows)}:\n{table(figures)}")
    if options.json:
        options.json.write_text(json.dumps(figures, indent=2) + "\n")
    missed = missed_targets(figures)
    for line in missed:
        print(f"TARGET MISSED: {line}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
