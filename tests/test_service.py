"""search.cluster.service: the head's MLflow server, started detached, answering, replaced, stopped.

Every server and listener here uses a port the OS reports free (:func:`free_port`), never
MLflow's default 5000, so a developer's own MLflow server cannot make these tests pass or
fail.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from search.cluster.service import PID_FILE, stop


def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def mlflow_start(directory: Path, port: int) -> list[str]:
    """The ``search.cluster.service start`` command line of a real MLflow server on ``port``."""
    return [sys.executable, "-m", "search.cluster.service", "start", str(directory), "--",
            str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
            f"sqlite:///{directory / 'mlflow.db'}", "--artifacts-destination", str(directory / "artifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]


def test_mlflow_server_starts_detached_restarts_and_stops(tmp_path):
    port = free_port()
    command = mlflow_start(tmp_path, port)
    try:
        # The launcher's shell ends right after the command: the server must outlive it.
        out = subprocess.run(command, capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stderr
        first = int((tmp_path / PID_FILE).read_text())
        health = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10).read()
        assert health.strip() == b"OK"
        # `ray up` again (restart): the old server goes, a new one answers.
        out = subprocess.run(command, capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stderr
        second = int((tmp_path / PID_FILE).read_text())
        assert second != first and not alive(first) and alive(second)
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10).read().strip() == b"OK"
    finally:
        stopped = stop(tmp_path)
    assert stopped and not alive(second) and not (tmp_path / PID_FILE).exists()
    # A command that exits at once; its (ignored) --port is free, so the start gets as far as running it.
    bad = subprocess.run([sys.executable, "-m", "search.cluster.service", "start", str(tmp_path), "--", "false",
                          "--port", str(free_port())], check=False, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "exited with 1" in bad.stderr, bad.stderr


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A plain TCP listener of this test process on a free port (what a stray server looks like)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock


def test_start_refuses_a_port_another_process_listens_on(tmp_path, listener):
    """An MLflow server already on the port used to make `start` report "started" for it."""
    port = listener.getsockname()[1]
    try:
        out = subprocess.run(mlflow_start(tmp_path, port), check=False, capture_output=True, text=True,
                             timeout=180)
    finally:
        stop(tmp_path)  # the original code leaves its (failing) MLflow child behind
    assert out.returncode == 1, out.stdout
    assert "started" not in out.stdout
    assert f"port {port} on 127.0.0.1 is already in use by pid {os.getpid()} (" in out.stderr, out.stderr
    assert "--port" in out.stderr
    assert not (tmp_path / PID_FILE).exists() and not (tmp_path / "server.log").exists()  # nothing was run


def test_start_fails_when_another_process_answers_on_the_port(tmp_path):
    """A child that never listens, while a foreign listener takes the port after the check."""
    port = free_port()
    child = [sys.executable, "-c", "import time; time.sleep(120)", "--port", str(port)]
    service = subprocess.Popen([sys.executable, "-m", "search.cluster.service", "start", str(tmp_path), "--", *child],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (tmp_path / PID_FILE).exists():  # written after the port check passed
            assert time.time() < deadline and service.poll() is None, service.communicate()
            time.sleep(0.05)
        pgid = int((tmp_path / PID_FILE).read_text())
        with socket.socket() as foreign:
            foreign.bind(("127.0.0.1", port))
            foreign.listen()
            stdout, stderr = service.communicate(timeout=60)
    finally:
        if service.poll() is None:
            service.kill()
        stop(tmp_path)
    assert service.returncode == 1, stdout
    assert f"port {port} on 127.0.0.1 was taken by pid {os.getpid()} (" in stderr, stderr
    assert "not ours" in stderr and "--port" in stderr
    assert not alive(pgid) and not (tmp_path / PID_FILE).exists()  # our child was stopped
