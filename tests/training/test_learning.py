"""Training really learns, changes only the configured groups, and stops cleanly on a NaN
(in-process runs of the trainer on the tiny assets)."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel

from m2chat_core.adapter_file import load_adapter_file
from m2chat_core.gate import INITIAL_GATE_SCALE, INITIAL_GATE_SHIFT
from m2chat_core.vlm import load_vlm
from train import objective
from train.checkpoints import list_checkpoints, read_state
from train.cli import parse_command_line
from train.config import Stage1Config, Stage2Config
from train.trainer import NonFiniteLossError, Trainer
from train.validation import ALIGN_BASELINE
from train.vlm_training import merge_vlm_deltas

# A learnable task: tiny-VLM hidden states of template captions -> tiny-CLIP targets of the
# same captions; validation uses held-out captions (new combinations of the words).
LEARNING_RUN = [
    "--optim.max_steps=160", "--optim.epochs=100", "--optim.batch_size=8", "--optim.lr=3e-3",
    "--optim.lr_scheduler=cosine", "--loss.phi=10", "--engine.checkpoint_every=0", "--engine.report_to=none",
    "--cache.enabled=true", "--cache.dtype=float32",
]


def _fit(runner, stage, output_dir, extra):
    config_class = Stage1Config if stage == 1 else Stage2Config
    trainer = Trainer(parse_command_line(config_class, runner.overrides(stage, output_dir) + extra))
    return trainer, trainer.fit()


def _assert_same_weights(trained: dict[str, torch.Tensor], stock: dict[str, torch.Tensor], skip=lambda name: False):
    compared = 0
    for name, tensor in stock.items():
        if not skip(name):
            assert torch.equal(trained[name], tensor), f"frozen weight {name} changed"
            compared += 1
    assert compared > 0


@pytest.fixture(scope="module")
def stage1(runner, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("learning-stage1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit(runner, 1, output_dir, LEARNING_RUN + [f"--cache.dir={output_dir / 'cache'}"])
    finally:
        torch.set_num_threads(threads)


def test_stage1_brings_heldout_alignment_below_half_the_mean_baseline(stage1):
    _, result = stage1
    final = result.validation[result.global_step]
    assert result.global_step == 160
    assert final["align"] <= 0.5 * final[ALIGN_BASELINE], final
    assert final["align"] < result.validation[0]["align"]


def test_stage1_leaves_every_frozen_weight_bit_identical(stage1, assets):
    trainer, _ = stage1
    _assert_same_weights(trainer.vlm.model.state_dict(), load_vlm(assets / "vlm").model.state_dict())
    stock_unet = UNet2DConditionModel.from_pretrained(assets / "sdxl", subfolder="unet", local_files_only=True)
    _assert_same_weights(trainer.sdxl.unet.state_dict(), stock_unet.state_dict())
    gate = trainer.adapter.learned_gate  # the gate trains in stage 2 only
    assert (gate.scale.item(), gate.shift.item()) == (INITIAL_GATE_SCALE, INITIAL_GATE_SHIFT)


def test_stage2_lowers_text_loss_and_its_lora_deltas_reproduce_the_trained_vlm(runner, stage1, assets, tmp_path, one_thread):
    init_from = stage1[1].export_path
    trainer, result = _fit(runner, 2, tmp_path, [
        f"--init-from={init_from}", "--groups=[adapter, special_tokens, gate, projector, llm_lora]",
        # LoRA on the MLPs too, at 3e-3: the random tiny LLM's text loss then falls steadily (to ~0.8x in
        # 36 steps); attention-only at 1e-2 plateaued near the 0.9x bound (one CI machine missed it) and,
        # run longer, swung back up to the starting loss by step 42.
        "--lora.rank=4", "--lora.target_modules=[q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]",
        "--optim.lr=3e-3", "--optim.max_steps=36", "--optim.epochs=10",
        f"--data.validation=[{assets}/dialogue/train.jsonl]", "--engine.checkpoint_every=0", "--engine.report_to=none",
    ])
    first, last = result.validation[0]["text"], result.validation[result.global_step]["text"]
    assert last < 0.9 * first, (first, last)

    model = trainer.vlm.model.eval()
    stock = load_vlm(assets / "vlm").model
    trained_state = {name.replace(".base_layer", ""): tensor for name, tensor in model.state_dict().items()}
    _assert_same_weights(trained_state, stock.state_dict(), skip=lambda name: "multi_modal_projector" in name)

    exported = load_adapter_file(result.export_path)
    assert exported.vlm_deltas.kind == "lora" and exported.vlm_deltas.config["r"] == 4
    merge_vlm_deltas(stock, exported.vlm_deltas)
    ids = torch.tensor([[1, 40, 41, 42, 43, 44]])
    with torch.no_grad():
        torch.testing.assert_close(stock(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


def test_nan_loss_saves_a_resumable_checkpoint_and_stops(runner, tmp_path, monkeypatch, one_thread):
    calls = {"count": 0}
    real_alignment_loss = objective.alignment_loss

    def alignment_loss_nan_on_third_step(*args):
        calls["count"] += 1
        loss = real_alignment_loss(*args)
        return loss * float("nan") if calls["count"] == 3 else loss

    arguments = ["--data.validation=[]", "--engine.checkpoint_every=0", "--engine.report_to=none", "--optim.max_steps=4"]
    monkeypatch.setattr(objective, "alignment_loss", alignment_loss_nan_on_third_step)
    with pytest.raises(NonFiniteLossError, match="not finite at step 3.*--resume latest"):
        _fit(runner, 1, tmp_path, arguments)
    checkpoints = list_checkpoints(tmp_path / "checkpoints")
    assert [read_state(checkpoint).global_step for checkpoint in checkpoints] == [2]
    assert not (tmp_path / "m2chat-adapter.safetensors").exists()

    monkeypatch.setattr(objective, "alignment_loss", real_alignment_loss)
    _, result = _fit(runner, 1, tmp_path, arguments + ["--resume=latest"])
    assert result.global_step == 4 and result.export_path.exists()
