"""`python -m train.world build`: the short schedule runs every stage of the real rebuild,
gathers loadable weights in the shipped layout, and a rerun resumes instead of retraining."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from comfyui_env import HUNG_AFTER_S
from safetensors.torch import load_file

from m2chat_core.adapter_file import load_adapter_file
from m2chat_core.vlm import load_vlm
from train.checkpoints import list_checkpoints, read_state
from train.evaluate.clip_model import load_local_clip
from train.trainer import DEFAULT_EXPORT_NAME
from train.world.__main__ import main
from train.world.comfyui import REPO
from train.world.config import UnetConfig
from train.world.layout import TRAINING_FIGURES, WeightsLayout
from train.world.loop import CHECKPOINT_NAME
from train.world.report import ABLATIONS, MEASURED, RESULTS_JSON, RESULTS_MARKDOWN
from train.world.sdxl import load_unet
from train.world.taesd import load_taesd
from train.world.training import load_judge
from train.world.unet_training import POOL_FILE, train_unet


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("world-build")
    # As after an earlier run in the same process (a notebook, this suite): Accelerate's state is
    # already set up, maybe in another precision than the world's stages; they run in their own processes.
    Accelerator(cpu=True, mixed_precision="no")
    assert main(["build", "--out", str(out), "--schedule", "short"]) == 0
    return out


def test_short_build_gathers_every_model_in_the_shipped_layout(built):
    weights = WeightsLayout(built / "weights")
    judge, vae, unet = load_judge(weights.judge), load_taesd(weights.vae), load_unet(weights.unet)
    image = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        latent = vae.encoder(image)
        assert latent.shape == (1, 4, 16, 16)
        assert judge(image)[0].shape == (1, 9, 6 + 8 + 2)  # per cell: empty or a shape, colour, size
        y = torch.zeros(1, 2816)
        assert unet(latent, torch.tensor([500]), context=torch.zeros(1, 77, 2048), y=y).shape == latent.shape
    assert load_vlm(weights.vlm).info.hidden_size == 32  # the short schedule's VLM
    figures = json.loads((weights.root / TRAINING_FIGURES).read_text())
    assert [figures[stage]["step"] for stage in ("judge", "vae", "unet", "vlm", "clip")] == [6, 4, 4, 2, 2]
    assert "heldout_colour_and_shape" in figures["unet"]  # the UNet's pictures were judged
    assert "image_to_caption" in figures["clip"]
    assert load_local_clip(weights.clip, torch.device("cpu")).embed_texts(["a red star"]).shape == (1, 32)
    log = (built / "build.log").read_text()
    assert all(f"Stage {stage}: finished" in log for stage in ("judge", "vae", "unet", "vlm", "clip"))


def test_short_build_runs_m3ft_on_its_models_and_ships_a_half_precision_adapter(built):
    adapter = load_adapter_file(WeightsLayout(built / "weights").adapter)
    assert adapter.config.chosen_layers == (-1,) and adapter.config.width == 32  # the short M³FT recipe
    assert adapter.config.gate_mode == "learned"  # stage 2's (world_stage2.yaml)
    assert adapter.training_config["model"]["vlm"] == "vlm"  # by name: the file records no folder of the build
    assert str(built) not in json.dumps(adapter.training_config)
    stage2_files = ["dialogue.jsonl", "editing.jsonl", "stories.jsonl", "text_to_image.jsonl"]  # world_stage2.yaml's
    assert adapter.training_config["data"]["train"] == stage2_files
    assert {tensor.dtype for tensor in adapter.adapter_state.values()} == {torch.float16}
    assert any("multi_modal_projector" in name for name in adapter.vlm_deltas.tensors)  # stage 2 trained it
    log = (built / "build.log").read_text()
    assert all(f"Stage {stage}: finished" in log for stage in ("data", "sdxl", "stage1", "stage2", "export"))


def test_a_rerun_resumes_from_the_finished_runs(built):
    unet_bytes = WeightsLayout(built / "weights").unet.read_bytes()
    (built / "unet" / WeightsLayout(built).unet.name).unlink()  # as if killed before the UNet was saved
    assert main(["build", "--out", str(built), "--schedule", "short"]) == 0
    log = (built / "build.log").read_text()
    assert all(f"Stage {stage}: already finished" in log
               for stage in ("judge", "vae", "vlm", "clip", "stage1", "export"))
    assert WeightsLayout(built / "weights").unet.read_bytes() == unet_bytes  # resumed at its last step, not retrained
    assert (built / "unet" / "curve.jsonl").read_text().count("\n") == 1
    assert (built / "unet" / POOL_FILE).is_file()  # the rerun read its training pool back


def _part(state: dict, prefix: str) -> dict:
    return {name[len(prefix):]: value for name, value in state.items() if name.startswith(prefix)}


def test_a_unet_run_starts_from_given_weights_and_saves_their_moving_average(built, tmp_path):
    weights = WeightsLayout(built / "weights")
    init = {name: value.float() for name, value in load_unet(weights.unet).state_dict().items()}

    def run(steps: int) -> tuple[dict, dict, dict]:
        config = UnetConfig(out=str(tmp_path), vae=str(weights.vae), judge="", init=str(weights.unet),
                            ema_decay=0.5, steps=steps, batch_size=2, pool_scenes=4, warmup_steps=0,
                            evaluate_every=1, checkpoint_every=1, eval_prompts=1, eval_steps=1)
        train_unet(config)
        state = load_file(tmp_path / CHECKPOINT_NAME)
        return (_part(state, "model.live."), _part(state, "model.average."),
                load_file(tmp_path / weights.unet.name))

    live, average, saved = run(steps=1)
    assert any(not torch.equal(live[name], init[name]) for name in init)  # it trained ...
    for name in init:  # ... from the given weights, and averaged them with the decay
        torch.testing.assert_close(average[name], 0.5 * init[name] + 0.5 * live[name])
        torch.testing.assert_close(saved[name], average[name].half())  # the average is what ships
    previous = average
    live, average, _ = run(steps=2)  # resumed: the average continues from the checkpoint's
    for name in init:
        torch.testing.assert_close(average[name], 0.5 * previous[name] + 0.5 * live[name])


def _report(built: Path) -> int:
    # 2 KSampler steps instead of the tables' 20: the short build's pictures are not what is checked.
    return main(["report", "--out", str(built), "--weights", str(built / "weights"), "--schedule", "short",
                 "--prompts", "1", "--sampler-steps", "2"])


@pytest.fixture(scope="module")
def reported(built):
    assert _report(built) == 0
    return built


def test_report_trains_the_ablations_and_measures_every_row_through_the_server(reported):
    built = reported
    log = (built / "report.log").read_text()
    assert "Stage stage1: already finished" in log and "Stage stage2: already finished" in log  # the build's M³FT
    runs = built / "m3ft" / "runs"
    stage1 = _adapter_tensors(runs / "stage1")
    for ablation in ABLATIONS:  # each trained its own adapter
        assert _adapter_tensors(runs / ablation).keys() >= stage1.keys()
    assert read_state(list_checkpoints(runs / "stage1_untrained" / "checkpoints")[-1]).global_step == 0
    assert not torch.equal(_adapter_tensors(runs / "stage1_phi0")["queries"], stage1["queries"])
    assert load_adapter_file(runs / "stage2_paper_gate" / DEFAULT_EXPORT_NAME).config.gate_mode == "paper"

    figures = json.loads((built / RESULTS_JSON).read_text())
    assert set(figures) == {"text_to_image", "image_editing", "multimodal_dialogue", "storytelling"}
    gate_rows = {"m2chat_gate0", "m2chat_gate1", "m2chat_gate_paper"}  # only where a picture is in the context
    vlm_rows = {"fallback", "m2chat", "stage1", *ABLATIONS} | gate_rows
    for task, task_figures in figures.items():
        rows = vlm_rows - (gate_rows if task in ("text_to_image", "storytelling") else set())
        assert set(task_figures) == rows | ({"zero", "caption"} if task != "storytelling" else set()), task
        assert all(0.0 <= value <= 1.0 for row in task_figures.values() for name, value in row.items()
                   if name != "inter_rel")
    for task in ("text_to_image", "image_editing", "multimodal_dialogue"):
        assert "caption_bleu1" in figures[task]["m2chat"] and "caption_bleu1" not in figures[task]["caption"]
    dialogue = figures["multimodal_dialogue"]  # InterRel, a mean cosine, with the build's CLIP
    assert all(-1.0 <= dialogue[row]["inter_rel"] <= 1.0 for row in vlm_rows)
    assert "inter_rel" not in dialogue["caption"] and "inter_rel" not in figures["text_to_image"]["m2chat"]
    assert set(figures["storytelling"]["m2chat"]) == {"caption_followed", "premise_first", "consistent"}
    markdown = (built / RESULTS_MARKDOWN).read_text()
    assert markdown.count(f"| {ABLATIONS['stage2_paper_gate'].label} |") == 4
    text_to_image = markdown.split("\n\n**")[0]  # rows in the paper's order, the --adapter rows included
    assert (text_to_image.index("| (a) zero") < text_to_image.index("| (d) M²Chat, stage 1 |")
            < text_to_image.index("| (e) M²Chat, stage 1 + 2 |") < text_to_image.index("| ablation:"))
    assert "**multimodal_dialogue** (1 held-out cases, 2 KSampler steps)" in markdown  # not the tables' protocol


def test_a_rerun_of_the_report_measures_again_only_what_is_missing_and_gets_the_same_table(reported):
    first = (reported / RESULTS_JSON).read_text()
    (reported / RESULTS_JSON).unlink()
    (reported / RESULTS_MARKDOWN).unlink()
    measured = sorted((reported / MEASURED).glob("*/*.json"))
    assert len(measured) == sum(len(rows) for rows in json.loads(first).values())  # one file per task and row
    for path in measured:
        if path.stem == "m2chat":  # as if killed before M²Chat's row was measured
            path.unlink()
    kept = {path: path.stat().st_mtime_ns for path in measured if path.exists()}
    assert _report(reported) == 0
    assert (reported / RESULTS_JSON).read_text() == first  # measured again with the same seeds: the same table
    assert {path: path.stat().st_mtime_ns for path in kept} == kept  # the other rows were not measured again
    assert all((reported / MEASURED / task / "m2chat.json").is_file() for task in json.loads(first))
    log = (reported / "report.log").read_text()
    assert all(log.count(f"Stage {name}: running") == 1 for name in ABLATIONS)  # trained by the first run only


def _adapter_tensors(run: Path) -> dict[str, torch.Tensor]:
    return load_adapter_file(run / DEFAULT_EXPORT_NAME).adapter_state


@pytest.mark.parametrize("flags, field", [(["--schedule", "weekly"], "schedule")])
def test_a_bad_build_config_is_refused_before_any_work(tmp_path, capsys, flags, field):
    out = tmp_path / "run"
    assert main(["build", "--out", str(out), *flags]) == 2
    assert field in capsys.readouterr().err and not out.exists()


def test_unet_training_without_comfyui_says_where_to_get_it(tmp_path):
    environment = {**os.environ, "COMFYUI_PATH": str(tmp_path / "no-comfyui")}
    (tmp_path / "vae").mkdir()
    result = subprocess.run([sys.executable, "-m", "train.world", "unet", "--out", str(tmp_path / "run"),
                             "--vae", str(tmp_path / "vae"), "--judge", ""],
                            cwd=REPO, env=environment, capture_output=True, text=True, timeout=HUNG_AFTER_S)
    assert result.returncode == 2, result.stderr
    assert "COMFYUI_PATH" in result.stderr and "Traceback" not in result.stderr


def test_the_report_cache_keys_each_row_by_the_adapter_it_reads(built, tmp_path):
    """The m2chat rows' adapter named explicitly or read from the weights folder is the same
    key (no measuring again); rows without an adapter do not depend on it; every row depends on how
    the KSampler draws (steps, sampler, negative) and on the cases' split and seed."""
    spec = importlib.util.spec_from_file_location("bench_world", REPO / "bench" / "bench_world.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cache, world = bench.FigureCache(tmp_path), WeightsLayout(built / "weights")
    stage1 = built / "m3ft" / "runs" / "stage1" / DEFAULT_EXPORT_NAME
    gate_name, gate_row = bench.fixed_gate_row(0.75)  # --gate 0.75: it reads the m2chat rows' adapter
    rows = {**{row: row for row in ("zero", "caption", "fallback", "m2chat", "m2chat_gate0", "stage1")},
            gate_name: gate_row}
    implicit = cache.keys(64, "test", world, None, {"stage1": stage1}, rows)
    assert cache.keys(64, "test", world, world.adapter, {"stage1": stage1}, rows) == implicit
    other = cache.keys(64, "test", world, stage1, {"stage1": stage1}, rows)
    assert [row for row in rows if other[row] != implicit[row]] == ["m2chat", "m2chat_gate0", "m2chat_gate0.75"]
    assert implicit["stage1"]["adapter"] == other["m2chat"]["adapter"] != implicit["m2chat"]["adapter"]
    for other_protocol in (bench.Sampling(steps=2), bench.Sampling(sampler="ddim"), bench.Sampling(negative="zero"),
                           bench.Sampling(cfg=bench.Sampling.cfg + 1)):
        drawn_otherwise = cache.keys(64, "test", world, None, {"stage1": stage1}, rows, other_protocol)
        assert all(drawn_otherwise[row] != implicit[row] for row in rows)
    validation = cache.keys(64, "validation", world, None, {"stage1": stage1}, rows)
    assert all(validation[row] != implicit[row] for row in rows)
    other_cases = cache.keys(64, "test", world, None, {"stage1": stage1}, rows, case_seed=1)
    assert all(other_cases[row] != implicit[row] for row in rows)
