"""M³FT stage 1 at the paper's batch on LLaVA-1.5-7B + SDXL base at their real size (random
weights) under a shipped accelerate config (DeepSpeed ZeRO-2 by default): samples/s and peak
memory per GPU (issue 14's GPU figures).

    python bench/bench_paper_size_training.py OUT         # a GPU machine (deepspeed, diffusers installed)
    python bench/bench_paper_size_training.py OUT --accelerate-config fsdp.yaml     # FSDP2 instead
    python bench/bench_paper_size_training.py OUT --tiny  # the same mechanics on 2 CPU processes

It writes the models (scripts/paper_size_models.py; `--tiny`: the tests' tiny ones) and
stage-1 shards under OUT, then launches `train.stage1 --config train/configs/paper_stage1.yaml`
(batch 8 per GPU, bf16, gradient checkpointing, 1024 px) under the shipped config on every
visible GPU: a 1-step warm-up (one-time costs: DeepSpeed's op builds, the first read of the
weights), then for STEPS[0] and for STEPS[1] optimizer steps, each from launch to exit.
Its own clock gives samples/s = batch × processes × (STEPS[1] − STEPS[0]) / (t₁ − t₀), so
loading the models, starting the engine and the final checkpoint cancel out; its own sampler of `nvidia-smi`
gives the peak memory per GPU (not measured on CPU). The models are drawn in a process of
their own, so the GPU is empty when the runs start. The cache of the frozen SDXL outputs
is off, so every step runs the text encoders and the VAE too. Each run's output is in
OUT/run-N/launch.log.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "scripts")]
from comfyui_env import HUNG_AFTER_S  # noqa: E402
from paper_size_models import SDXL_FOLDER, VLM_FOLDER  # noqa: E402
from process_groups import free_port, run_launcher  # noqa: E402

from train.tiny_assets import build_tiny_assets, captioned_pictures, write_shard  # noqa: E402

ACCELERATE_CONFIGS = REPO_ROOT / "train" / "accelerate"
SHIPPED_CONFIGS = sorted(path.name for path in ACCELERATE_CONFIGS.glob("*.yaml"))
STEPS = (3, 23)  # the difference must outweigh how much loading varies from run to run
SAMPLE_EVERY_S = 0.2  # the memory sampler's period


class PeakGPUMemory:
    """The most memory nvidia-smi reports in use on each GPU while it runs, in GiB."""

    def __init__(self) -> None:
        self.peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakGPUMemory:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            out = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, check=True).stdout
            for index, used in (line.split(",") for line in out.strip().splitlines()):
                name = f"GPU {index.strip()}"
                self.peak[name] = max(self.peak.get(name, 0.0), float(used) / 1024)


def _gpu_names() -> list[str]:
    """The visible GPUs' names, from nvidia-smi (so this process never holds GPU memory)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def _launch(arguments: list[str], config: Path, env: dict[str, str], log: Path,
            on_gpu: bool) -> tuple[float, dict[str, float]]:
    """Seconds from launch to exit, and the peak memory per GPU (none on CPU)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
               "--main_process_port", free_port(), "-m", "train.stage1", *arguments]
    start = time.perf_counter()
    with PeakGPUMemory() if on_gpu else contextlib.nullcontext() as memory:
        result = run_launcher(command, timeout=HUNG_AFTER_S, cwd=REPO_ROOT, env=env)
    seconds = time.perf_counter() - start
    log.write_text(result.stdout + result.stderr)
    if result.returncode:
        sys.exit(f"train.stage1 failed (exit {result.returncode}, output in {log}):\n{result.stderr[-4000:]}")
    return seconds, memory.peak if on_gpu else {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--tiny", action="store_true", help="the tiny models on 2 CPU processes")
    parser.add_argument("--accelerate-config", default="deepspeed_zero2.yaml", choices=SHIPPED_CONFIGS,
                        help="the shipped config in train/accelerate/ to train under")
    arguments = parser.parse_args(argv)
    if arguments.tiny and arguments.accelerate_config == "fsdp.yaml":
        parser.error("accelerate runs FSDP on GPUs only; --tiny runs CPU processes (tests/training/test_fsdp.py "
                     "runs fsdp.yaml on them)")
    out = arguments.out
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
           "TQDM_DISABLE": "1"}
    config = yaml.safe_load((ACCELERATE_CONFIGS / arguments.accelerate_config).read_text())
    if arguments.tiny:
        assets = build_tiny_assets(out / "tiny")
        vlm, sdxl, stage_config, batch = assets / "vlm", assets / "sdxl", "tiny_stage1.yaml", 2
        shards = [str(path) for path in sorted((assets / "shards").glob("train-*.tar"))]
        processes, device = 2, "2 CPU processes (gloo), tiny models"
        config.update(use_cpu=True, mixed_precision="no")
        env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    else:
        gpus = _gpu_names()
        if not gpus:
            sys.exit("No GPU is visible (nvidia-smi lists none); run with --tiny for the CPU check.")
        processes, batch, stage_config = len(gpus), 8, "paper_stage1.yaml"
        device = f"{processes} x {gpus[0]}"
        models = out / "models"
        if not (models / "done").exists():
            start = time.perf_counter()
            subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "paper_size_models.py"), str(models),
                            "--device", "cuda"], check=True, env=env, timeout=HUNG_AFTER_S)
            (models / "done").touch()
            print(f"drew the paper-size models in {time.perf_counter() - start:.0f} s", flush=True)
        vlm, sdxl = models / VLM_FOLDER, models / SDXL_FOLDER
        rng = random.Random(0)
        shard = out / "shards" / "train-000000.tar"
        shard.parent.mkdir(parents=True, exist_ok=True)
        write_shard(shard, captioned_pictures(rng, batch * processes * (STEPS[1] + 1)))
        shards = [str(shard)]
    config["num_processes"] = processes
    accelerate_config = out / arguments.accelerate_config
    accelerate_config.write_text(yaml.safe_dump(config))

    runs = {}
    for steps in (1, *STEPS):  # the first: the warm-up
        run_dir = out / f"run-{steps}"
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        runs[steps] = _launch(
            ["--config", str(REPO_ROOT / "train" / "configs" / stage_config), f"--model.vlm={vlm}",
             f"--model.sdxl={sdxl}", f"--data.train=[{','.join(shards)}]", "--data.validation=[]",
             f"--optim.max_steps={steps}", "--optim.epochs=1000", "--cache.enabled=false",
             f"--engine.output_dir={run_dir}", "--engine.checkpoint_every=0",
             f"--engine.export_path={run_dir / 'm2chat-stage1.safetensors'}"],
            accelerate_config, env, run_dir / "launch.log", on_gpu=not arguments.tiny)
        print(f"run of {steps} step(s): {runs[steps][0]:.1f} s", flush=True)
    (t0, _), (t1, peak) = runs[STEPS[0]], runs[STEPS[1]]
    samples_per_s = batch * processes * (STEPS[1] - STEPS[0]) / (t1 - t0)
    print(f"Stage 1 under {arguments.accelerate_config} on {device}, batch {batch} per process:")
    print(f"  runs of {STEPS[0]} and {STEPS[1]} steps: {t0:.1f} s and {t1:.1f} s")
    print(f"  {samples_per_s:.2f} samples/s ({samples_per_s / processes:.2f} per process)")
    for name, gib in sorted(peak.items()):
        print(f"  peak memory, {name}: {gib:.1f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
