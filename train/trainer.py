"""The M³FT trainer (both stages). `fit()` is the list of steps of a run; each step is a
small method. Reproducible by construction: the data order is a seeded sampler per
epoch, and every random draw of a step (latent sample, noise, timesteps) comes from a
generator seeded by (seed, epoch, batch), so `--resume latest` continues exactly."""

from __future__ import annotations

import gc
import hashlib
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedDataParallelKwargs,
    DistributedType,
    ProjectConfiguration,
    gather_object,
    set_seed,
)
from diffusers.optimization import get_scheduler
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from m2chat_core.adapter import trainable_parameter_groups
from m2chat_core.adapter_file import VLMDeltas, load_adapter_file, save_adapter_file
from m2chat_core.atomic_files import atomic_path
from m2chat_core.m3ft_settings import VLM_GROUPS
from m2chat_core.teacher_forcing import TeacherForcingBatch
from m2chat_core.vlm import decoder_layer_count, load_vlm

from .adapter_init import adapter_from_file, check_chosen_layers, mean_caption_targets, new_adapter, start_at_mean_target
from .checkpoints import (
    ADAPTER_FILE_NAME,
    CONFIG_FILE_NAME,
    FSDP_OPTIMIZER_FILE_NAME,
    CheckpointError,
    TrainerState,
    checkpoints_folder,
    latest_checkpoint,
    load_checkpoint_state,
    output_is_shared,
    read_fsdp_optimizer_state,
    read_state,
    remove_staging_leftovers,
    save_checkpoint,
    write_fsdp_optimizer_state,
    writes_shared_parts,
)
from .config import ConfigError, Stage1Config, TrainConfig
from .data.batches import TrainingBatch
from .deepspeed_steps import (
    CoalescedBackward,
    load_models_whole,
    process_group_settings,
    refuse_unsupported_deepspeed,
    register_parameters_read_outside_modules,
    zero_stage,
)
from .faults import DataFault, LaunchFault, output_fault
from .sharding import (
    gathered_state_dict,
    load_whole_optimizer_state,
    load_whole_state_dict,
    parameter_count,
    partition_sizes,
    whole_optimizer_state,
    whole_parameters,
)
from .loaders import make_loader
from .objective import DiffusionTargets, M3FTModel, diffusion_targets
from .precision import training_attention, warn_if_bf16_is_emulated
from .sdxl import FrozenEncoders, load_sdxl
from .validation import evaluate
from .vlm_training import enable_vlm_groups, export_vlm_deltas, load_vlm_deltas

logger = logging.getLogger(__name__)

DEFAULT_EXPORT_NAME = "m2chat-adapter.safetensors"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_MIXED_PRECISION_DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; a resumable checkpoint was saved first."""


@dataclass
class FitResult:
    global_step: int
    export_path: Path
    validation: dict[int, dict[str, float]] = field(default_factory=dict)  # step -> metrics
    skipped: Counter = field(default_factory=Counter)  # reason -> samples, over all processes


def step_generator(*parts: object) -> torch.Generator:
    """A CPU generator seeded by a hash of `parts` (seed, epoch, batch...)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


