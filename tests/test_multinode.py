"""A study on a real multi-node Ray cluster on this machine, with S3 storage, a lost node
and a killed driver.

The cluster is three ``ray start`` nodes on 127.0.0.2 (head: no CPU for trials, no GPU),
127.0.0.3 and 127.0.0.4 (workers: 1 CPU and 1 fake GPU each, so trials that ask for a GPU
can only run there; torch sees no CUDA and trains on the CPU). Each node has a 100 MB
object store and token auth set identically on head, workers and driver. Tune's storage
is ``s3://`` on moto's S3 server, reached by every node through ``AWS_ENDPOINT_URL``: the
trial actors upload their checkpoints there and the driver writes the study file and
ASHA's state there, as on a real cluster where no node sees another's disk.

The lost-node test runs in the default selection (about 70 s); the killed-driver test is
``slow``. Only processes these tests started are stopped (found by this cluster's temp dir), never
``ray stop``: other Ray clusters may run on the machine.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

HEAD, WORKERS = "127.0.0.2", ("127.0.0.3", "127.0.0.4")
OBJECT_STORE = str(100 * 1024 * 1024)
BUCKET = "medtune"

SPACE = """
name: {name}
data:
  source: medmnist/pneumoniamnist.npz
  train_fraction: {fraction}
params:
  backbone: cnn3
  epochs: {epochs}
  batch_size: 32
search:
  lr: {{loguniform: [1.0e-3, 1.0e-2]}}
  dropout: {{uniform: [0.0, 0.3]}}
