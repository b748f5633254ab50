"""search.service: the head's MLflow server, started detached, answering, replaced, stopped."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from search.service import PID_FILE, stop


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def test_mlflow_server_starts_detached_restarts_and_stops(tmp_path):
    port = free_port()
    command = [sys.executable, "-m", "search.service", "start", str(tmp_path), "--",
               str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
               f"sqlite:///{tmp_path / 'mlflow.db'}", "--artifacts-destination", str(tmp_path / "artifacts"),
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
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
    bad = subprocess.run([sys.executable, "-m", "search.service", "start", str(tmp_path), "--", "false"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "exited with 1" in bad.stderr
