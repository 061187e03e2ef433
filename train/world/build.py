"""`python -m train.world build`: the whole world from scratch, in one resumable command.

Stages, each a training run in its own folder under --out (a killed build resumes each
run from its last checkpoint; a finished stage is kept): the judge, the VAE, the UNet on
the VAE's latents (scored by the judge during training), the VLM, the CLIP that scores
InterRel (clip.py). Then the weights are gathered into --weights (default <out>/weights)
in the shipped layout (layout.py), with each stage's last figures, and M³FT on them
(m3ft.py, in <out>/m3ft) adds the adapter. The "short" schedule runs the same code for a
few steps each (CI)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from m2chat_core.atomic_files import atomic_path

from .config import BuildConfig, ClipConfig, JudgeConfig, M3ftConfig, UnetConfig, VaeConfig, VlmConfig
from .layout import CLIP_NAME, JUDGE_FILE, TRAINING_FIGURES, VLM_NAME, WeightsLayout
from .loop import logged_to, run_stage
from .sdxl import UNET_FILE
from .taesd import DECODER_FILE, ENCODER_FILE

logger = logging.getLogger(__name__)

STAGES = ("judge", "vae", "unet", "vlm", "clip")
# Each stage's settings over its config's defaults (the full schedule is the defaults).
SCHEDULES: dict[str, dict[str, dict]] = {
    "full": {"judge": {}, "vae": {}, "unet": {}, "vlm": {}, "clip": {}},
    "short": {
        "judge": {"steps": 6, "batch_size": 4, "width": 16, "evaluate_every": 6, "checkpoint_every": 6,
                  "eval_images": 8, "warmup_steps": 1},
        "vae": {"steps": 4, "batch_size": 2, "evaluate_every": 4, "checkpoint_every": 4, "eval_images": 4,
                "warmup_steps": 1},
        "unet": {"steps": 4, "batch_size": 4, "pool_scenes": 16, "evaluate_every": 4, "checkpoint_every": 4,
                 "eval_prompts": 2, "eval_steps": 2, "warmup_steps": 1},
        "vlm": {"steps": 2, "batch_size": 2, "evaluate_every": 2, "checkpoint_every": 2, "eval_images": 2,
                "warmup_steps": 1, "width": 32, "layers": 1, "vision_width": 32, "vision_layers": 1,
                "vision_steps": 1, "vision_batch_size": 2},
        "clip": {"steps": 2, "batch_size": 4, "evaluate_every": 2, "checkpoint_every": 2, "eval_images": 4,
                 "warmup_steps": 1, "width": 32, "layers": 1, "image_size": 32},
    },
}


def build(config: BuildConfig) -> Path:
    out, weights = Path(config.out), Path(config.weights or Path(config.out) / "weights")
    with logged_to(out / "build.log"):
        _train_stages(out, config.seed, SCHEDULES[config.schedule])
        gather(out, weights)
        add_adapter(weights, M3ftConfig(out=str(out / "m3ft"), weights=str(weights), schedule=config.schedule,
                                        seed=config.seed))
    return weights


def add_adapter(weights: Path, m3ft: M3ftConfig) -> None:
    """M³FT on the gathered world models, its adapter added to the weights folder."""
    from .m3ft import run_m3ft

    adapter = run_m3ft(m3ft)
    with atomic_path(WeightsLayout(weights).adapter) as staging:
        shutil.copy2(adapter, staging)


def _train_stages(out: Path, seed: int, schedule: dict[str, dict]) -> None:
    from .clip import train_clip
    from .training import train_judge, train_vae
    from .unet_training import train_unet
    from .vlm_training import train_vlm

    judge = JudgeConfig(out=str(out / "judge"), seed=seed, **schedule["judge"])
    run_stage("judge", out / "judge" / JUDGE_FILE, lambda: train_judge(judge))
    vae = VaeConfig(out=str(out / "vae"), seed=seed, **schedule["vae"])
    run_stage("vae", out / "vae" / DECODER_FILE, lambda: train_vae(vae))
    unet = UnetConfig(out=str(out / "unet"), seed=seed, vae=vae.out, judge=str(out / "judge" / JUDGE_FILE),
                      **schedule["unet"])
    run_stage("unet", out / "unet" / UNET_FILE, lambda: train_unet(unet))
    vlm = VlmConfig(out=str(out / "vlm"), seed=seed, **schedule["vlm"])
    run_stage("vlm", out / "vlm" / VLM_NAME, lambda: train_vlm(vlm))
    clip = ClipConfig(out=str(out / "clip"), seed=seed, **schedule["clip"])
    run_stage("clip", out / "clip" / CLIP_NAME, lambda: train_clip(clip))


def gather(out: Path, weights: Path) -> Path:
    """Copy the finished stages' files into the shipped layout, with their last figures."""
    with atomic_path(weights) as staging:
        staged = WeightsLayout(staging)
        staged.vae.mkdir(parents=True)
        shutil.copy2(out / "judge" / JUDGE_FILE, staged.judge)
        for name in (ENCODER_FILE, DECODER_FILE):
            shutil.copy2(out / "vae" / name, staged.vae / name)
        shutil.copy2(out / "unet" / UNET_FILE, staged.unet)
        shutil.copytree(out / "vlm" / VLM_NAME, staged.vlm)
        shutil.copytree(out / "clip" / CLIP_NAME, staged.clip)
        figures = {stage: _last_point(out / stage) for stage in STAGES}
        (staging / TRAINING_FIGURES).write_text(json.dumps(figures, indent=2) + "\n")
    logger.info("World weights gathered in %s", weights)
    return weights


def _last_point(run_folder: Path) -> dict:
    lines = (run_folder / "curve.jsonl").read_text().splitlines()
    return json.loads(lines[-1]) if lines else {}
