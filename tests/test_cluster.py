"""cluster.yaml: Ray's own validation, medtune's checks, and Ray's real AWS bootstrap on moto.

The configs are checked the way ``ray up`` reads them (``prepare_config``,
``validate_config``, ``ray-schema.json``); mutations prove that the checks can fail. The
AWS bootstrap is Ray's ``_bootstrap_config`` against moto's in-process AWS: it stops
before any instance would be launched.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import ray
import yaml

from search.cli import main
from search.cluster import (
    SHARED_KEYS,
    ClusterConfigError,
    check_config,
    detected_resources,
    load_config,
    resource_mismatches,
    shared_differences,
)

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster.yaml"
SIM = ROOT / "cluster.sim.yaml"


def write(tmp_path: Path, config: dict, name: str = "cluster.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ClusterConfigError) as info:
        check_config(path)
    return info.value.problems


def test_shipped_configs_pass_rays_validation_and_medtunes_checks():
    summary = check_config(CLUSTER)
    assert summary.provider == "aws" and summary.head == "head"
    assert summary.ray_version == ray.__version__
    assert summary.workers["gpu_a10g"] == (0, 8, {"CPU": 4, "GPU": 1})
    assert summary.workers["gpu_a100x8"] == (0, 2, {"CPU": 96, "GPU": 8})
    assert summary.storage.startswith("s3://") and summary.tracking_uri.startswith("http://")
    sim = check_config(SIM)
    assert sim.provider == "local" and sim.storage.startswith("/")


def test_sim_config_shares_every_command_and_mount_with_cluster_yaml():
    real, sim = load_config(CLUSTER), load_config(SIM)
    assert shared_differences(real, sim) == []
    for key in SHARED_KEYS:
        assert key in real, key  # written out, not left to Ray's defaults
    assert real["setup_commands"] and real["head_start_ray_commands"] and real["worker_start_ray_commands"]
    changed = copy.deepcopy(sim)
    changed["setup_commands"][0] += " "
    assert shared_differences(real, changed) == ["setup_commands"]
    # The sim's local provider: head and workers on loopback addresses other than 127.0.0.1.
    assert sim["provider"] == {"type": "local", "head_ip": "127.0.0.2", "worker_ips": ["127.0.0.3", "127.0.0.4"]}


def test_ray_pin_matches_the_installed_ray_and_pyproject():
    text = (ROOT / "pyproject.toml").read_text()
    assert f'"ray[tune]=={ray.__version__}"' in text
    assert f'"ray[default]=={ray.__version__}"' in text  # cluster extra: ray up/job submit/dashboard
    assert f'ray[default,tune]=={ray.__version__}' in " ".join(load_config(CLUSTER)["setup_commands"])


def _set_env(config: dict, name: str, value: str | None) -> None:
    """Rewrite ``export NAME=...`` in the config's environment-writing command."""
    import re

    for i, command in enumerate(config["initialization_commands"]):
        if f"export {name}=" in command:
            replacement = f"'export {name}={value}'" if value is not None else ""
            config["initialization_commands"][i] = re.sub(rf"'export {name}=[^']*'", replacement, command)
            return
    raise AssertionError(f"{name} not exported")


MUTATIONS = [
    # (what, mutate(config), expected text in one of the problems)
    ("typo at the top level", lambda c: c.update(max_worker=c.pop("max_workers")), "did you mean 'max_workers'"),
    ("typo in a node type", lambda c: c["available_node_types"]["gpu_a10g"].update(
        min_worker=c["available_node_types"]["gpu_a10g"].pop("min_workers")), "did you mean 'min_workers'"),
    ("string where an integer belongs", lambda c: c["available_node_types"]["gpu_a10g"].update(max_workers="8"),
     "gpu_a10g.max_workers: '8' is not of type 'integer'"),
    ("fractional GPU resource", lambda c: c["available_node_types"]["gpu_a10g"]["resources"].update(GPU=0.5),
     "resources.GPU: 0.5 is not of type 'integer'"),
    ("negative resource", lambda c: c["available_node_types"]["gpu_a10g"]["resources"].update(CPU=-1),
     "less than the minimum of 0"),
    ("min > max for a node type", lambda c: c["available_node_types"]["gpu_a10g"].update(min_workers=3, max_workers=1),
     "`min_workers <= max_workers` must hold, but got (min_workers=3, max_workers=1)"),
    ("min_workers above the cluster's max", lambda c: c["available_node_types"]["gpu_a10g"].update(min_workers=11,
     max_workers=11), "global `max_workers` is smaller than the sum of `min_workers`"),
    ("unknown head type", lambda c: c.update(head_node_type="cpu_head"), "`head_node_type` must be one of"),
    ("Ray pin differs", lambda c: c.update(setup_commands=[s.replace(f"=={ray.__version__}", "==2.9.3")
                                                          for s in c["setup_commands"]]),
     f"pin Ray 2.9.3, but the Ray installed here is {ray.__version__}"),
    ("Ray not pinned", lambda c: c.update(setup_commands=[s for s in c["setup_commands"] if "ray[" not in s]),
     "no setup command pins Ray"),
    ("project not installed", lambda c: c.update(setup_commands=[s for s in c["setup_commands"] if " -e " not in s]),
     "no setup command installs the project"),
    ("no GPU worker type", lambda c: [n["resources"].pop("GPU") for k, n in c["available_node_types"].items()
                                     if "GPU" in n["resources"]], "no worker node type declares a GPU"),
    ("GPU on the head", lambda c: c["available_node_types"]["head"]["resources"].update(GPU=1),
     "the head type 'head' declares GPUs"),
    ("instance type missing", lambda c: c["available_node_types"]["gpu_a10g"]["node_config"].pop("InstanceType"),
     "gpu_a10g.node_config has no InstanceType"),
    ("head does not start MLflow", lambda c: c.update(head_start_ray_commands=[
        s for s in c["head_start_ray_commands"] if "mlflow server" not in s]), "the head does not start MLflow"),
    ("MLflow on a file store", lambda c: c.update(head_start_ray_commands=[
        s.replace('"sqlite:///$MEDTUNE_MLFLOW_DIR/mlflow.db"', "./mlruns") for s in c["head_start_ray_commands"]]),
     "needs a SQL backend store"),
    ("storage on each node's disk", lambda c: _set_env(c, "MEDTUNE_STORAGE", "/home/ubuntu/studies"),
     "is a path on each node's own disk"),
    ("storage missing", lambda c: _set_env(c, "MEDTUNE_STORAGE", None), "MEDTUNE_STORAGE is not exported"),
    ("auth mode left to Ray's defaults", lambda c: _set_env(c, "RAY_AUTH_MODE", None), "RAY_AUTH_MODE is None"),
    ("token auth without the token", lambda c: c["file_mounts"].pop("~/.ray/auth_token"),
     "no file mount brings the token"),
]


@pytest.mark.parametrize("what,mutate,expected", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_check_rejects_mutated_configs(tmp_path, what, mutate, expected):
    config = load_config(CLUSTER)
    mutate(config)
    problems = problems_of(write(tmp_path, config))
    assert any(expected in p for p in problems), problems


def test_local_storage_path_is_fine_only_when_every_node_is_this_machine(tmp_path):
    sim = load_config(SIM)
    check_config(write(tmp_path, sim))
    sim["provider"]["worker_ips"] = ["127.0.0.3", "10.0.0.7"]
    assert any("own disk" in p for p in problems_of(write(tmp_path, sim)))


def test_local_provider_rejects_node_types_and_needs_fake_gpus(tmp_path):
    sim = load_config(SIM)
    sim["initialization_commands"] = [c.replace("--num-gpus=1 ", "") for c in sim["initialization_commands"]]
    assert any("declare no GPUs" in p for p in problems_of(write(tmp_path, sim)))


def test_cli_check_exit_codes(tmp_path, capsys):
    assert main(["cluster", "check", str(CLUSTER)]) == 0
    assert "valid" in capsys.readouterr().out
    broken = load_config(CLUSTER)
    broken["available_node_types"]["gpu_a10g"].update(min_workers=9, max_workers=8)
    assert main(["cluster", "check", str(write(tmp_path, broken))]) == 2
    assert "min_workers <= max_workers" in capsys.readouterr().err
    assert main(["cluster", "check", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


# --- Ray's real AWS bootstrap against moto -------------------------------------------------


@pytest.fixture
def moto_aws(tmp_path, monkeypatch):
    """moto's in-process AWS with fake credentials, a throwaway HOME (Ray writes the SSH key
    pair to ~/.ssh) and no 15 s IAM propagation sleeps."""
    pytest.importorskip("moto")
    import ray.autoscaler._private.aws.config as aws_config
    import ray.autoscaler._private.aws.utils as aws_utils
    from moto import mock_aws

    home = tmp_path / "home"
    home.mkdir()
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-west-2",
                       "MOTO_IAM_LOAD_MANAGED_POLICIES": "true", "HOME": str(home)}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setattr(aws_config.time, "sleep", lambda seconds: None)
    with mock_aws():
        # Ray caches boto3 clients and resources; a cached one from another mock would
        # talk to a different fake account.
        for cached in (aws_utils.client_cache, aws_utils.resource_cache):
            cached.cache_clear()
        yield home
        for cached in (aws_utils.client_cache, aws_utils.resource_cache):
            cached.cache_clear()


def _bootstrap(config: dict) -> dict:
    from ray.autoscaler._private.commands import _bootstrap_config

    return _bootstrap_config(copy.deepcopy(config), no_config_cache=True)


def test_rays_aws_bootstrap_detects_the_declared_resources(moto_aws):
    config = load_config(CLUSTER)
    bootstrapped = _bootstrap(config)
    # The bootstrap really ran: IAM role for the head, key pair, subnets, security groups.
    assert bootstrapped["head_node"]["IamInstanceProfile"]["Arn"].endswith("instance-profile/ray-autoscaler-v1")
    # The workers reuse that profile by name (cluster.yaml) to write checkpoints to S3.
    import boto3

    iam = boto3.client("iam", region_name="us-west-2")
    attached = {p["PolicyName"] for p in iam.list_attached_role_policies(RoleName="ray-autoscaler-v1")["AttachedPolicies"]}
    assert "AmazonS3FullAccess" in attached
    for name in ("gpu_a10g", "gpu_a100x8"):
        assert config["available_node_types"][name]["node_config"]["IamInstanceProfile"] == {"Name": "ray-autoscaler-v1"}
    assert Path(bootstrapped["auth"]["ssh_private_key"]).is_file()
    assert str(moto_aws) in bootstrapped["auth"]["ssh_private_key"]  # the throwaway HOME, not ours
    for node in bootstrapped["available_node_types"].values():
        assert node["node_config"]["KeyName"] and node["node_config"]["SubnetIds"]
        assert node["node_config"]["SecurityGroupIds"]
        assert node["node_config"]["ImageId"].startswith("ami-")  # latest_dlami resolved
    # With the declared resources removed, Ray detects from the instance types exactly
    # what cluster.yaml declares for every worker type.
    bare = copy.deepcopy(config)
    for name, node in bare["available_node_types"].items():
        if name != bare["head_node_type"]:
            node.pop("resources")
    autofilled = _bootstrap(bare)["available_node_types"]
    for name, node in config["available_node_types"].items():
        if name == config["head_node_type"]:
            assert bootstrapped["available_node_types"][name]["resources"]["CPU"] == 0  # declared: no trials there
            continue
        detected = {k: v for k, v in autofilled[name]["resources"].items() if k in ("CPU", "GPU")}
        assert detected == node["resources"], name
        assert bootstrapped["available_node_types"][name]["resources"]["GPU"] == node["resources"]["GPU"]
    assert autofilled["gpu_a10g"]["resources"]["accelerator_type:A10G"] == 1
    assert autofilled["gpu_a100x8"]["resources"]["accelerator_type:A100"] == 1
    # search cluster check --aws reads the same detection.
    assert resource_mismatches(config, detected_resources(config)) == []
    wrong = copy.deepcopy(config)
    wrong["available_node_types"]["gpu_a100x8"]["resources"]["GPU"] = 4
    assert "declares {'CPU': 96, 'GPU': 4}, but a p4d.24xlarge has {'CPU': 96, 'GPU': 8}" in \
        resource_mismatches(wrong, detected_resources(wrong))[0]


def test_rays_aws_bootstrap_rejects_an_unknown_instance_type(moto_aws):
    import jsonschema

    config = load_config(CLUSTER)
    node = config["available_node_types"]["gpu_a10g"]
    node["node_config"]["InstanceType"] = "g5.xlargee"
    with pytest.raises(ClusterConfigError, match="Instance type g5.xlargee is not available in AWS region: us-west-2"):
        detected_resources(config)
    # Ray's own bootstrap: it cannot autofill the resources of a type AWS does not know,
    # and the schema then refuses the node type.
    node.pop("resources")
    with pytest.raises(jsonschema.ValidationError, match="'resources' is a required property"):
        _bootstrap(config)


def test_autoscaling_capacity_counts_every_worker_type_at_its_maximum(tmp_path):
    from ray.autoscaler._private.util import prepare_config

    from search.cluster import autoscaling_capacity

    # What `ray up` leaves on the head as ~/ray_bootstrap_config.yaml (prepared config).
    bootstrap = write(tmp_path, prepare_config(load_config(CLUSTER)), "ray_bootstrap_config.yaml")
    assert autoscaling_capacity(bootstrap) == {"CPU": 0 + 8 * 4 + 2 * 96, "GPU": 8 * 1 + 2 * 8}
    local = write(tmp_path, prepare_config(load_config(SIM)), "sim_bootstrap.yaml")
    assert autoscaling_capacity(local) == {}  # local nodes report their own resources
    assert autoscaling_capacity(tmp_path / "absent.yaml") == {}


def test_submit_entry_script_runs_from_the_checkout_and_joins_the_cluster(tmp_path):
    """``ray submit`` runs search/__main__.py as a lone file from the home folder."""
    import subprocess
    import sys

    from search.__main__ import submitted_argv

    assert submitted_argv(["run", "spaces/pcam.yaml"]) == ["run", "spaces/pcam.yaml", "--address", "auto"]
    assert submitted_argv(["run", "s.yaml", "--address=10.0.0.1:6379"]) == ["run", "s.yaml", "--address=10.0.0.1:6379"]
    assert submitted_argv(["best", "pcam"]) == ["best", "pcam"]
    script = tmp_path / "__main__.py"  # what ray submit uploads
    script.write_text((ROOT / "search" / "__main__.py").read_text())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # A relative path resolves in $MEDTUNE_HOME, not in the folder it was started from.
    out = subprocess.run([sys.executable, str(script), "cluster", "check", "cluster.yaml"], cwd=tmp_path,
                         env={**env, "MEDTUNE_HOME": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "cluster.yaml: valid" in out.stdout, out.stderr
    out = subprocess.run([sys.executable, str(script), "cluster", "check", "cluster.yaml"], cwd=tmp_path,
                         env={**env, "MEDTUNE_HOME": str(tmp_path / "nowhere")}, capture_output=True, text=True)
    assert out.returncode == 1 and "MEDTUNE_HOME" in out.stderr
