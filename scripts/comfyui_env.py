"""A real ComfyUI for the demo and the tests: a throw-away base directory holding only
this pack and the tiny-SDXL extension as custom nodes plus the tiny models, and ComfyUI's
own `main.py` serving it on 127.0.0.1, started and stopped by its PID."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from train.world.comfyui import COMFYUI_PATH  # noqa: E402 - the one definition
from train.world.layout import SHIPPED, WeightsLayout  # noqa: E402

from process_groups import free_port  # noqa: E402 - beside this file in scripts/

PACK_NAME = "m2chat"  # the folder name ComfyUI imports the pack under
# Seconds before a subprocess, server start or queued graph counts as hung: far above the
# slowest case on a loaded 2-core machine (under 2 minutes), since a slow machine is not a
# failure, yet short enough that a hang fails inside CI's 90 minutes and names itself.
HUNG_AFTER_S = 1200.0


def prepare_base_directory(base: Path, world: WeightsLayout = SHIPPED) -> Path:
    """custom_nodes/ with links to this pack and the tiny-SDXL extension, models/ with the
    tiny random models and the shapes world's trained ones (`world`: the shipped ones, or a
    build's), user/ for ComfyUI's database."""
    custom_nodes = base / "custom_nodes"
    custom_nodes.mkdir(parents=True, exist_ok=True)
    (base / "user").mkdir(exist_ok=True)
    for name, target in ((PACK_NAME, REPO), ("comfyui_tiny_sdxl", REPO / "scripts" / "comfyui_tiny_sdxl")):
        link = custom_nodes / name
        if not link.is_symlink():
            link.symlink_to(target, target_is_directory=True)
    subprocess.run([sys.executable, str(REPO / "scripts" / "build_tiny_models.py"), str(base / "models")],
                   check=True, capture_output=True, text=True, timeout=HUNG_AFTER_S)
    world.install(base / "models")
    return base


class ComfyServer:
    def __init__(self, base_directory: Path, *, start_timeout: float = HUNG_AFTER_S):
        self.base_directory = base_directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base_directory / "server.log"
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", self.port,
             "--disable-auto-launch", "--base-directory", str(base_directory),
             "--database-url", f"sqlite:///{base_directory / 'user' / 'comfyui.db'}"],
            cwd=COMFYUI_PATH, stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_until_up(start_timeout)

    def _wait_until_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited during start-up:\n{self.log()}")
            try:
                self.get("/object_info/KSampler")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=HUNG_AFTER_S) as response:
            return json.load(response)

    def post(self, path: str, payload: dict) -> tuple[int, dict]:
        request = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=HUNG_AFTER_S) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            return error.code, json.load(error)

    def queue(self, prompt: dict) -> str:
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})
        if status != 200:
            raise AssertionError(f"/prompt refused the graph ({status}): {body}")
        return body["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = HUNG_AFTER_S) -> dict:
        """The /history entry of a finished prompt (status and outputs)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                return history[prompt_id]
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout} s:\n{self.log()}")

    def output_file(self, image: dict) -> Path:
        return self.base_directory / "output" / image["subfolder"] / image["filename"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def describe() -> str:
    """One line naming the ComfyUI tree and the key package versions this interpreter tests."""
    from importlib.metadata import version

    comfyui = re.search(r'__version__ = "(.+)"', (COMFYUI_PATH / "comfyui_version.py").read_text()).group(1)
    packages = ("torch", "transformers", "diffusers", "comfyui-frontend-package")
    return f"ComfyUI {comfyui} at {COMFYUI_PATH}; " + ", ".join(
        f"{name} {version(name)}" for name in packages)


if __name__ == "__main__" and sys.argv[1:] == ["--describe"]:
    print(describe())
