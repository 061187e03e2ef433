"""The shapes world's SDXL measured as users run it: a real ComfyUI server (this pack and
the test/demo extension), native graphs (scripts/world_graphs.py), pictures read by the
shipped judge. Rows, on the same held-out (colour, shape) cases and seeds (--split validation:
new scenes of the seen pairs instead, where a recipe is chosen):

  zero      conditioning zeroed out: what the UNet draws unprompted (expect chance)
  caption   the ground-truth caption through the world's text encoders (the upper bound)
  fallback  the world VLM's caption of the request through the same encoders (VLM + SD)
  m2chat    the world VLM through the shipped M³Adapter (M²Chat)
  m2chat_gate0, m2chat_gate1  the adapter with its gate fixed at 0 or 1
  m2chat_gate_paper  the adapter with the paper's gate, g = cos(e_ans, e_cap) (Eq. 3)
  --gate G  one more row, m2chat_gateG: the adapter with its gate fixed at G (0 to 1)
  --adapter ROW=FILE  one more row: M2ChatEncode with that adapter file (e.g. a stage-1 export)

Tasks: text_to_image (requests), image_editing (a picture and an instruction; `all` is
the instruction followed AND the rest kept), multimodal_dialogue (three turns; the
last turn's picture against the scene the conversation implies) and storytelling (a
premise, 4 panels; M2Chat rows only; columns in world_graphs.measure_stories). The gate
rows are measured only where a picture is in the context (editing, dialogue): without one
the gate is 1 whatever its mode (m2chat_core/gate.py), so they would repeat the m2chat row.
Columns: the judge's per-attribute accuracy;
colour_and_shape: both right on the same object; all: every attribute of the scene right;
caption_bleu1, caption_rouge_l: the VLM's caption (last turn) against the scene's reference
caption, in M2ChatEncode rows; inter_rel: dialogues' InterRel (Eq. 8) as a mean cosine,
with the world's CLIP (clip/ in --weights; no column without one), in M2ChatEncode rows.
`python -m train.world report` runs this on its own models.
Exits 1 when a text-to-image target (TARGETS and RELATIVE_TARGETS in
scripts/world_graphs.py) is missed.

    .venv/bin/python bench/bench_world.py [--prompts 64] [--split test|validation] [--case-seed 0]
        [--rows zero,caption,...]
        [--tasks text_to_image,image_editing,multimodal_dialogue] [--adapter ROW=FILE ...] [--gate G ...]
        [--weights DIR] [--world-adapter FILE] [--json PATH] [--markdown PATH] [--cache DIR]
        [--steps N]   (KSampler steps, default 20: the tables' protocol; fewer for a quick look)
        [--sampler NAME] [--scheduler NAME] [--cfg X]   (KSampler's, default the tables': train/world/sdxl.py)
        [--negative row|zero|empty]   (default row: each row its own negative, as the tables;
                                       zero or empty: every row against the all-zero negative
                                       or the empty caption's encoding)
Figures drawn otherwise than the tables' protocol say so in each table's heading.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import signal
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from comfyui_env import ComfyServer, prepare_base_directory  # noqa: E402
from world_graphs import (  # noqa: E402
    CASE_SPLITS,
    CONDITIONINGS,
    NEGATIVES,
    ROW_LABELS,
    EncodeRow,
    Sampling,
    dialogue_cases,
    edit_cases,
    encode_row,
    fixed_gate_row,
    measure,
    missed_targets,
    prompt_cases,
    story_cases,
)

from m2chat_core.m3ft_settings import FILE_GATE_MODE  # noqa: E402
from train.evaluate.clip_model import load_local_clip  # noqa: E402
from m2chat_core.atomic_files import atomic_path  # noqa: E402
from train.world.layout import ADAPTER_FILE, SHIPPED, WeightsLayout  # noqa: E402
from train.world.report import ABLATIONS, MISSED_TARGETS_EXIT  # noqa: E402
from train.world.training import load_judge  # noqa: E402


LABELS = {**ROW_LABELS, **{name: ablation.label for name, ablation in ABLATIONS.items()}}
CASES = {"text_to_image": prompt_cases, "image_editing": edit_cases,
         "multimodal_dialogue": dialogue_cases, "storytelling": story_cases}
TEXT_ONLY_TASKS = ("text_to_image", "storytelling")  # no picture in any turn's context: g = 1


def measured_on_task(task: str, conditioning: str | EncodeRow) -> bool:
    """Whether a row is measured on a task: a story needs the VLM, and a row that only changes
    the gate's mode measures nothing new where no picture is in the context."""
    row = encode_row(conditioning)
    if task == "storytelling" and not row:
        return False
    return not (task in TEXT_ONLY_TASKS and row and row.gate_mode != FILE_GATE_MODE)


