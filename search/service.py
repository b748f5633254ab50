"""Start or stop a server detached from the shell that launched it (the head's MLflow).

The cluster launcher runs each command of ``cluster.yaml`` in an SSH session that ends
when the command does; a server started there with ``&`` is tied to that session's
process group and hang-up signal, and its pid is not the pid of the workers it forks.
``start`` runs the command in a session of its own (pid = process group), records the pid,
waits until the server answers and replaces a previous instance; ``stop`` ends the whole
group. Used by ``head_start_ray_commands``::

    python -m search.service start ~/mlflow -- mlflow server --backend-store-uri ... --port 5000
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PID_FILE = "server.pid"
LOG_FILE = "server.log"


def stop(directory: Path, wait_s: float = 15.0) -> bool:
    """Stop the process group recorded in ``directory/server.pid``; False if none ran."""
    pid_file = directory / PID_FILE
    try:
        pgid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return False
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink(missing_ok=True)
        return False
    deadline = time.time() + wait_s
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.killpg(pgid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return True


def _address(command: list[str]) -> tuple[str, int]:
    """``--host`` / ``--port`` of the command (MLflow's defaults when absent)."""
    def value(flag: str, default: str) -> str:
        for i, arg in enumerate(command):
            if arg == flag and i + 1 < len(command):
                return command[i + 1]
            if arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
        return default
    return value("--host", "127.0.0.1"), int(value("--port", "5000"))


def start(directory: Path, command: list[str], timeout_s: float = 120.0) -> int:
    """Run ``command`` in its own session, logging to ``directory/server.log``; wait until
    its ``--host:--port`` accepts connections. Returns the pid (= process group id)."""
    directory.mkdir(parents=True, exist_ok=True)
    stop(directory)
    with open(directory / LOG_FILE, "ab") as log:
        proc = subprocess.Popen(command, cwd=directory, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    (directory / PID_FILE).write_text(str(proc.pid))
    host, port = _address(command)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{' '.join(command)} exited with {proc.returncode}; see {directory / LOG_FILE}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return proc.pid
        except OSError:
            time.sleep(0.5)
    stop(directory)
    raise TimeoutError(f"{host}:{port} did not answer within {timeout_s:.0f}s; see {directory / LOG_FILE}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m search.service", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("directory", type=Path, help="where server.pid and server.log live")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the server command (start)")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    directory = args.directory.expanduser()
    try:
        if args.action == "stop":
            print("stopped" if stop(directory) else "not running")
            return 0
        if not command:
            parser.error("start needs the server command after --")
        pid = start(directory, command)
    except (RuntimeError, TimeoutError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"started (pid {pid}), log in {directory / LOG_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
