"""Run `python -m MODULE ARGS` (e.g. train.stage1) under `accelerate launch` with an FSDP config
on CPU processes. accelerate turns FSDP on only for GPU-like process groups (never for
MULTI_CPU), so this makes it take the gloo CPU group for one: its real FSDP2 path then runs
here (fully_shard of the layers the config names, its backward and gradient clipping), with
the trainer's own FSDP checkpoints. Usage: accelerate launch --config_file C fsdp_on_cpu.py MODULE ARGS"""

import runpy
import sys

from accelerate import PartialState
from accelerate.utils import DistributedType

PartialState(backend="gloo")  # the CPU process group (accelerate >= 1.11 names no backend on CPUs)
PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU  # where accelerate reads FSDP's config
module, sys.argv = sys.argv[1], [sys.argv[1], *sys.argv[2:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
