"""The modules stage 1 and 2 train, sharded with PyTorch's FSDP2 (`fully_shard`) over two
CPU processes (gloo): the gate's one-element parameters shard, two sharded processes take
the same optimizer steps as one process on both batches, and the adapter file is written
from the gathered state. accelerate's FSDP path needs GPUs; this is the project's part of it."""

import os
import sys
import textwrap

from comfyui_env import HUNG_AFTER_S
from harness.training import REPO_ROOT, assert_same_steps
from process_groups import free_port, run_launcher

from m2chat_core.adapter_file import load_adapter_file
from m2chat_core.gate import INITIAL_GATE_SCALE

WORKER = textwrap.dedent("""
    import copy, sys
    from pathlib import Path
    import torch, torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from m2chat_core.adapter import M3Adapter, M3AdapterConfig
    from m2chat_core.adapter_file import save_adapter_file
    from m2chat_core.encoding import VLMFeatures
    from train.sharding import gathered_state_dict

    dist.init_process_group("gloo")
    rank, out = dist.get_rank(), Path(sys.argv[1])
    config = M3AdapterConfig(vlm_hidden_size=16, vision_feature_size=12, chosen_layers=(-1, -2), width=16,
                             depth=2, heads=2, num_image_tokens=4, gate_mode="learned")
    torch.manual_seed(0)
    reference = M3Adapter(config)
    sharded = copy.deepcopy(reference)
    mesh = init_device_mesh("cpu", (2,))
    for block in sharded.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(sharded, mesh=mesh)  # the rest, the gate's a and b included
    assert all(type(parameter).__name__ == "DTensor" for parameter in sharded.parameters())

    def features(seed):
        generator = torch.Generator().manual_seed(seed)
        return VLMFeatures(
            caption_hidden_states=torch.randn(2, 2, 6, 16, generator=generator),
            caption_mask=torch.ones(2, 6, dtype=torch.bool),
            answer_embedding=torch.randn(2, 16, generator=generator),
            caption_embedding=torch.randn(2, 16, generator=generator),
            has_answer=torch.ones(2, dtype=torch.bool),
            image_features=torch.randn(2, 5, 12, generator=generator),
        )

    def loss(adapter, batch):
        output = adapter(batch)
        return output.context.square().mean() + output.pooled.square().mean() + output.gate.mean()

    optimizers = [torch.optim.AdamW(model.parameters(), lr=1e-2) for model in (reference, sharded)]
    for step in range(3):
        batches = [features(10 * step), features(10 * step + 1)]  # process i trains on batch i
        loss(sharded, batches[rank]).backward()  # FSDP2 averages the gradients over processes
        ((loss(reference, batches[0]) + loss(reference, batches[1])) / 2).backward()
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad()
    state = gathered_state_dict(sharded)  # every process: a collective
    if rank == 0:
        save_adapter_file(out / "sharded.safetensors", sharded, adapter_state=state)
        save_adapter_file(out / "reference.safetensors", reference)
    dist.barrier()
    dist.destroy_process_group()
""")


def test_fully_sharded_adapter_trains_like_one_process_and_exports_gathered(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", free_port(), str(script), str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    result = run_launcher(command, cwd=REPO_ROOT, env=env, timeout=HUNG_AFTER_S)
    assert result.returncode == 0, result.stderr[-3000:]
    sharded = load_adapter_file(tmp_path / "sharded.safetensors").adapter_state
    reference = load_adapter_file(tmp_path / "reference.safetensors").adapter_state
    assert sharded["learned_gate.scale"].shape == (1,)
    assert_same_steps(sharded, reference)
    assert abs(float(sharded["learned_gate.scale"]) - INITIAL_GATE_SCALE) > 1e-4  # the sharded gate trained
