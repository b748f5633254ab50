"""Start or stop a server detached from the shell that launched it (the head's MLflow).

The cluster launcher runs each command of ``cluster.yaml`` in an SSH session that ends
when the command does; a server started there with ``&`` is tied to that session's
process group and hang-up signal, and its pid is not the pid of the workers it forks.
``start`` replaces a previous instance, refuses when another process already listens on
the command's ``--host:--port`` (else that process would answer and the start would look
successful), runs the command in a session of its own (pid = process group), records the
pid and waits until a process of that group listens on the port; ``stop`` ends the whole
group. Used by ``head_start_ray_commands``::

    python -m search.cluster.service start ~/mlflow -- mlflow server --backend-store-uri ... --port 5000
"""

from __future__ import annotations

import argparse
import errno
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


class PortInUseError(RuntimeError):
    """The server's port is taken by a process this service did not start."""


def _listening_inodes(port: int) -> set[str] | None:
    """Socket inodes listening on TCP ``port`` (any address), from ``/proc/net/tcp{,6}``.

    ``None`` where ``/proc`` is not available (not Linux): ownership cannot be told.
    """
    inodes: set[str] = set()
    found = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        found = True
        for line in lines:
            fields = line.split()
            # local_address is HEXIP:HEXPORT; state 0A is LISTEN; field 9 the inode.
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes if found else None


def listeners(port: int) -> list[int] | None:
    """Pids of the processes holding a socket that listens on TCP ``port``.

    Cheap (one pass over ``/proc/*/fd``); only processes this user may inspect are seen,
    so the list can be empty while the port is taken. ``None`` where ``/proc`` is not
    available.
    """
    inodes = _listening_inodes(port)
    if inodes is None:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    pids: list[int] = []
    if not targets:
        return pids
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in targets for fd in (proc / "fd").iterdir()):
                pids.append(int(proc.name))
        except OSError:  # another user's process, or one that just exited
            continue
    return sorted(pids)


def _describe_pid(pid: int) -> str:
    """``pid 123 (mlflow server --port 5000)`` as far as ``/proc`` tells."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmdline = ""
    if len(cmdline) > 120:
        cmdline = cmdline[:117] + "..."
    return f"pid {pid} ({cmdline})" if cmdline else f"pid {pid}"


def _holders(port: int) -> str:
    """Who listens on ``port``, for a message."""
    pids = listeners(port)
    if not pids:
        return "another process (not one this user can inspect)" if pids is not None else "another process"
    return ", ".join(_describe_pid(pid) for pid in pids[:3])


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`PortInUseError` unless a server could listen on ``host:port`` now.

    A bind test with ``SO_REUSEADDR``, as servers bind: it fails only while a socket
    listens on the port (on that address or the wildcard), not for connections of a
    stopped server still in TIME_WAIT.

    Raises:
        PortInUseError: the port is taken, naming the process that holds it and ``--port``.
        RuntimeError: ``host`` is not an address of this machine.
    """
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise RuntimeError(f"--host {host}: cannot resolve it ({err}); give an address of this machine, "
                           f"e.g. --host 127.0.0.1 or --host 0.0.0.0") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as err:
                if err.errno == errno.EADDRINUSE:
                    raise PortInUseError(
                        f"port {port} on {host} is already in use by {_holders(port)}; stop that process, or "
                        f"start the server on a free port with --port N (and point its clients at that port)"
                    ) from None
                raise RuntimeError(f"cannot listen on {host}:{port} ({err}); give an address of this "
                                   f"machine with --host, e.g. 127.0.0.1 or 0.0.0.0") from None


def _group_listens(pgid: int, port: int) -> bool | None:
    """Whether a process of group ``pgid`` listens on ``port``; ``None``: cannot tell."""
    pids = listeners(port)
    if pids is None:
        return None
    for pid in pids:
        try:
            if os.getpgid(pid) == pgid:
                return True
        except ProcessLookupError:
            continue
    return False


def start(directory: Path, command: list[str], timeout_s: float = 120.0) -> int:
    """Run ``command`` in its own session, logging to ``directory/server.log``; wait until
    a process of that session listens on its ``--host:--port``. Returns the pid (= process
    group id).

    The previous instance recorded in ``directory`` is stopped first. The port must then
    be free: a foreign server there would answer in place of ours. Where ``/proc`` is
    available, success means the listening socket belongs to our process group (MLflow's
    web workers are children of the started pid); elsewhere, that the child is alive and
    the port, free before, accepts connections.

    Raises:
        PortInUseError: another process listens on the port (before or during the start).
        RuntimeError: the command exited early or the host is not local.
        TimeoutError: nothing of ours listened within ``timeout_s``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    stop(directory)
    host, port = _address(command)
    check_port_free(host, port)
    with open(directory / LOG_FILE, "ab") as log:
        proc = subprocess.Popen(command, cwd=directory, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    (directory / PID_FILE).write_text(str(proc.pid))
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            (directory / PID_FILE).unlink(missing_ok=True)
            raise RuntimeError(f"{' '.join(command)} exited with {proc.returncode}; see {directory / LOG_FILE}")
        try:
            with socket.create_connection((host, port), timeout=1):
                pass
        except OSError:
            time.sleep(0.5)
            continue
        ours = _group_listens(proc.pid, port)
        if ours or (ours is None and proc.poll() is None):
            return proc.pid  # without /proc: alive, and the port was free before it started
        if proc.poll() is None:
            # The port was free before the start, so a listener outside our group took it
            # since: that process answers in place of ours.
            holders = _holders(port)
            stop(directory)
            raise PortInUseError(
                f"port {port} on {host} was taken by {holders} while {command[0]} was starting, so that "
                f"process answers, not ours; stop it, or start on a free port with --port N"
            )
    stop(directory)
    raise TimeoutError(f"{host}:{port} did not answer from the started process within {timeout_s:.0f}s; "
                       f"see {directory / LOG_FILE}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m search.cluster.service", description=__doc__.splitlines()[0])
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
