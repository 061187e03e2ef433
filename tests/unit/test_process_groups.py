"""A launcher that hangs past its timeout is killed with every worker it started: killing the
launcher alone left the workers of a hung `accelerate launch` running on, orphaned, and a
worker in a session of its own (as torchrun starts them) outlived its launcher's group. The
timeout's error carries what the launcher printed last, so a hung test says where it hung."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
from comfyui_env import HUNG_AFTER_S
from process_groups import run_launcher, run_launchers

# A launcher that starts a worker, says which, and waits for it (as torchrun does, which
# starts each worker in a session of its own).
LAUNCHER = """
import subprocess, sys
worker = subprocess.Popen(["sleep", "3600"], start_new_session=sys.argv[2] == "own-session")
print("started worker", worker.pid, flush=True)  # before the file that ends the test's retries
open(sys.argv[1], "w").write(str(worker.pid))
worker.wait()
"""


def _running(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("session", ["launcher's session", "own-session"])
def test_a_hung_launcher_is_killed_with_its_workers(tmp_path, session):
    worker_pid = tmp_path / "worker.pid"
    timeout = 1.0
    while not worker_pid.exists():  # a longer wait each time, until the worker had started before the timeout
        with pytest.raises(subprocess.TimeoutExpired) as hung:
            run_launcher([sys.executable, "-c", LAUNCHER, str(worker_pid), session], timeout=timeout)
        timeout *= 2
        assert timeout < HUNG_AFTER_S
    pid = int(worker_pid.read_text())
    assert f"started worker {pid}" in "".join(hung.value.__notes__)
    # SIGKILL ends a sleeping process at once; a minute is far above the worst case, and a
    # worker that was never signalled (the defect) sleeps on for an hour.
    deadline = time.monotonic() + 60
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(pid)


def test_a_finished_launcher_returns_its_status_and_outputs():
    result = run_launcher([sys.executable, "-c", "import sys; print('out'); sys.exit('err')"], timeout=HUNG_AFTER_S)
    assert (result.returncode, result.stdout, result.stderr) == (1, "out\n", "err\n")


def test_a_launcher_printing_more_than_a_pipe_holds_does_not_block_its_peer(tmp_path):
    """The second launcher prints 1 MB before it lets the first one end, as a node's agent
    logs while its peer waits for it in a collective: with the outputs in pipes read one
    launcher after the other, the second blocked writing and both waited for ever."""
    done = tmp_path / "done"
    waiter = f"import pathlib, time\nwhile not pathlib.Path({str(done)!r}).exists(): time.sleep(0.01)"
    talker = f"import pathlib\nprint('x' * 1_000_000, flush=True)\npathlib.Path({str(done)!r}).touch()"
    result = run_launchers([[sys.executable, "-c", waiter], [sys.executable, "-c", talker]], timeout=HUNG_AFTER_S)
    assert result.returncode == 0 and result.stdout.count("x") == 1_000_000
