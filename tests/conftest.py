"""Fixtures shared by the test tiers, named by what they run: tests/unit (the core in this
process, no ComfyUI), tests/training and tests/evaluation (the real entry points in
subprocesses, torchrun included), tests/world (the shapes world's short schedules),
tests/comfy (ComfyUI in-process), tests/server (ComfyUI's HTTP server), tests/browser
(Chromium)."""

import os

import pytest

from comfyui_env import ComfyServer, prepare_base_directory

pytest_plugins = ["harness.training"]


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    """ComfyUI imported in this process with only this pack and the tiny-SDXL extension."""
    from harness.in_process import ComfyInProcess

    return ComfyInProcess(prepare_base_directory(tmp_path_factory.mktemp("comfyui-in-process")))


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    """ComfyUI's main.py serving on a free port of 127.0.0.1, stopped after the session."""
    server = ComfyServer(prepare_base_directory(tmp_path_factory.mktemp("comfyui-server")))
    yield server
    server.stop()


@pytest.fixture
def umask_022():
    """The common umask 022 while a test runs (and in the processes it starts): files written
    with the user's usual permissions are 0o644, folders 0o755."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


TIER_ORDER = ("unit", "training", "evaluation", "world", "comfy", "server", "browser")


def pytest_collection_modifyitems(items):
    """Cheap tiers first; browser tests last, since Playwright's sync API keeps an event
    loop running that ComfyUI's in-process asyncio.run() calls cannot share."""
    def tier(item):
        parts = item.path.parts
        return next((TIER_ORDER.index(p) for p in parts if p in TIER_ORDER), len(TIER_ORDER))
    items.sort(key=tier)