tune: {{algorithm: tpe, num_samples: {samples}, seed: 3, startup_trials: 2, max_failures: 2}}
scheduler: {{type: none}}
resources: {{cpus: 1, gpus: 1}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def own_processes(marker: str, also: str | None = None) -> list[int]:
    """Pids whose command line names ``marker`` (and ``also``, if given)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and (also is None or also in cmdline):
            pids.append(int(entry.name))
    return [pid for pid in pids if pid != os.getpid()]


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class LocalCluster:
    """Head + workers started with ``ray start --block``, each in its own session."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.temp_dir = f"/tmp/d5ray-{uuid.uuid4().hex[:8]}"
        self.env = env
        self.port = free_port()
        self.address = f"{HEAD}:{self.port}"
        self.procs: dict[str, subprocess.Popen] = {}

    def _start(self, ip: str, *args: str) -> None:
        # Ray picks free ports for everything but the dashboard agent (52365 by default,
        # which three nodes on one machine cannot share).
        ports = ["--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port())]
        log = open(self.root / f"ray-{ip}.log", "w")
        self.procs[ip] = subprocess.Popen(
            [str(Path(sys.executable).parent / "ray"), "start", "--block", f"--node-ip-address={ip}",
             f"--object-store-memory={OBJECT_STORE}", "--disable-usage-stats", *ports, *args],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start(self) -> None:
        self._start(HEAD, "--head", f"--port={self.port}", "--num-cpus=0", "--num-gpus=0",
                    f"--temp-dir={self.temp_dir}", "--include-dashboard=false")
        self.wait_for(1)
        for count, ip in enumerate(WORKERS, start=2):
            self._start(ip, f"--address={self.address}", "--num-cpus=1", "--num-gpus=1", f"--temp-dir={self.temp_dir}")
            self.wait_for(count)

    def alive_nodes(self) -> list[dict]:
        code = ("import json, ray; ray.init(address=%r, log_to_driver=False); "
                "print(json.dumps([{k: n[k] for k in ('NodeID', 'NodeManagerAddress', 'Resources')} "
                "for n in ray.nodes() if n['Alive']]))" % self.address)
        out = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            return []
        return json.loads(out.stdout.strip().splitlines()[-1])

    def wait_for(self, count: int, timeout: float = 120) -> list[dict]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for ip, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"ray start on {ip} exited: {(self.root / f'ray-{ip}.log').read_text()[-3000:]}")
            nodes = self.alive_nodes()
            if len(nodes) >= count:
                return nodes
            time.sleep(1)
        raise TimeoutError(f"{count} Ray nodes not up after {timeout}s")

    def kill_node(self, ip: str) -> None:
        """SIGKILL every process of one node (its raylet, its workers, trial actors)."""
        os.killpg(self.procs[ip].pid, signal.SIGKILL)
        kill_all(own_processes(self.temp_dir, f"{ip}"))

    def stop(self) -> None:
        for proc in self.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for _ in range(3):
            kill_all(own_processes(self.temp_dir))
            time.sleep(0.5)


@pytest.fixture
def s3_server(monkeypatch):
    """moto's S3 server on loopback; every process (nodes, driver) reaches it by env."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    import boto3

    boto3.client("s3").create_bucket(Bucket=BUCKET)
    yield env
    server.stop()


@pytest.fixture
def cluster(tmp_path, s3_server):
    from ray._private.authentication.authentication_token_generator import (
        generate_new_authentication_token,
    )

    token = tmp_path / "auth_token"
    token.write_text(generate_new_authentication_token())
    env = {**os.environ, **s3_server, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
           "PYTHONPATH": str(Path(__file__).parents[1]), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    ray_cluster = LocalCluster(tmp_path, env)
    try:
        ray_cluster.start()
        yield ray_cluster
    finally:
        ray_cluster.stop()


def start_study(tmp_path: Path, cluster: LocalCluster, name: str, *args: str, fraction: float = 0.5,
                epochs: int = 4, samples: int = 4) -> subprocess.Popen:
    space = tmp_path / f"{name}.yaml"
    space.write_text(textwrap.dedent(SPACE.format(name=name, fraction=fraction, epochs=epochs, samples=samples)))
    log = open(tmp_path / f"driver-{name}-{time.time():.0f}.log", "w")
    return subprocess.Popen(
        [sys.executable, "-m", "search.cli", "run", str(space), "--address", cluster.address,
         "--storage", f"s3://{BUCKET}/studies", *args],
        cwd=tmp_path, env=cluster.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def logs(tmp_path: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-6000:]}" for p in sorted(tmp_path.glob("driver-*.log")))


def children(tmp_path: Path, name: str) -> list:
    """The study's MLflow child runs (the study file is read from S3)."""
    from mlflow.tracking import MlflowClient

    from search.records.storage import StudyFiles

    record = json.loads(StudyFiles(f"s3://{BUCKET}/studies", name).read_text("medtune_study.json"))
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return client.search_runs([record["experiment_id"]],
                              filter_string=f"tags.`mlflow.parentRunId` = '{record['parent_run_id']}'")


def wait_until(proc: subprocess.Popen, tmp_path: Path, condition, timeout: float = 600):
    """Poll ``condition()`` (errors while the study starts count as not yet) until truthy."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, logs(tmp_path)
        try:
            value = condition()
        except Exception:  # study file or MLflow store not there yet, or briefly locked
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(logs(tmp_path))


def result_rows(name: str) -> dict[str, list[dict]]:
    """Tune's result.json of every trial, read from S3: trial folder -> rows."""
    from search.records.storage import StudyFiles

    study = StudyFiles(f"s3://{BUCKET}/studies", name)
    rows = {}
    for trial in study.list_dirs():
        text = study.read_optional(f"{trial}/result.json")
        if text:
            rows[trial] = [json.loads(line) for line in text.splitlines() if line.strip()]
    return rows


def test_trials_run_on_gpu_workers_and_survive_a_lost_node(tmp_path, cluster):
    nodes = cluster.alive_nodes()
    assert sorted(n["NodeManagerAddress"] for n in nodes) == [HEAD, *WORKERS]
    assert [n["Resources"].get("GPU", 0) for n in nodes if n["NodeManagerAddress"] == HEAD] == [0]
    proc = start_study(tmp_path, cluster, "lostnode")

    def running_on_first_worker():
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        for run in children(tmp_path, "lostnode"):
            tags = run.data.tags
            if tags.get("medtune.state") == "running" and tags.get("medtune.node_ip") == WORKERS[0]:
                # An epoch is done (so a checkpoint exists) and two remain (so it cannot
                # finish between this look and the kill).
                if 1 <= len(client.get_metric_history(run.info.run_id, "epoch/val_loss")) <= 2:
                    return tags["medtune.trial_id"]
        return None

    victim = wait_until(proc, tmp_path, running_on_first_worker)  # it has a checkpoint: an epoch is done
    cluster.kill_node(WORKERS[0])
    proc.wait(timeout=900)
    log = logs(tmp_path)
    assert proc.returncode == 0, log

    runs = children(tmp_path, "lostnode")
    trial_ids = [r.data.tags["medtune.trial_id"] for r in runs]
    assert len(trial_ids) == len(set(trial_ids)) == 4, (trial_ids, log)  # every trial exactly once
    worker_ids = {n["NodeManagerAddress"]: n["NodeID"] for n in nodes}
    for run in runs:
        tags = run.data.tags
        assert tags["medtune.state"] == "completed", (tags, log)
        assert tags["medtune.node_ip"] in WORKERS  # never on the GPU-less head
        assert set(tags["medtune.nodes"].split(",")) <= {worker_ids[w] for w in WORKERS}
    first_nodes = {r.data.tags["medtune.nodes"].split(",")[0] for r in runs}
    assert first_nodes == {worker_ids[w] for w in WORKERS}, first_nodes  # trials started on both workers
    moved = next(r for r in runs if r.data.tags["medtune.trial_id"] == victim)
    assert moved.data.tags["medtune.nodes"].split(",") == [worker_ids[WORKERS[0]], worker_ids[WORKERS[1]]]
    assert moved.data.tags["medtune.node_ip"] == WORKERS[1]
    # Resumed from its checkpoint, not restarted: Tune's record of the trial never
    # repeats an epoch, and MLflow has each epoch once.
    rows = next(r for folder, r in result_rows("lostnode").items() if victim in folder)
    epochs = [row["epoch"] for row in rows if "epoch" in row]
    assert epochs == sorted(set(epochs)) and epochs[-1] == 4, epochs
    assert {row["node_ip"] for row in rows} == set(WORKERS)
    import boto3

    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix="studies/lostnode/")["Contents"]]
    assert "studies/lostnode/medtune_study.json" in keys
    assert any("/checkpoint_" in k for k in keys)  # trial actors uploaded their checkpoints


