"""`python -m train.world report`: the paper's tables and ablations on the world, from one command.

Trains, resumably, in <out>/m3ft (a build's folder: its M³FT runs are reused) M³FT and each
ablation: the recipe of train/configs/world_stage{1,2}.yaml with one setting changed (ABLATIONS).
Then it measures every row through a real ComfyUI server with the pack's nodes and native
KSampler (bench/bench_world.py, the judge reading every picture) on the same held-out cases
and seeds, and writes <out>/results.json and <out>/results.md. Each row's figures are kept in
<out>/measure (bench_world's --cache), so a killed measurement resumes where it stopped.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError
from .comfyui import REPO
from .config import M3ftConfig, ReportConfig
from .loop import logged_to, run_stage
from .m3ft import StageRuns, m3ft_stages, prepare_runs

logger = logging.getLogger(__name__)

RESULTS_JSON, RESULTS_MARKDOWN, MEASURED = "results.json", "results.md", "measure"
BENCH = REPO / "bench" / "bench_world.py"
MISSED_TARGETS_EXIT = 1  # bench_world's exit status when a target is missed: reported, not a failure


@dataclass(frozen=True)
class Ablation:
    """A row of the report: how its table names it, and its training run on StageRuns given
    M³FT's stage-1 adapter (returns the run's adapter file)."""

    label: str
    train: Callable[[StageRuns, Path], Path]


ABLATIONS = {
    "stage1_phi0": Ablation(  # Eq. 6 without L_align
        "ablation: stage 1 with φ = 0 (L_ddpm alone)",
        lambda runs, stage1: runs.stage1("stage1_phi0", ("--loss.phi", "0"))),
    "stage1_align_only": Ablation(  # the UNet is not run
        "ablation: stage 1 with L_align alone",
        lambda runs, stage1: runs.stage1("stage1_align_only", ("--loss.ddpm_weight", "0"))),
    "stage2_only": Ablation(  # from the adapter stage 1 starts from (stage 1 with 0 epochs exports it)
        "ablation: stage 2 without stage 1",
        lambda runs, stage1: runs.stage2(
            "stage2_only", init_from=runs.stage1("stage1_untrained", ("--optim.epochs", "0")))),
    "stage2_paper_gate": Ablation(  # g = cos(e_ans, e_cap) (Eq. 3) instead of the learned M³FT factor
        "ablation: stage 2 with the paper's gate",
        lambda runs, stage1: runs.stage2("stage2_paper_gate", init_from=stage1, extra=(
            "--gate_mode", "paper", "--groups", "[adapter, special_tokens, projector, llm_norms_biases]"))),
}


def write_report(config: ReportConfig) -> Path:
    """Train what is missing, measure every row; returns the Markdown table's path."""
    out = Path(config.out)
    m3ft = M3ftConfig(out=str(out / "m3ft"), weights=config.weights, schedule=config.schedule, seed=config.seed)
    with logged_to(out / "report.log"):
        runs = prepare_runs(m3ft)
        stage1, adapter = m3ft_stages(runs)
        rows = {"stage1": stage1, **{name: ablation.train(runs, stage1) for name, ablation in ABLATIONS.items()}}
        markdown = out / RESULTS_MARKDOWN
        run_stage("measure", markdown, lambda: _measure(config, adapter, rows, out))
    return markdown


def _measure(config: ReportConfig, adapter: Path, rows: dict[str, Path], out: Path) -> None:
    """bench/bench_world.py on the report's models: its own adapter in the m2chat rows, one row per other file."""
    command = [sys.executable, str(BENCH), "--prompts", str(config.prompts), "--steps", str(config.sampler_steps),
               "--weights", config.weights,
               "--world-adapter", str(adapter), *(f"--adapter={row}={file}" for row, file in rows.items()),
               "--json", str(out / RESULTS_JSON), "--markdown", str(out / RESULTS_MARKDOWN),
               "--cache", str(out / MEASURED)]
    status = subprocess.run(command, cwd=REPO, check=False).returncode
    if status not in (0, MISSED_TARGETS_EXIT):
        raise ConfigError(f"Measuring the rows stopped (exit status {status}); its output above says why. "
                          f"The trained runs and the rows measured so far (in {out / MEASURED}) are kept: "
                          f"run the same command again to measure the rest.")
    logger.info("Wrote %s and %s", out / RESULTS_JSON, out / RESULTS_MARKDOWN)
