"""The Ray cluster launcher end to end on loopback: ``ray up`` -> ``ray exec`` -> ``ray
submit`` -> trials on 2 nodes -> MLflow health -> ``ray down``, with cluster.sim.yaml.

Opt-in (``pytest -m launcher``): it installs openssh-server and rsync with apt when they
are missing, starts a private sshd on 127.0.0.2-4 (its own config, host key and
authorized keys under /tmp/medtune-sim), and runs the launcher as root, so the nodes'
setup writes ``~/medtune``, ``~/.medtune_env`` and a line in ``~/.bashrc`` (all removed or
restored afterwards). ``ray down`` (like ``ray stop``) stops every Ray process on the
machine, so the test refuses to start while Ray processes it did not start exist.

Gotchas this encodes (Ray 2.60): the local provider needs ``RAY_UP_enable_autoscaler_v2=0``;
the commands rely on Ray's default interactive login shells (no ``--use-normal-shells``),
which source ``~/.bashrc``; the autoscaler on the head finds the SSH key in the home of
the passwd entry, not ``$HOME``; concurrent ``ray start`` / ``pip install`` on one kernel
are wrapped in ``flock`` by the shared setup commands.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.launcher

ROOT = Path(__file__).resolve().parents[1]
SIM = Path("/tmp/medtune-sim")
IPS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
MLFLOW = "http://127.0.0.2:5055"
RAY = str(Path(sys.prefix, "bin", "ray"))

SPACE = """
name: launcher
data:
  source: medmnist/pneumoniamnist.npz
  train_fraction: 0.15
params:
  backbone: cnn3
  epochs: 2
  batch_size: 32
search:
  lr: {choice: [3.0e-3, 1.0e-3]}
tune: {algorithm: grid, num_samples: 1, max_failures: 0}
scheduler: {type: none}
resources: {cpus: 1, gpus: 1}
"""


def ray_processes() -> list[str]:
    """Command lines of Ray daemons running on this machine (anyone's)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if os.path.basename(argv[0]) in ("raylet", "gcs_server"):
                found.append(f"{entry.name}: {' '.join(argv)[:120]}")
    return found


def sh(*args: str, timeout: float = 600, check: bool = True, env: dict | None = None) -> str:
    out = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(args)} -> {out.returncode}\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out.stdout + out.stderr


