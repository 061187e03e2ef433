"""results.json and results.md: our rows beside the paper's Tables 1 and 2."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path
from typing import Any

from m2chat_core.atomic_files import atomic_path

from .config import CAPTION_DATASETS, EvaluateConfig
from .datasets import EvaluationSet
from .generation import GenerationCounts
from .scoring import Scores

REPORT_FORMAT, REPORT_VERSION = "m2chat-evaluation", 1
JSON_FILE, MARKDOWN_FILE = "results.json", "results.md"

# Columns: (title, dataset kind scored, metric key). Paper rows: (model, LLM, values).
TABLE_1_COLUMNS = (
    ("MS-COCO 2014 CLIP↑", "coco", "clip"), ("CC3M FID↓", "cc3m", "fid"), ("CC3M CLIP↑", "cc3m", "clip"),
)
TABLE_1_PAPER = (
    ("SD 1.5", "-", (30.62, 30.62, 23.48)),
    ("SDXL", "-", (31.17, 24.26, 29.91)),
    ("Emu", "13B", (28.6, None, None)),
    ("Emu2-Gen", "33B", (29.7, None, None)),
    ("NeXT-GPT", "7B", (29.31, None, None)),
    ("MiniGPT5", "7B", (None, 31.47, 22.00)),
    ("M²Chat", "7B", (28.46, 28.71, 21.87)),
    ("M²Chat (M³FT)", "7B", (29.87, 26.15, 23.51)),
)
TABLE_2_COLUMNS = (
    ("BLEU-1↑", "mmdialog", "bleu1"), ("BLEU-2↑", "mmdialog", "bleu2"),
    ("ROUGE-L↑", "mmdialog", "rouge_l"), ("InterRel↑", "mmdialog", "inter_rel"),
)
TABLE_2_PAPER = (
    ("VLM+SD finetune", "Vicuna 7B", (4.21, 4.18, 6.78, 20.05)),
    ("M²Chat", "LLaMA 7B", (6.02, 5.88, 10.14, 24.68)),
    ("M²Chat (M³FT)", "LLaMA 7B", (6.98, 6.44, 11.40, 25.57)),
)
SOFTWARE = ("torch", "transformers", "diffusers", "torchmetrics")  # versions recorded with the numbers
SYSTEM_LABELS = {"m2chat": "M²Chat", "vlm_sd": "VLM+SD", "sdxl": "SDXL"}
NOTES = (
    "CLIP = torchmetrics CLIPScore (100·cos, mean over pairs); the CLIP backbone is named above, and scores "
    "from different backbones are not comparable (the authors used ViT-B/16, MiniGPT-5 ViT-L/14).",
    "Negative conditioning: all-zero embeddings for every system, as the authors sampled.",
    "BLEU: corpus BLEU with uniform 1..n-gram weights, lower-cased whitespace tokens; ROUGE-L: mean LCS F1.",
    "InterRel (Eq. 8): mean, not sum, of ground-truth-vs-generated cross-modal CLIP products at turns i and "
    "i+1, x100, averaged over dialogues; ground truth and dialogue history are the set's reference turns.",
)


def build_report(config: EvaluateConfig, evaluation_set: EvaluationSet, counts: dict[str, GenerationCounts],
                 scores: Scores) -> dict[str, Any]:
    caption_set = evaluation_set.kind in CAPTION_DATASETS
    return {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "dataset": {
            "kind": evaluation_set.kind,
            "path": str(evaluation_set.path),
            "samples" if caption_set else "dialogues": evaluation_set.num_dialogues,
            "generations": len(evaluation_set.items),
            "reference_images": len(evaluation_set.reference_images),
        },
        "scorers": {"clip": scores.clip_description, "fid": scores.fid_description},
        "llm": Path(config.models.vlm).name if config.models.vlm else None,
        "generation": {system: asdict(count) for system, count in counts.items()},
        "software": {package: version(package) for package in SOFTWARE},
        "results": {  # NaN/inf (a degenerate FID) as null: the file stays strict JSON
            system: {name: _finite_or_none(value) for name, value in metrics.items()}
            for system, metrics in scores.results.items()
        },
        "counts": scores.counts,
        "paper_table": 1 if caption_set else 2,
        "config": config.to_dict(),
        "notes": list(NOTES),
    }


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _row(model: str, llm: str, values: list[float | None] | tuple[float | None, ...]) -> str:
    return f"| {model} | {llm} | " + " | ".join(_cell(value) for value in values) + " |"


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: settings, the paper's table with our rows below, notes."""
    dataset, settings = report["dataset"], report["config"]["generation"]
    table_1 = report["paper_table"] == 1
    columns, paper = (TABLE_1_COLUMNS, TABLE_1_PAPER) if table_1 else (TABLE_2_COLUMNS, TABLE_2_PAPER)
    in_table = {key for _, kind, key in columns if kind == dataset["kind"]}
    header = ["Models", "LLM", *(title for title, _, _ in columns)]
    lines = [
        f"# M²Chat evaluation: {dataset['kind']} ({dataset['path']})",
        "",
        f"- Generations: {dataset['generations']} ({', '.join(_generation_summary(report))}); "
        f"{settings['resolution']} px, {settings['steps']} steps, CFG {settings['cfg']}, seed {settings['seed']}.",
        f"- CLIP scorer: {report['scorers']['clip']}.",
        f"- FID features: {report['scorers']['fid'] or 'not computed'}.",
        "",
        f"Paper Table {report['paper_table']} with our rows (ours in bold; '-' = not evaluated):",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += [_row(model, llm, values) for model, llm, values in paper]
    for system, metrics in report["results"].items():
        values = [metrics.get(key) if kind == dataset["kind"] else None for _, kind, key in columns]
        lines.append(_row(f"**{SYSTEM_LABELS[system]} (ours)**", report["llm"] if system != "sdxl" else "-", values))
    others = [
        f"{SYSTEM_LABELS[system]} {name} {_cell(value)}"
        for system, metrics in report["results"].items()
        for name, value in metrics.items()
        if name not in in_table
    ]
    if others:
        lines += ["", f"Also computed on {dataset['kind']} (no column in the paper's table): {', '.join(others)}."]
    lines += ["", *(f"- {note}" for note in report["notes"]), ""]
    return "\n".join(lines)


def _generation_summary(report: dict[str, Any]) -> list[str]:
    return [
        f"{system}: {count['generated']} generated, {count['skipped']} skipped"
        for system, count in report["generation"].items()
    ]


def write_report(output_dir: str | Path, report: dict[str, Any]) -> tuple[Path, Path]:
    output_dir = Path(output_dir)
    json_path, markdown_path = output_dir / JSON_FILE, output_dir / MARKDOWN_FILE
    with atomic_path(json_path) as temporary:
        temporary.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    with atomic_path(markdown_path) as temporary:
        temporary.write_text(markdown(report), encoding="utf-8")
    return json_path, markdown_path
