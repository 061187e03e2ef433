"""Atomic writes (m2chat_core/atomic_files.py): complete or absent, with the
permissions the user's umask gives, whoever wrote the bytes."""

from __future__ import annotations

import os
import stat

import pytest
import torch
from safetensors.torch import save_file

from m2chat_core.atomic_files import atomic_path


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_safetensors_file_gets_the_usual_permissions(tmp_path, umask_022):
    target = tmp_path / "unet.safetensors"
    with atomic_path(target) as temporary:
        save_file({"weight": torch.zeros(2)}, temporary)
    assert _mode(target) == 0o644  # safetensors 0.8 alone leaves 0o600: unreadable to a server run as another user


def test_a_folder_and_its_files_get_the_usual_permissions(tmp_path, umask_022):
    target = tmp_path / "vlm"
    with atomic_path(target) as temporary:
        (temporary / "nested").mkdir(parents=True)
        save_file({"weight": torch.zeros(2)}, temporary / "nested" / "model.safetensors")
        os.chmod(temporary / "nested", 0o700)
    assert _mode(target) == 0o755
    assert _mode(target / "nested") == 0o755
    assert _mode(target / "nested" / "model.safetensors") == 0o644


def test_a_stricter_umask_is_kept(tmp_path):
    previous = os.umask(0o077)
    try:
        with atomic_path(tmp_path / "figures.json") as temporary:
            temporary.write_text("{}")
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "figures.json") == 0o600


def test_writing_never_sets_the_umask(tmp_path, umask_022, monkeypatch):
    def refuse(mask):
        raise AssertionError("os.umask: setting the umask to read it races with other threads' new files")
    monkeypatch.setattr(os, "umask", refuse)
    with atomic_path(tmp_path / "figures.json") as temporary:
        temporary.write_text("{}")
    assert _mode(tmp_path / "figures.json") == 0o644
    assert [item.name for item in tmp_path.iterdir()] == ["figures.json"]  # no probe left behind


def test_a_failed_write_leaves_neither_the_file_nor_its_temporary(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "judge.safetensors") as temporary:
            temporary.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []
