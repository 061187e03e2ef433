"""`python -m train.world m3ft`: M³FT on the world's models in one resumable command.

Stages, each kept once finished (a killed run resumes the stage it was in from its last
checkpoint): the M³FT data set (`data`; its sizes are the recipe's), the world SDXL as a diffusers folder,
stage 1 and stage 2 as `python -m train.stage1` / `train.stage2` (a process each) with the recipe of
train/configs/world_stage1.yaml and world_stage2.yaml (only paths overridden, sizes on the
"short" schedule, and float32 instead of bf16 on a CPU without bf16 units), then the stage-2
adapter exported in float16 to <out>/ADAPTER_FILE.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from m2chat_core.cpu_units import CPU_HAS_BF16_UNITS

from ..config import ConfigError
from ..config_loading import read_yaml
from .comfyui import REPO
from .config import DataConfig, DiffusersConfig, M3ftConfig
from .layout import ADAPTER_FILE, WeightsLayout
from .loop import logged_to, run_stage

CONFIGS = REPO / "train" / "configs"
STAGE_CONFIGS = {1: CONFIGS / "world_stage1.yaml", 2: CONFIGS / "world_stage2.yaml"}
# The data set's train-split sizes on the short schedule; the full one writes DataConfig's defaults.
SHORT_DATA_SIZES = {"images": 16, "dialogues": 4, "edits": 4, "stories": 2}
# The short schedule: a few steps of each stage, on any world VLM (a short build's has 1 layer).
SHORT = ["--optim.max_steps", "2", "--optim.batch_size", "2", "--optim.warmup_steps", "0",
         "--engine.checkpoint_every", "2", "--engine.validate_every", "2", "--engine.log_every", "1"]
SHORT_STAGE1 = ["--adapter.chosen_layers", "[-1]", "--adapter.width", "32", "--adapter.heads", "4"]
# The recipe's bf16 only where the CPU computes it natively (train/precision.py); float32 elsewhere.
FLOAT32 = ["--engine.mixed_precision", "no"]


def run_m3ft(config: M3ftConfig) -> Path:
    """Both stages on the models in `config.weights`; returns the exported adapter file."""
    with logged_to(Path(config.out) / "m3ft.log"):
        return m3ft_stages(prepare_runs(config))[1]


def m3ft_stages(runs: StageRuns) -> tuple[Path, Path]:
    """Stage 1, stage 2 and the float16 export; returns (the stage-1 adapter, the exported one)."""
    stage1 = runs.stage1("stage1")
    stage2 = runs.stage2("stage2", init_from=stage1)
    adapter = runs.out / ADAPTER_FILE
    run_stage("export", adapter, lambda: _export(stage2, adapter))
    return stage1, adapter


@dataclass(frozen=True)
class StageRuns:
    """Stage runs on one M³FT folder's data set and diffusers SDXL, each resumable in
    <out>/runs/<name> (M³FT itself, and the ablations of train/world/report.py)."""

    out: Path
    vlm: Path
    short: bool

    def stage1(self, name: str, extra: tuple[str, ...] = ()) -> Path:
        return _stage_run(1, self.out / "runs" / name, self.stage1_arguments(extra))

    def stage2(self, name: str, init_from: Path, extra: tuple[str, ...] = ()) -> Path:
        return _stage_run(2, self.out / "runs" / name, self.stage2_arguments(init_from, extra))

    def stage1_arguments(self, extra: tuple[str, ...] = ()) -> list[str]:
        """`train.stage1`'s command line for this folder (the recipe's config and the folder's data)."""
        data = self.out / "data"
        return ["--config", str(STAGE_CONFIGS[1]), *self._common(),
                "--data.train", f"[{data}/train/shards/world-*.tar]",
                "--data.validation", f"[{data}/validation/shards/world-00000.tar]",
                *(SHORT_STAGE1 if self.short else []), *extra]

    def stage2_arguments(self, init_from: Path, extra: tuple[str, ...] = ()) -> list[str]:
        """`train.stage2`'s command line for this folder, from the stage-1 adapter `init_from`."""
        data = self.out / "data"
        files, validation = (", ".join(str(data / split / file) for file in stage2_files(split))
                             for split in ("train", "validation"))
        return ["--config", str(STAGE_CONFIGS[2]), *self._common(), "--init-from", str(init_from),
                "--data.train", f"[{files}]", "--data.validation", f"[{validation}]", *extra]

    def _common(self) -> list[str]:
        return ["--model.vlm", str(self.vlm), "--model.sdxl", str(self.out / "sdxl"), "--resume", "latest",
                "--cache.dir", str(self.out / "cache"), *(SHORT if self.short else []),
                *([] if CPU_HAS_BF16_UNITS else FLOAT32)]


def stage2_files(split: str) -> list[str]:
    """The files of a data split ("train" or "validation") that stage 2 reads, as
    world_stage2.yaml names them (the recipe)."""
    return [Path(path).name for path in read_yaml(STAGE_CONFIGS[2])["data"][split]]


def prepare_runs(config: M3ftConfig) -> StageRuns:
    """The data set and the diffusers SDXL that every stage run of `config.out` shares."""
    out, weights = Path(config.out), WeightsLayout(Path(config.weights))
    # A data folder from before the validation split is written again (the same train and test bytes).
    run_stage("data", out / "data" / "validation", lambda: _write_data(out / "data", config))
    run_stage("sdxl", out / "sdxl" / "model_index.json", lambda: _write_sdxl(out / "sdxl", weights))
    return StageRuns(out, weights.vlm, config.schedule == "short")


def _write_data(data: Path, config: M3ftConfig) -> None:
    from .dataset import write_data
    sizes = SHORT_DATA_SIZES if config.schedule == "short" else {}
    write_data(DataConfig(out=str(data), seed=config.seed, **sizes))


def _write_sdxl(sdxl: Path, weights: WeightsLayout) -> None:
    from .diffusers_folder import write_diffusers_folder
    write_diffusers_folder(DiffusersConfig(out=str(sdxl), weights=str(weights.root)))


def _stage_run(stage: int, output_dir: Path, arguments: list[str]) -> Path:
    """`python -m train.stage<stage>` with the world recipe, in a process of its own (Accelerate's
    state is per process, and each stage sets its own precision); returns its adapter file."""
    from ..trainer import DEFAULT_EXPORT_NAME

    exported = output_dir / DEFAULT_EXPORT_NAME
    command = [sys.executable, "-m", f"train.stage{stage}", *arguments, "--engine.output_dir", str(output_dir)]

    def train() -> None:
        status = subprocess.run(command, cwd=REPO, check=False).returncode
        if status != 0:
            raise ConfigError(f"M³FT stage {stage} stopped (exit status {status}); its log above says why. "
                              f"Fix that and run the same command again: it resumes from {output_dir}.")
    run_stage(output_dir.name, exported, train)
    return exported


def _export(stage2: Path, adapter: Path) -> None:
    from ..export import export_checkpoint
    export_checkpoint(stage2.parent, adapter, "float16")
