"""`python -m train.world checkpoint` refuses bad input before writing anything (the
written checkpoint itself is loaded by CheckpointLoaderSimple in tests/comfy)."""

from __future__ import annotations

from train.world.__main__ import main
from train.world.layout import SHIPPED


def test_a_folder_without_world_weights_is_refused_before_writing(tmp_path, capsys):
    out = tmp_path / "world.safetensors"
    assert main(["checkpoint", "--weights", str(tmp_path), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "m2chat-world-sdxl.safetensors" in error and "train.world build" in error
    assert not out.exists()


def test_an_out_path_that_is_not_a_safetensors_file_is_refused(tmp_path, capsys):
    assert main(["checkpoint", "--weights", str(SHIPPED.root), "--out", str(tmp_path)]) == 2
    assert ".safetensors" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
