"""Distributed launchers (torchrun, accelerate launch) run to the end, each in a session of
its own, so that a hung or interrupted run takes its worker processes down with it: killing
only the launcher left its workers running on, orphaned, holding cores and ports. torchrun
starts each worker in a session of its own too, so the workers are found as the launcher's
descendants, not by its process group. And a free port for their rendezvous."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time

import psutil


def run_launchers(commands: list[list[str]], *, timeout: float, **popen_arguments) -> subprocess.CompletedProcess:
    """Start every command (e.g. one torchrun agent per simulated node), wait for all, and
    return the first one's arguments, the worst exit status and their joined outputs. If the
    wait passes `timeout` or is interrupted, every process of every group is killed. Outputs
    go to files, not pipes: a launcher whose pipe nobody read while the wait was on another
    would block writing, and its peers wait for it in their collectives."""
    with contextlib.ExitStack() as files:
        logs = [tuple(files.enter_context(tempfile.TemporaryFile("w+")) for _ in range(2)) for _ in commands]
        launchers = [subprocess.Popen(command, start_new_session=True, stdout=out, stderr=err, text=True,
                                      **popen_arguments) for command, (out, err) in zip(commands, logs)]

        def printed(index: int) -> tuple[str, str]:
            for log in logs[index]:
                log.seek(0)
            return logs[index][0].read(), logs[index][1].read()

        deadline = time.monotonic() + timeout
        try:
            for launcher in launchers:
                launcher.wait(timeout=max(0.0, deadline - time.monotonic()))
        except BaseException as error:
            for index, launcher in enumerate(launchers):
                _kill_with_descendants(launcher.pid)
                launcher.wait()
                # What a hung run printed last tells where it hung.
                error.add_note(f"{' '.join(map(str, launcher.args))} printed last:\n{''.join(printed(index))[-4000:]}")
            raise
        outputs = [printed(index) for index in range(len(launchers))]
    return subprocess.CompletedProcess(launchers[0].args, max(launcher.returncode for launcher in launchers),
                                       "".join(out for out, _ in outputs), "".join(err for _, err in outputs))


def _kill_with_descendants(pid: int) -> None:
    """SIGKILL the process group `pid` leads and every descendant of `pid` with its own group.
    The launcher is stopped first, so that it starts no new worker while its tree is read."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGSTOP)
    try:
        descendants = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    groups = {pid}
    for descendant in descendants:
        with contextlib.suppress(psutil.NoSuchProcess):
            groups.add(os.getpgid(descendant.pid))
    for group in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)


def run_launcher(command: list[str], *, timeout: float, **popen_arguments) -> subprocess.CompletedProcess:
    """`run_launchers` for one command."""
    return run_launchers([command], timeout=timeout, **popen_arguments)


def free_port() -> str:
    """A free TCP port on 127.0.0.1 (a launcher's rendezvous, a test server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])