def ensure_packages() -> None:
    missing = [pkg for pkg, binary in (("openssh-server", "/usr/sbin/sshd"), ("rsync", "rsync"))
               if shutil.which(binary) is None and not Path(binary).exists()]
    if missing:
        sh("apt-get", "update", "-q", timeout=600)
        sh("apt-get", "install", "-y", "-q", *missing, timeout=900,
           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def start_sshd() -> subprocess.Popen:
    ssh = SIM / "ssh"
    ssh.mkdir(parents=True, exist_ok=True)
    for name in ("id_ed25519", "host_ed25519"):
        if not (ssh / name).exists():
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh / name))
    (ssh / "authorized_keys").write_text((ssh / "id_ed25519.pub").read_text())
    os.chmod(ssh / "authorized_keys", 0o600)
    config = ssh / "sshd_config"
    config.write_text("\n".join([*(f"ListenAddress {ip}" for ip in IPS), "Port 22",
                                 f"HostKey {ssh / 'host_ed25519'}", f"AuthorizedKeysFile {ssh / 'authorized_keys'}",
                                 "PermitRootLogin prohibit-password", "PasswordAuthentication no", "UsePAM no",
                                 f"PidFile {ssh / 'sshd.pid'}", "StrictModes no", "MaxStartups 100",
                                 "MaxSessions 100", ""]))
    Path("/run/sshd").mkdir(exist_ok=True)
    return subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
                            stdout=open(ssh / "sshd.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)


def prepare_node_environment(data_root: Path) -> None:
    """What a baked image would hold: a venv that sees this machine's packages, and data."""
    venv = SIM / "venv"
    if not (venv / "bin" / "python").exists():
        sh("python3.11", "-m", "venv", str(venv))
    site = next((venv / "lib").glob("python3.*/site-packages"))
    (site / "medtune-sim.pth").write_text(next(Path(sys.prefix, "lib").glob("python3.*/site-packages")).as_posix() + "\n")
    for tool in ("ray", "mlflow"):
        target = venv / "bin" / tool
        if not target.exists():
            target.symlink_to(Path(sys.prefix, "bin", tool))
    if not (SIM / "data").exists():
        (SIM / "data").symlink_to(data_root)
    (SIM / "space.yaml").write_text(textwrap.dedent(SPACE))


def test_ray_up_submit_and_down_on_loopback(data_root):
    foreign = ray_processes()
    if foreign:
        pytest.fail("Ray processes are running on this machine and `ray down` would stop them: "
                    + "; ".join(foreign[:3]) + ". Run -m launcher when no other Ray cluster runs.")
    home = Path(pwd.getpwuid(os.getuid()).pw_dir)  # where the launcher's SSH user lives
    for leftover in (home / "medtune", home / ".medtune_env"):
        if leftover.exists():
            pytest.fail(f"{leftover} exists: this test writes there and removes it afterwards; move it away first")
    ensure_packages()
    bashrc = home / ".bashrc"
    saved_bashrc = bashrc.read_text() if bashrc.exists() else None
    sshd = start_sshd()
    env = {**os.environ, "RAY_UP_enable_autoscaler_v2": "0", "RAY_AUTH_MODE": "token", "PYTHONPATH": str(ROOT)}
    config = str(ROOT / "cluster.sim.yaml")
    try:
        prepare_node_environment(data_root)
        sh(RAY, "get-auth-token", "--generate", env=env)
        started = time.time()
        sh(RAY, "up", config, "-y", "--no-config-cache", env=env, timeout=900)
        # The autoscaler on the head starts both workers (local provider: min = max = 2).
        deadline = time.time() + 300
        status = ""
        while time.time() < deadline:
            status = sh(RAY, "exec", config, "ray status", env=env, check=False, timeout=120)
            if "2.0/2.0 GPU" in status or "0.0/2.0 GPU" in status:
                break
            time.sleep(5)
        assert "2.0 GPU" in status, status
        out = sh(RAY, "submit", config, "search/__main__.py", "--", "run", str(SIM / "space.yaml"),
                 env=env, timeout=900)
        assert "study launcher" in out, out
        health = sh(RAY, "exec", config, f"curl -s {MLFLOW}/health", env=env)
        assert "OK" in health, health
        from mlflow.tracking import MlflowClient

        client = MlflowClient(MLFLOW)
        experiment = client.get_experiment_by_name("launcher")
        runs = client.search_runs([experiment.experiment_id], filter_string="tags.`medtune.trial_id` != ''")
        assert len(runs) == 2, [r.data.tags for r in runs]
        assert {r.data.tags["medtune.state"] for r in runs} == {"completed"}
        assert {r.data.tags["medtune.node_ip"] for r in runs} == {"127.0.0.3", "127.0.0.4"}
        print(f"launcher: ray up -> submit -> 2 trials on 2 workers in {time.time() - started:.0f}s")
    finally:
        sh(RAY, "down", config, "-y", env=env, check=False, timeout=300)
        pid_file = SIM / "mlflow" / "server.pid"
        if pid_file.exists():
            try:
                os.killpg(int(pid_file.read_text().strip()), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass
        os.killpg(sshd.pid, signal.SIGTERM)
        shutil.rmtree(home / "medtune", ignore_errors=True)
        (home / ".medtune_env").unlink(missing_ok=True)
        for name in ("ray_bootstrap_config.yaml", "ray_bootstrap_key.pem"):
            (home / name).unlink(missing_ok=True)
        if saved_bashrc is not None:
            bashrc.write_text(saved_bashrc)
    assert not ray_processes(), "ray down left Ray processes behind"
