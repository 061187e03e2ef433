"""SDXL from a single original-layout .safetensors checkpoint (plus a diffusers folder
for configs and tokenizers) loads the same weights as the diffusers folder, and stage 1
trains from it."""

import stat
import subprocess
import sys

import torch
from comfyui_env import HUNG_AFTER_S
from safetensors.torch import load_file, save_file

from harness.training import REPO_ROOT
from train.sdxl import load_sdxl
from train.trainer import DEFAULT_EXPORT_NAME


def test_single_file_sdxl_loads_the_folders_weights_and_trains(assets, runner, tmp_path, umask_022):
    single_file = tmp_path / "sdxl-single.safetensors"
    subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "sdxl_single_file.py"), str(assets / "sdxl"),
                    str(single_file)], check=True, capture_output=True, timeout=HUNG_AFTER_S)
    assert stat.S_IMODE(single_file.stat().st_mode) == 0o644  # not safetensors' owner-only 0600
    state = load_file(single_file)
    state["model.diffusion_model.out.2.bias"] += 1.0  # proves the weights come from the file
    save_file(state, single_file)
    cpu = torch.device("cpu")
    from_file = load_sdxl(single_file, assets / "sdxl", torch.float32, cpu)
    from_folder = load_sdxl(assets / "sdxl", None, torch.float32, cpu)
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        expected = getattr(from_folder, part).state_dict()
        loaded = getattr(from_file, part).state_dict()
        assert loaded.keys() == expected.keys()
        differing = {name for name in expected if not torch.equal(loaded[name], expected[name])}
        assert differing == ({"conv_out.bias"} if part == "unet" else set()), part
    assert torch.equal(from_file.unet.conv_out.bias, from_folder.unet.conv_out.bias + 1.0)

    output_dir = tmp_path / "run"
    arguments = runner.overrides(1, output_dir) + [
        f"--model.sdxl={single_file}", f"--model.sdxl_config={assets / 'sdxl'}", "--optim.max_steps=1"]
    result = runner.run(1, arguments)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (output_dir / DEFAULT_EXPORT_NAME).is_file()