def table(figures: dict[str, dict[str, float]]) -> str:
    columns = list(dict.fromkeys(column for values in figures.values() for column in values))
    lines = ["| row | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    order = list(LABELS)  # the paper's order: (a)-(e), the gate variants, the ablations; other rows last
    for row in sorted(figures, key=lambda row: order.index(row) if row in order else len(order)):
        values = figures[row]
        cells = [f"{values[column]:.3f}" if column in values else "–" for column in columns]
        lines.append(f"| {LABELS.get(row, row)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


class FigureCache:
    """--cache DIR: each (task, row)'s figures in DIR/<task>/<row>.json with what they were
    measured on (the row's key: case count, KSampler steps, sha256 of the models and of the
    row's adapter);
    a rerun measures only the rows that are missing or were measured on other files."""

    def __init__(self, directory: Path | None):
        self.directory = directory

    def keys(self, prompts: int, split: str, world: WeightsLayout, world_adapter: Path | None,
             extra: dict[str, Path], rows: Mapping[str, str | EncodeRow],
             sampling: Sampling = Sampling(), case_seed: int = 0) -> dict[str, dict | None]:
        """Each row's key (the cases' count, split and seed; hashing the models only where there is a
        cache to check them against): the adapter is the file the row reads (--adapter's, else
        the m2chat rows' own), None for the rows without one."""
        if not self.directory:
            return dict.fromkeys(rows)
        models = digest(world.root)
        own = digest(world_adapter or world.adapter)

        def adapter(row: str) -> str | None:
            if row in extra:
                return digest(extra[row])
            reads = encode_row(rows[row])  # None for zero and caption; the fallback reads no adapter
            return own if reads and reads.adapter else None
        return {row: {"prompts": prompts, "split": split, "case_seed": case_seed, **asdict(sampling), "weights": models,
                      "adapter": adapter(row)} for row in rows}

    def get(self, task: str, row: str, key: dict) -> dict[str, float] | None:
        path = self.directory and self.directory / task / f"{row}.json"
        if not path or not path.is_file():
            return None
        stored = json.loads(path.read_text())
        return stored["figures"] if stored["key"] == key else None

    def put(self, task: str, row: str, key: dict, figures: dict[str, float]) -> dict[str, float]:
        if self.directory:
            with atomic_path(self.directory / task / f"{row}.json") as path:
                path.write_text(json.dumps({"key": key, "figures": figures}, indent=2) + "\n")
        return figures


def digest(path: Path) -> str:
    """sha256 of a file, or of a folder's files (names and bytes, in name order)."""
    sha = hashlib.sha256()
    for file in sorted(item for item in [path, *path.rglob("*")] if item.is_file()):
        sha.update(str(file.relative_to(path)).encode())
        sha.update(file.read_bytes())
    return sha.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--split", choices=CASE_SPLITS, default="test",
                        help="test (default): held-out (colour, shape) pairs, the tables; validation: new scenes "
                             "of the seen pairs, where a recipe is chosen (never on the test split)")
    parser.add_argument("--case-seed", type=int, default=0,
                        help="draw another set of cases (default 0: the tables'); e.g. fresh validation cases "
                             "for a recipe decision")
    parser.add_argument("--rows", default=",".join(CONDITIONINGS))
    parser.add_argument("--tasks", default=",".join(CASES))
    parser.add_argument("--adapter", action="append", default=[], metavar="ROW=FILE",
                        help="one more row: M2ChatEncode with this adapter file (e.g. a stage-1 export)")
    parser.add_argument("--gate", type=float, action="append", default=[], metavar="G",
                        help="one more row: the m2chat rows' adapter with its gate fixed at G (0 to 1), on the "
                             "tasks with a picture in the context")
    parser.add_argument("--weights", type=Path, default=SHIPPED.root,
                        help="the world's models, in the shipped layout (default: the shipped ones; or a build's)")
    parser.add_argument("--world-adapter", type=Path,
                        help="the adapter of the m2chat rows (default: the one in --weights)")
    parser.add_argument("--json", type=Path, help="write the figures (task -> row -> score) here")
    parser.add_argument("--markdown", type=Path, help="write the tables here, one per task")
    parser.add_argument("--cache", type=Path, help="keep each row's figures here; a rerun measures only what is "
                                                   "missing or was measured on other models")
    parser.add_argument("--steps", type=int, default=Sampling.steps,
                        help="KSampler steps per picture (default: the tables' protocol; fewer for a quick look, "
                             "whose figures are not comparable with the tables')")
    parser.add_argument("--sampler", default=Sampling.sampler, help="KSampler's sampler_name (default: the tables')")
    parser.add_argument("--scheduler", default=Sampling.scheduler, help="KSampler's scheduler (default: the tables')")
    parser.add_argument("--cfg", type=float, default=Sampling.cfg,
                        help="KSampler's classifier-free guidance (default: the tables')")
    parser.add_argument("--negative", choices=NEGATIVES, default=Sampling.negative,
                        help="row: each row its own negative (the tables' protocol); zero or empty: every row "
                             "against the all-zero negative or the empty caption's encoding")
    options = parser.parse_args(argv)
    try:
        sampling = Sampling(options.steps, options.sampler, options.scheduler, options.negative, options.cfg)
        gate_rows = dict(fixed_gate_row(value) for value in options.gate)
    except ValueError as error:
        parser.error(str(error))
    # Stopped by a signal (a killed report): leave through `finally`, which stops the server.
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    rows, tasks = options.rows.split(","), options.tasks.split(",")
    extra = {row: Path(file) for row, file in (item.split("=", 1) for item in options.adapter)}
    world = WeightsLayout(options.weights)
    judge = load_judge(world.judge)
    clip = load_local_clip(world.clip, torch.device("cpu")) if world.clip.is_dir() else None
    conditionings = {**{row: row for row in rows}, **gate_rows,
                     **{row: EncodeRow(adapter=f"{row}.safetensors") for row in extra}}
    cache = FigureCache(options.cache)
    keys = cache.keys(options.prompts, options.split, world, options.world_adapter, extra, conditionings, sampling,
                      options.case_seed)
    cases_drawn = "held-out" if options.split == "test" else "validation (seen pairs)"
    case_seed = f"case seed {options.case_seed}" if options.case_seed else ""
    measured_on = ", ".join(filter(None, [f"{options.prompts} {cases_drawn} cases", case_seed,
                                          sampling.differences()]))
    figures, server = {}, None
    with tempfile.TemporaryDirectory() as base:
        try:
            for task in tasks:
                cases, figures[task] = CASES[task](options.prompts, options.case_seed, options.split), {}
                for row, conditioning in conditionings.items():
                    if not measured_on_task(task, conditioning):
                        continue
                    found = cache.get(task, row, keys[row])
                    if found is None:
                        server = server or _start_server(Path(base), world, options.world_adapter, extra)
                        found = cache.put(task, row, keys[row],
                                          measure(server, judge, conditioning, cases, clip, sampling))
                    figures[task][row] = found
                print(f"{task}, {measured_on}:\n{table(figures[task])}\n", flush=True)
        finally:
            if server:
                server.stop()
    if options.json:
        with atomic_path(options.json) as path:
            path.write_text(json.dumps(figures, indent=2) + "\n")
    if options.markdown:
        with atomic_path(options.markdown) as path:
            path.write_text("".join(f"**{task}** ({measured_on})\n\n{table(task_figures)}\n\n"
                                    for task, task_figures in figures.items()))
    missed = missed_targets(figures.get("text_to_image", {}))
    for line in missed:
        print(f"TARGET MISSED: {line}")
    return MISSED_TARGETS_EXIT if missed else 0


def _start_server(base: Path, world: WeightsLayout, world_adapter: Path | None, extra: dict[str, Path]) -> ComfyServer:
    """ComfyUI on the world's models; `world_adapter` is the m2chat rows' adapter, extra[row] is <row>.safetensors."""
    base = prepare_base_directory(base, world)
    adapters = base / "models" / "m2chat"
    if world_adapter:
        shutil.copy(world_adapter, adapters / ADAPTER_FILE)
    for row, file in extra.items():
        shutil.copy(file, adapters / f"{row}.safetensors")
    return ComfyServer(base)


if __name__ == "__main__":
    sys.exit(main())