class Trainer:
    """Runs one M³FT stage from a validated config: `Trainer(config).fit()`."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.stage = config.stage
        self.global_step = 0
        self.saved_step: int | None = None  # step of the newest checkpoint this run wrote or resumed from
        self.skipped: Counter = Counter()
        self.replayable: tuple[TeacherForcingBatch, DiffusionTargets] | None = None  # the last batch, where parameters are sharded
        self.validation: dict[int, dict[str, float]] = {}

    def fit(self) -> FitResult:
        self.check_against_the_vlm_config()
        self.prepare_accelerator()
        self.resume_from = self.checkpoint_to_resume()  # refused here, before minutes of model loading
        self.load_models()
        self.select_trainable_groups()
        self.prepare_data()
        self.initialise_adapter_outputs()
        self.prepare_optimizer()
        self.prepare_distributed()
        self.resume()
        self.log_start()
        with training_attention(self.config.engine.mixed_precision, self.accelerator.device):
            if self.global_step == 0:
                self.validate()
            self.train()
            self.validate()
        return self.finish()

    # --- set-up -------------------------------------------------------------------------

    def check_against_the_vlm_config(self) -> None:
        """Settings only the VLM can judge, read from its config before anything is written or loaded."""
        if isinstance(self.config, Stage1Config):
            model = self.config.model
            layers = decoder_layer_count(model.vlm, trust_remote_code=model.trust_remote_code)
            check_chosen_layers(self.config.adapter.chosen_layers, layers, Path(model.vlm).name)

    def prepare_accelerator(self) -> None:
        engine = self.config.engine
        self.output_dir = Path(engine.output_dir)
        self.accelerator = Accelerator(
            gradient_accumulation_steps=self.config.optim.gradient_accumulation_steps,
            mixed_precision=engine.mixed_precision,
            log_with=None if engine.report_to == "none" else engine.report_to,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs")),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=engine.seed),
            step_scheduler_with_optimizer=False,  # the schedule counts optimizer steps, at any process count
            # M3FTModel gives every trained parameter a gradient (zero where unused, e.g. the f_img
            # branch without input images), so DDP need not search the graph for unused ones.
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False), *process_group_settings()],
        )
        refuse_duplicate_runs(self.accelerator.num_processes)
        warn_if_fsdp_is_off(self.accelerator)
        refuse_unsupported_deepspeed(self.accelerator)
        warn_if_bf16_is_emulated(engine.mixed_precision, self.accelerator.device)
        self.zero3 = zero_stage(self.accelerator) == 3
        if self.zero3:
            load_models_whole()
        # FSDP and ZeRO-3 shard every parameter: their forward is a collective that every process runs.
        self.fsdp = self.accelerator.distributed_type == DistributedType.FSDP
        self.parameters_sharded = self.fsdp or self.zero3
        set_seed(engine.seed)
        optim = self.config.optim
        self.global_batch = optim.batch_size * optim.gradient_accumulation_steps * self.accelerator.num_processes
        self.checkpoints = checkpoints_folder(self.output_dir)
        try:
            self.output_shared = output_is_shared(self.accelerator, self.output_dir)
            if writes_shared_parts(self.accelerator, self.output_shared):
                remove_staging_leftovers(self.checkpoints)
                with atomic_path(self.output_dir / CONFIG_FILE_NAME) as temporary:
                    temporary.write_text(yaml.safe_dump(self.config.to_dict(), sort_keys=False))
        except OSError as error:
            raise output_fault(self.output_dir, error) from error
        self.accelerator.wait_for_everyone()

    def load_models(self) -> None:
        model = self.config.model
        dtype = self._weight_dtype()
        device = self.accelerator.device
        self.vlm = load_vlm(model.vlm, dtype=dtype, device=device, trust_remote_code=model.trust_remote_code)
        self.sdxl = load_sdxl(model.sdxl, model.sdxl_config or None, dtype, device)
        self.frozen = FrozenEncoders(self.sdxl)
        if isinstance(self.config, Stage1Config):
            self.adapter = new_adapter(self.config.adapter, self.vlm)
        else:
            self.adapter = adapter_from_file(self.config.init_from, self.vlm, self.config.gate_mode)

    def _weight_dtype(self) -> torch.dtype:
        name = self.config.model.weight_dtype
        return _MIXED_PRECISION_DTYPES[self.config.engine.mixed_precision] if name == "auto" else _DTYPES[name]

    def select_trainable_groups(self) -> None:
        """Freeze everything, then unfreeze exactly the configured groups."""
        config = self.config
        adapter_groups = trainable_parameter_groups(self.adapter, self.stage)
        self.adapter.requires_grad_(False)  # SDXL is loaded frozen
        vlm_groups = enable_vlm_groups(
            self.vlm.model, [group for group in config.groups if group in VLM_GROUPS], getattr(config, "lora", None)
        )
        self.groups = {group: {**adapter_groups, **vlm_groups}[group] for group in config.groups}
        self.trainable = [parameter for group in self.groups.values() for parameter in group.values()]
        for parameter in self.trainable:
            parameter.requires_grad_(True)
        if config.model.gradient_checkpointing:
            self.vlm.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.sdxl.unet.enable_gradient_checkpointing()
        # Train mode for LoRA dropout and gradient checkpointing; the tiny and LLaVA
        # language models have no other dropout.
        self.vlm.model.train(bool(vlm_groups) or config.model.gradient_checkpointing)
        self.model = M3FTModel(
            self.vlm,
            self.adapter,
            self.sdxl.unet,
            self.sdxl.noise_scheduler,
            stage=self.stage,
            phi=config.loss.phi,
            lambda_text=config.loss.lambda_text,
            ddpm_weight=config.loss.ddpm_weight,
            blank_picture=self.vlm.blank_picture_inputs() if self.parameters_sharded else None,
        )

    def prepare_data(self) -> None:
        data = self.config.data
        self.train_loader = self.accelerator.prepare_data_loader(self._loader(data.train, shuffle=True), device_placement=False)
        self.validation_loader = self._loader(data.validation, shuffle=False) if data.validation else None

    def _loader(self, entries: tuple[str, ...], *, shuffle: bool) -> DataLoader:
        return make_loader(
            self.config,
            entries,
            shuffle=shuffle,
            vlm=self.vlm,
            num_image_tokens=self.adapter.config.num_image_tokens,
            sdxl=self.sdxl,
            frozen=self.frozen,
            cache_guard=self.accelerator.main_process_first,
        )

    def initialise_adapter_outputs(self) -> None:
        """Stage 1: the output heads start at the mean CLIP target (adapter.mean_init_samples)."""
        if not isinstance(self.config, Stage1Config) or not self.config.adapter.mean_init_samples:
            return
        dataset = self.train_loader.dataset
        mean_context, mean_pooled = mean_caption_targets(
            (dataset[index] for index in range(len(dataset))), self.frozen, self.config.adapter.mean_init_samples
        )
        start_at_mean_target(self.adapter, mean_context, mean_pooled)
        logger.info("The adapter's output heads start at the mean CLIP target of the first training samples")

    def prepare_optimizer(self) -> None:
        optim = self.config.optim
        decayed = [parameter for parameter in self.trainable if parameter.ndim >= 2]
        not_decayed = [parameter for parameter in self.trainable if parameter.ndim < 2]  # norms, biases, gate
        self.optimizer = torch.optim.AdamW(
            [{"params": decayed, "weight_decay": optim.weight_decay}, {"params": not_decayed, "weight_decay": 0.0}],
            lr=optim.lr,
            betas=optim.betas,
            eps=optim.eps,
        )
        if not len(self.train_loader):
            raise ValueError(f"data.train {list(self.config.data.train)} holds no samples.")
        self.steps_per_epoch = math.ceil(len(self.train_loader) / optim.gradient_accumulation_steps)
        self.max_steps = optim.epochs * self.steps_per_epoch
        if optim.max_steps:
            self.max_steps = min(self.max_steps, optim.max_steps)
        # Stepped once per optimizer step (train_epoch), so the schedule is the same at any process count.
        self.lr_scheduler = get_scheduler(
            optim.lr_scheduler, self.optimizer, num_warmup_steps=optim.warmup_steps, num_training_steps=self.max_steps
        )

    def prepare_distributed(self) -> None:
        accelerator = self.accelerator
        if accelerator.state.deepspeed_plugin is not None:
            # The train loader was prepared on its own (prepare_data), so DeepSpeed cannot read
            # its per-GPU batch from a loader passed here; give it from the config.
            accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = self.config.optim.batch_size
        if self.zero3:
            register_parameters_read_outside_modules(self.model, self.trainable)
        self.model, self.optimizer, self.lr_scheduler = accelerator.prepare(self.model, self.optimizer, self.lr_scheduler)
        if self.fsdp:  # fully_shard put new (DTensor) parameters in place of the trained ones
            self.trainable = [parameter for parameter in self.model.parameters() if parameter.requires_grad]
        self.backward = CoalescedBackward(accelerator) if accelerator.state.deepspeed_plugin else accelerator.backward
        # The trained weights go into each checkpoint as an adapter file (write_checkpoint_files);
        # keep accelerate from also saving and loading the whole model with its frozen VLM and UNet.
        accelerator.register_save_state_pre_hook(lambda models, weights, output_dir: weights.clear())
        accelerator.register_load_state_pre_hook(lambda models, input_dir: models.clear())

    def checkpoint_to_resume(self) -> tuple[Path, TrainerState] | None:
        """--resume's checkpoint and its state, refused (naming the fix) where this run cannot continue it."""
        resume = self.config.resume
        if not resume:
            return None
        checkpoint = latest_checkpoint(self.checkpoints) if resume == "latest" else Path(resume)
        if checkpoint is None:
            logger.info("--resume latest: no checkpoint in %s yet, starting from the beginning", self.checkpoints)
            return None
        state = read_state(checkpoint)
        if state.stage != self.stage:
            start_from = (f" To start stage 2 from it, pass --init-from {checkpoint / ADAPTER_FILE_NAME} without --resume."
                          if self.stage == 2 else "")
            raise CheckpointError(f"{checkpoint} is a stage-{state.stage} checkpoint; this is stage {self.stage}.{start_from}")
        self.check_resumable_here(checkpoint, state)
        return checkpoint, state

    def resume(self) -> None:
        if self.resume_from is None:
            return
        checkpoint, state = self.resume_from
        if state.max_steps is not None and state.max_steps != self.max_steps:
            logger.warning("%s was written by a run of %d steps; this one runs %d, so the LR schedule changes shape",
                           checkpoint, state.max_steps, self.max_steps)
        load_checkpoint_state(self.accelerator, checkpoint)
        if not self.zero3:  # ZeRO-3's engine state restores its partitions of the trained weights
            trained = load_adapter_file(checkpoint / ADAPTER_FILE_NAME)
            load_whole_state_dict(self.adapter, trained.adapter_state)
            if trained.vlm_deltas is not None:
                load_vlm_deltas(self.vlm.model, trained.vlm_deltas)
        if self.fsdp:
            load_whole_optimizer_state(self.model, self.optimizer.optimizer, read_fsdp_optimizer_state(checkpoint))
        self.global_step = self.saved_step = state.global_step
        # accelerate restores its micro-batch count of the run that saved; with another process
        # count that run accumulated another number of batches per step, so count afresh.
        self.accelerator.step = self.global_step * self.config.optim.gradient_accumulation_steps
        if self.accelerator.is_main_process:
            logger.info("Resumed from %s at step %d", checkpoint, self.global_step)

    def check_resumable_here(self, checkpoint: Path, state: TrainerState) -> None:
        """The same schedule and data order need the same global batch (a global step is
        the same samples at any process count); refuse otherwise, naming the setting.
        DeepSpeed's ZeRO state is partitioned by process: it resumes at its own process count."""
        processes = self.accelerator.num_processes
        written_under_fsdp = (checkpoint / FSDP_OPTIMIZER_FILE_NAME).is_file()
        if written_under_fsdp != self.fsdp:
            raise CheckpointError(
                f"{checkpoint} was written by a run {'under' if written_under_fsdp else 'without'} FSDP, and this run "
                f"{'is not' if written_under_fsdp else 'is'}; their optimizer states are stored differently. Resume it "
                "with the accelerate config of the run that wrote it."
            )
        if self.accelerator.state.deepspeed_plugin and state.num_processes not in (None, processes):
            raise CheckpointError(
                f"{checkpoint} holds DeepSpeed ZeRO state partitioned over {state.num_processes} processes, and this "
                f"run has {processes}; DeepSpeed cannot partition it anew. Resume with {state.num_processes} "
                "processes, or train with train/accelerate/ddp.yaml, whose checkpoints resume at any process count."
            )
        if state.global_batch is None or state.global_batch == self.global_batch:
            return
        optim = self.config.optim
        accumulation, remainder = divmod(state.global_batch, optim.batch_size * processes)
        fix = (f"set --optim.gradient_accumulation_steps={accumulation}" if accumulation and not remainder
               else f"choose optim.batch_size x optim.gradient_accumulation_steps x {processes} processes = {state.global_batch}")
        raise ConfigError(
            f"{checkpoint} was trained with a global batch of {state.global_batch} samples per step "
            f"({state.num_processes} processes); this run's is {self.global_batch} (batch {optim.batch_size} x "
            f"accumulation {optim.gradient_accumulation_steps} x {processes} processes). To continue the same schedule "
            f"and data order, {fix}."
        )

    def log_start(self) -> None:
        self.accelerator.init_trackers(f"m2chat-stage{self.stage}", config=_flat_hyperparameters(self.config.to_dict()))
        if not self.accelerator.is_main_process:
            return
        counts = {group: sum(map(parameter_count, parameters.values())) for group, parameters in self.groups.items()}
        frozen = sum(
            parameter_count(parameter)
            for module in (self.adapter, self.vlm.model, self.sdxl.unet, self.sdxl.vae, self.sdxl.text_encoder, self.sdxl.text_encoder_2)
            for parameter in module.parameters()
            if not parameter.requires_grad
        )
        lines = [f"  {group:<17}{count:>15,} parameters" for group, count in counts.items()]
        logger.info(
            "Stage %d trains %d groups (%s parameters):\n%s\n  %-17s%15s parameters",
            self.stage, len(counts), f"{sum(counts.values()):,}", "\n".join(lines), "frozen", f"{frozen:,}",
        )
        if self.parameters_sharded:
            held, whole = partition_sizes(self.model.module if self.zero3 else self.model)
            logger.info("%s: each process holds %s of the model's %s parameters", "ZeRO-3" if self.zero3 else "FSDP",
                        f"{held:,}", f"{whole:,}")
        logger.info(
            "%d optimizer steps (%d per epoch, batch %d x %d accumulation x %d processes)",
            self.max_steps, self.steps_per_epoch, self.config.optim.batch_size,
            self.config.optim.gradient_accumulation_steps, self.accelerator.num_processes,
        )

    # --- training ---------------------------------------------------------------------------

    def train(self) -> None:
        self.progress = tqdm(
            total=self.max_steps,
            initial=self.global_step,
            desc=f"M³FT stage {self.stage}",
            disable=not self.accelerator.is_local_main_process,
        )
        self.pending_logs: list[dict[str, float]] = []
        while self.global_step < self.max_steps:
            self.train_epoch(self.global_step // self.steps_per_epoch)
        self.progress.close()

    def train_epoch(self, epoch: int) -> None:
        """Run one epoch from where the global step says it stands (exactly, on resume)."""
        accelerator = self.accelerator
        first_batch = (self.global_step - epoch * self.steps_per_epoch) * self.config.optim.gradient_accumulation_steps
        self.train_loader.set_epoch(epoch)
        loader = accelerator.skip_first_batches(self.train_loader, first_batch) if first_batch else self.train_loader
        loader.set_epoch(epoch)
        for batch_index, batch in enumerate(loader, start=first_batch):
            self.record_skipped(batch)
            with accelerator.accumulate(self.model):
                outputs = self.compute_losses(batch, epoch, batch_index)
                self.stop_if_not_finite(outputs)
                self.backward(outputs["total"])
                if accelerator.sync_gradients and self.config.optim.max_grad_norm:
                    accelerator.clip_grad_norm_(self.trainable, self.config.optim.max_grad_norm)
                self.optimizer.step()
                if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
                    self.lr_scheduler.step()
                self.optimizer.zero_grad()
            self.pending_logs.append({name: float(value.detach()) for name, value in outputs.items()})
            if accelerator.sync_gradients:
                self.after_optimizer_step()
                if self.global_step >= self.max_steps:
                    return

    def record_skipped(self, batch: TrainingBatch) -> None:
        for sample in batch.skipped:
            self.skipped[sample.reason] += 1
            logger.warning("Skipped sample %s: %s", sample.key, sample.reason)

    def compute_losses(self, batch: TrainingBatch, epoch: int, batch_index: int) -> dict[str, torch.Tensor]:
        if not len(batch):
            return self.without_samples()
        # Keyed by the batch's place in the epoch's global order (process i takes batches i, i+P, ...),
        # so a run resumed at another process count draws the same noise for the same samples.
        global_batch_index = batch_index * self.accelerator.num_processes + self.accelerator.process_index
        generator = step_generator(self.config.engine.seed, "train", epoch, global_batch_index)
        inputs = (batch.forced, self._targets(batch, generator))
        if self.parameters_sharded:
            self.replayable = inputs
        return self.model(*inputs)

    def without_samples(self) -> dict[str, torch.Tensor]:
        """A batch whose samples were all skipped: a zero loss. Where parameters are sharded,
        the other processes' forward waits for this one's, so it runs the last batch again
        with weight 0."""
        if not self.parameters_sharded:
            return self.model(None, None)
        if self.replayable is None:
            raise DataFault(
                "Every sample of this process's first batch in this run was skipped (see the warnings above); with "
                "sharded parameters (ZeRO-3, FSDP) every process needs samples in its first batch. Remove the bad "
                "samples from the data, or raise optim.batch_size."
            )
        return {"total": self.model(*self.replayable)["total"] * 0.0}

    def _targets(self, batch: TrainingBatch, generator: torch.Generator) -> DiffusionTargets:
        num_train_timesteps = self.sdxl.noise_scheduler.config.num_train_timesteps
        return diffusion_targets(batch, self.frozen, generator, num_train_timesteps, self.accelerator.device)

    def stop_if_not_finite(self, outputs: dict[str, torch.Tensor]) -> None:
        """On a NaN/inf loss (on any process), save a resumable checkpoint and stop."""
        finite = torch.isfinite(outputs["total"].detach()).float().reshape(1)
        if bool(self.accelerator.gather(finite).min() > 0):
            return
        terms = {name: float(value.detach()) for name, value in outputs.items()}
        checkpoint = self.save_checkpoint()
        raise NonFiniteLossError(
            f"Stage {self.stage} loss is not finite at step {self.global_step + 1} ({terms}); stopped after saving "
            f"{checkpoint}. Lower optim.lr or set optim.max_grad_norm, then continue with --resume latest."
        )

    def after_optimizer_step(self) -> None:
        self.global_step += 1
        self.progress.update(1)
        engine = self.config.engine
        if self.global_step % engine.log_every == 0 or self.global_step == self.max_steps:
            self.log_training()
        if engine.checkpoint_every and self.global_step % engine.checkpoint_every == 0:
            self.save_checkpoint()
        if engine.validate_every and self.global_step % engine.validate_every == 0 and self.global_step < self.max_steps:
            self.validate()

    def log_training(self) -> None:
        """Mean of each term since the last log over all processes, the learning rate and the
        skipped samples of all processes (every process calls this at the same step)."""
        gathered = gather_object([(self.pending_logs, sum(self.skipped.values()))])
        entries = [entry for pending, _ in gathered for entry in pending]
        names = {name for entry in entries for name in entry}
        logs = {
            f"train/{name}": sum(entry[name] for entry in entries if name in entry) / sum(name in entry for entry in entries)
            for name in names
        }
        logs["train/lr"] = self.lr_scheduler.get_last_lr()[0]
        logs["train/skipped_samples"] = sum(skipped for _, skipped in gathered)
        self.pending_logs = []
        self.accelerator.log(logs, step=self.global_step)
        self.progress.set_postfix({name.split("/")[1]: f"{value:.4g}" for name, value in logs.items() if "skipped" not in name})

    def validate(self) -> None:
        """On the main process, or on every process where the parameters are sharded (each
        evaluates the whole validation set; the main process logs)."""
        if self.validation_loader is None:
            return
        if self.accelerator.is_main_process or self.parameters_sharded:
            model = self.model if self.parameters_sharded else self.accelerator.unwrap_model(self.model)
            was_training = self.vlm.model.training
            self.vlm.model.eval()
            seed = self.config.engine.seed

            def targets_of(batch: TrainingBatch, index: int) -> DiffusionTargets:
                return self._targets(batch, step_generator(seed, "validation", index))

            metrics = evaluate(model, self.validation_loader, targets_of)
            self.vlm.model.train(was_training)
        if self.accelerator.is_main_process:
            self.validation[self.global_step] = metrics
            self.accelerator.log({f"validation/{name}": value for name, value in metrics.items()}, step=self.global_step)
            logger.info("Validation at step %d: %s", self.global_step, {name: round(value, 5) for name, value in metrics.items()})
        self.accelerator.wait_for_everyone()

    # --- checkpoints and export ----------------------------------------------------------------

    def save_checkpoint(self, trained: tuple[dict[str, torch.Tensor], VLMDeltas | None] | None = None) -> Path:
        """Checkpoint the current step, unless it already is (decided alike on every process);
        `trained`: this step's `trained_tensors()` where the caller has them already."""
        if self.saved_step == self.global_step:
            return self.checkpoints / f"checkpoint-{self.global_step}"
        self.saved_step = self.global_step
        state = TrainerState(
            stage=self.stage,
            global_step=self.global_step,
            samples_seen=self.global_step * self.global_batch,
            global_batch=self.global_batch,
            max_steps=self.max_steps,
            num_processes=self.accelerator.num_processes,
        )
        trained = trained or self.trained_tensors()
        optimizer_state = whole_optimizer_state(self.model, self.optimizer.optimizer) if self.fsdp else None  # a collective

        def write_files(folder: Path) -> None:
            self.write_adapter(folder / ADAPTER_FILE_NAME, trained)
            (folder / CONFIG_FILE_NAME).write_text(yaml.safe_dump(self.config.to_dict(), sort_keys=False))
            if optimizer_state is not None:
                write_fsdp_optimizer_state(folder, optimizer_state)

        return save_checkpoint(
            self.accelerator, self.checkpoints, state, write_files, self.config.engine.checkpoint_total_limit,
            output_shared=self.output_shared,
        )

    def trained_tensors(self) -> tuple[dict[str, torch.Tensor], VLMDeltas | None]:
        """The adapter state and the VLM deltas, whole; every process calls this, since
        gathering sharded parameters is a collective."""
        vlm_groups = {group: parameters for group, parameters in self.groups.items() if group in VLM_GROUPS}
        with whole_parameters([*self.adapter.parameters(), *self.trainable]):
            adapter_state = gathered_state_dict(self.adapter)
            deltas = export_vlm_deltas(self.vlm.model, vlm_groups, getattr(self.config, "lora", None)) if vlm_groups else None
        return adapter_state, deltas

    def write_adapter(self, path: Path, trained: tuple[dict[str, torch.Tensor], VLMDeltas | None]) -> Path:
        """The adapter file: the adapter (with gate and special tokens) and the VLM deltas."""
        adapter_state, deltas = trained
        return save_adapter_file(path, self.adapter, deltas, training_config=self.config.shareable_dict(),
                                 adapter_state=adapter_state)

    def finish(self) -> FitResult:
        trained = self.trained_tensors()  # gathered once for the last checkpoint and the export
        self.save_checkpoint(trained)
        export_path = Path(self.config.engine.export_path or self.output_dir / DEFAULT_EXPORT_NAME)
        if self.accelerator.is_main_process:
            try:
                export_path.parent.mkdir(parents=True, exist_ok=True)
                self.write_adapter(export_path, trained)
            except OSError as error:
                raise output_fault(export_path.parent, error, "engine.export_path") from error
            logger.info("Exported the stage-%d adapter to %s", self.stage, export_path)
        skipped = Counter()
        for counts in gather_object([dict(self.skipped)]):
            skipped.update(counts)
        if skipped and self.accelerator.is_main_process:
            summary = ", ".join(f"{reason}: {count}" for reason, count in sorted(skipped.items()))
            logger.warning("Skipped %d bad samples in training (%s)", sum(skipped.values()), summary)
        self.release_distributed_model()
        self.accelerator.end_training()
        return FitResult(self.global_step, export_path, self.validation, skipped)

    def release_distributed_model(self) -> None:
        """Free the wrapped model (DDP's Reducer) while the process group is still registered.
        Freed after `end_training`, the Reducer held the group's last reference and freed it
        itself, joining gloo's threads with the GIL held: a deadlock when one of them was still
        releasing a tensor (a two-process run hung at exit in CI)."""
        self.model = self.optimizer = self.lr_scheduler = None
        self.accelerator.free_memory()
        gc.collect()  # the wrapper's reference cycles, before the group goes


def refuse_duplicate_runs(num_processes: int) -> None:
    """A launcher that starts N processes which accelerate sees as N single-process runs
    (no GPU for a multi-GPU config, or a CPU machine without --cpu) would train N copies
    into the same output folder; stop instead."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != num_processes:
        raise LaunchFault(
            f"The launcher started {launched} processes (WORLD_SIZE={launched}), but accelerate sees {num_processes}, "
            "so each would train alone and overwrite the same output folder. On a machine without GPUs, launch "
            "`ACCELERATE_USE_CPU=true torchrun --nproc_per_node N -m train.stage1 ...` (`accelerate launch --cpu` "
            "starts one process whatever --num_processes says); on GPUs, check that "
            "torch.cuda.device_count() sees them and that the accelerate config does not say use_cpu: true."
        )


def warn_if_fsdp_is_off(accelerator: Accelerator) -> None:
    """accelerate turns an FSDP config on only on GPUs (and other accelerators); on CPU
    processes it trains data-parallel instead, every process holding the whole model."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and accelerator.distributed_type != DistributedType.FSDP:
        logger.warning("The accelerate config asks for FSDP, but accelerate left it off (it runs FSDP on GPUs only): "
                       "this %s run shards nothing, every process holds the whole model.", accelerator.distributed_type.value)


def _flat_hyperparameters(values: dict, prefix: str = "") -> dict[str, float | int | str | bool]:
    """Nested config as {"section.field": scalar} for TensorBoard's hparams (lists as text)."""
    flat: dict[str, float | int | str | bool] = {}
    for name, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat_hyperparameters(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = str(value) if isinstance(value, list) else value
    return flat
