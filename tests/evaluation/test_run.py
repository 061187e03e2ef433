"""`python -m train.evaluate` end to end on the tiny models (CPU, 64 px, 2 steps): it writes
the JSON and the Markdown table, and a rerun skips what is already generated."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from comfyui_env import HUNG_AFTER_S

from train.evaluate.cli import main
from train.evaluate.tiny_assets import build_tiny_evaluation_assets

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "train" / "configs" / "evaluate_tiny.yaml"


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    return build_tiny_evaluation_assets(tmp_path_factory.mktemp("tiny-eval"), seed=0)


def _arguments(assets: Path, output_dir: Path, *overrides: str) -> list[str]:
    """The tiny config with its paths pointed at `assets`."""
    return [
        "--config", str(TINY_CONFIG), "--models.vlm", str(assets / "vlm"),
        "--models.adapter", str(assets / "adapter.safetensors"), "--models.sdxl", str(assets / "sdxl"),
        "--data.path", str(assets / "cc3m" / "val.tsv"), "--metrics.clip_model", str(assets / "clip"),
        "--metrics.fid_weights", str(assets / "fid-tiny-conv.safetensors"), "--output_dir", str(output_dir),
        *overrides,
    ]


def _evaluate(arguments: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train.evaluate", *arguments], cwd=REPO, capture_output=True,
                          text=True, timeout=HUNG_AFTER_S)


def _images(output_dir: Path) -> dict[str, int]:
    paths = sorted(output_dir.glob("images/*/*.png"))
    return {str(path.relative_to(output_dir)): path.stat().st_mtime_ns for path in paths}


def test_tiny_run_writes_results_and_a_rerun_skips_generated_images(assets, tmp_path):
    output_dir = tmp_path / "cc3m"
    first = _evaluate(_arguments(assets, output_dir))
    assert first.returncode == 0, first.stderr[-3000:]
    report = json.loads((output_dir / "results.json").read_text())
    assert report["dataset"]["kind"] == "cc3m" and report["dataset"]["samples"] == 4
    assert report["generation"] == {system: {"generated": 4, "skipped": 0, "without_image": 0}
                                    for system in ("vlm_sd", "m2chat")}
    for system in ("m2chat", "vlm_sd"):
        assert set(report["results"][system]) == {"clip", "fid"}
        assert 0 <= report["results"][system]["clip"] <= 100 and report["results"][system]["fid"] >= 0
    assert report["scorers"]["clip"].startswith("clip (CLIP ViT, 32 px input, patch 8")
    assert report["scorers"]["fid"] == "tiny_conv from fid-tiny-conv.safetensors (16 features)"
    table = (output_dir / "results.md").read_text()
    assert "| Models | LLM | MS-COCO 2014 CLIP↑ | CC3M FID↓ | CC3M CLIP↑ |" in table
    assert "| M²Chat (M³FT) | 7B | 29.87 | 26.15 | 23.51 |" in table
    clip, fid = report["results"]["m2chat"]["clip"], report["results"]["m2chat"]["fid"]
    assert f"| **M²Chat (ours)** | vlm | - | {fid:.2f} | {clip:.2f} |" in table
    assert "CLIP scorer: clip (CLIP ViT" in table
    images = _images(output_dir)
    assert len(images) == 8

    second = _evaluate(_arguments(assets, output_dir))
    assert second.returncode == 0, second.stderr[-3000:]
    assert _images(output_dir) == images  # not rewritten
    assert "m2chat: 4 of 4 items already generated (skipped), 0 to generate" in second.stderr
    rerun = json.loads((output_dir / "results.json").read_text())
    assert rerun["generation"]["m2chat"] == {"generated": 0, "skipped": 4, "without_image": 0}
    assert rerun["results"] == report["results"]

    # An interrupted run: one image missing. Only it is drawn again, identical (seeded per item).
    missing = output_dir / "images" / "m2chat" / "000002.png"
    original = missing.read_bytes()
    missing.unlink()
    assert main(_arguments(assets, output_dir, "--generation.batch_size", "3")) == 0
    resumed = json.loads((output_dir / "results.json").read_text())
    assert resumed["generation"]["m2chat"] == {"generated": 1, "skipped": 3, "without_image": 0}
    assert missing.read_bytes() == original
    assert {name: mtime for name, mtime in _images(output_dir).items() if "000002" not in name or "vlm_sd" in name} == {
        name: mtime for name, mtime in images.items() if "000002" not in name or "vlm_sd" in name}

    assert main(_arguments(assets, output_dir, "--generation.steps", "3")) == 2  # other settings: refused


def test_dialogue_run_scores_text_and_inter_rel(assets, tmp_path):
    output_dir = tmp_path / "mmdialog"
    arguments = _arguments(assets, output_dir, "--data.kind", "mmdialog", "--data.path",
                           str(assets / "mmdialog" / "test.jsonl"), "--data.num_samples", "2")
    assert main(arguments) == 0
    report = json.loads((output_dir / "results.json").read_text())
    assert report["dataset"]["dialogues"] == 2 and report["dataset"]["generations"] == 4
    for system in ("m2chat", "vlm_sd"):
        results = report["results"][system]
        assert set(results) == {"bleu1", "bleu2", "rouge_l", "inter_rel"}
        assert all(0 <= results[name] <= 100 for name in ("bleu1", "bleu2", "rouge_l"))
        assert -100 <= results["inter_rel"] <= 100
        assert report["counts"][system] == {"answers": 4, "images": 4, "dialogues_with_inter_rel": 2}
    texts = [json.loads(line) for line in (output_dir / "texts" / "m2chat.jsonl").read_text().splitlines()]
    assert [record["item_id"] for record in texts] == ["000000-00", "000000-01", "000001-00", "000001-01"]
    table = (output_dir / "results.md").read_text()
    assert "| Models | LLM | BLEU-1↑ | BLEU-2↑ | ROUGE-L↑ | InterRel↑ |" in table
    assert "| M²Chat (M³FT) | LLaMA 7B | 6.98 | 6.44 | 11.40 | 25.57 |" in table
    assert f"| **VLM+SD (ours)** | vlm | {report['results']['vlm_sd']['bleu1']:.2f} |" in table


def test_missing_model_folder_fails_at_once_naming_path_and_layout(assets, tmp_path):
    output_dir = tmp_path / "never"
    result = _evaluate(_arguments(assets, output_dir, "--models.sdxl", str(tmp_path / "no-sdxl")))
    assert result.returncode == 2
    expected = f"models.sdxl names {tmp_path / 'no-sdxl'}, which is not a folder; expected a diffusers SDXL folder"
    assert expected in result.stderr
    assert "unet/" in result.stderr and not output_dir.exists()