@pytest.mark.slow
def test_killed_driver_resumes_on_the_cluster(tmp_path, cluster):
    proc = start_study(tmp_path, cluster, "driverkill", samples=5, epochs=3)

    def some_done_some_running():
        runs = children(tmp_path, "driverkill")
        ended = [r for r in runs if r.data.tags.get("medtune.state") not in (None, "running")]
        running = [r for r in runs if r.data.tags.get("medtune.state") == "running" and "val_loss" in r.data.metrics]
        return len(ended) >= 2 and running

    wait_until(proc, tmp_path, some_done_some_running)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {r.data.tags["medtune.trial_id"]: r for r in children(tmp_path, "driverkill")}
    ended_before = {k: r for k, r in before.items() if r.data.tags["medtune.state"] != "running"}

    resumed = start_study(tmp_path, cluster, "driverkill", "--resume", samples=5, epochs=3)
    resumed.wait(timeout=900)
    log = logs(tmp_path)
    assert resumed.returncode == 0, log
    runs = children(tmp_path, "driverkill")
    states = {r.data.tags["medtune.trial_id"]: r.data.tags["medtune.state"] for r in runs}
    # Tune snapshots its state at every trial start and end (search.study.schedulers.request_snapshot),
    # so the resumed study knows every trial the killed driver had started: none lost.
    assert sorted(states.values()) == ["completed"] * 5, (states, log)
    for trial_id, run in ended_before.items():
        assert next(r for r in runs if r.data.tags["medtune.trial_id"] == trial_id).info.end_time == run.info.end_time
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for run in runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "epoch/val_loss")]
        assert steps == [1, 2, 3], (run.data.tags["medtune.trial_id"], steps)
        assert run.data.tags["medtune.node_ip"] in WORKERS
