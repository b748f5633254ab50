"""Check a Ray cluster-launcher config (``cluster.yaml``) before ``ray up`` spends money.

Two layers, both run by ``search cluster check cluster.yaml``:

1. Ray's own: the config is prepared and validated exactly as ``ray up`` does it
   (``prepare_config`` merges the provider's defaults, ``validate_config`` applies
   ``ray/autoscaler/ray-schema.json`` and Ray's cross-field rules), so a typo in a key or a
   string where a number belongs fails here, with the key's path and a close match.
2. medtune's: what a study needs from a cluster and Ray does not check: the Ray pinned in
   the setup commands is the Ray installed here (a driver and a cluster on different Ray
   versions do not talk), the project itself is installed on every node, GPU worker types
   exist (and the head has no GPU), ``min_workers <= max_workers`` per type, the head
   starts an MLflow tracking server on a SQL store, Tune's storage is shared by all
   nodes (multi-node Tune needs it since Ray 2.7), and Ray's auth mode is set on every
   node alike.

``--aws`` adds the one check that needs AWS (read-only, ``DescribeInstanceTypes``): the
``resources`` declared per node type equal what Ray detects for its instance type, and
the instance type exists in the region.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# Keys whose value must be identical in cluster.yaml and cluster.sim.yaml.
SHARED_KEYS = (
    "file_mounts", "cluster_synced_files", "file_mounts_sync_continuously", "rsync_exclude", "rsync_filter",
    "setup_commands", "head_setup_commands", "worker_setup_commands", "head_start_ray_commands",
    "worker_start_ray_commands",
)
SHARED_STORAGE_SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "az", "hdfs")
SQL_STORES = ("sqlite:///", "postgresql://", "postgresql+", "mysql://", "mysql+", "mssql")
LOOPBACK = re.compile(r"^127(\.\d{1,3}){3}$")


class ClusterConfigError(ValueError):
    """A cluster config that ``ray up`` would reject, or that could not run a study.

    Attributes:
        problems: one message per problem, each naming the rule, the value and the fix.
    """

    def __init__(self, path: str | Path, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        listed = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{path}: {len(problems)} problem(s):\n{listed}")


@dataclass(frozen=True)
class ClusterSummary:
    """What a valid config describes (printed by ``search cluster check``)."""

    provider: str
    head: str
    workers: dict[str, tuple[int, int, dict[str, int]]]
    ray_version: str
    storage: str
    tracking_uri: str


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a cluster YAML file into a dict (a clear error when it is no mapping)."""
    path = Path(path)
    if not path.is_file():
        raise ClusterConfigError(path, ["the file does not exist; pass the launcher config, e.g. cluster.yaml"])
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ClusterConfigError(path, [f"it is not valid YAML ({err}); fix the syntax"]) from None
    if not isinstance(config, dict):
        raise ClusterConfigError(path, [f"the top level must be a mapping, but got {type(config).__name__}"])
    return config


def ray_errors(config: dict[str, Any]) -> tuple[dict[str, Any] | None, list[str]]:
    """Prepare and validate ``config`` as ``ray up`` does; returns (prepared config, problems)."""
    import logging

    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    logging.getLogger("ray.autoscaler").setLevel(logging.WARNING)  # "setting max workers for ..." is noise here

    try:
        prepared = prepare_config(copy.deepcopy(config))
        schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
        # Every schema error at once (validate_config stops at the first), then Ray's own call.
        found = sorted(jsonschema.Draft7Validator(schema).iter_errors(prepared), key=lambda e: list(e.absolute_path))
        if found:
            return None, [_schema_message(err) for err in found]
        validate_config(prepared)
    except jsonschema.ValidationError as err:
        return None, [_schema_message(err)]
    except (ValueError, KeyError, TypeError, AssertionError, RuntimeError) as err:
        return None, [f"Ray rejects the config: {type(err).__name__}: {err}"]
    except SystemExit as err:  # cli_logger.abort, e.g. node types given to the local provider
        return None, [f"Ray rejects the config (the launcher would abort): {err}"]
    return prepared, []


def _schema_message(err: Any) -> str:
    where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
    message = f"{where}: {err.message} (ray-schema.json)"
    unexpected = re.findall(r"'([^']+)' was unexpected|'([^']+)' does not match any", err.message)
    names = [a or b for a, b in unexpected]
    allowed = list((err.schema or {}).get("properties", {}))
    hints = []
    for name in names:
        close = difflib.get_close_matches(name, allowed, n=1)
        hints.append(f"did you mean {close[0]!r} instead of {name!r}?" if close else f"remove {name!r}")
    if hints:
        message += "; " + " ".join(hints)
    elif err.validator == "type":
        message += f"; write a value of type {err.validator_value}"
    return message


def _commands(config: dict[str, Any], *keys: str) -> list[str]:
    out: list[str] = []
    for key in keys:
        out += [str(c) for c in config.get(key) or []]
    return out


def env_value(config: dict[str, Any], name: str) -> str | None:
    """The value an ``export NAME=...`` in the config's commands gives ``name`` (last one wins)."""
    value = None
    for command in _commands(config, "initialization_commands", "setup_commands", "head_setup_commands"):
        for match in re.finditer(rf"export {name}=(\"[^\"]*\"|[^'\s]*)", command):
            value = match.group(1).strip('"')
    return value


def _number(value: Any, default: float = 0) -> float:
    """``value`` if it is a number (the schema reports wrong types), else ``default``."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def _all_loopback(config: dict[str, Any]) -> bool:
    provider = config.get("provider") or {}
    ips = [provider.get("head_ip")] + list(provider.get("worker_ips") or [])
    return provider.get("type") == "local" and all(isinstance(ip, str) and LOOPBACK.match(ip) for ip in ips)


def project_errors(config: dict[str, Any], ray_version: str | None = None) -> list[str]:
    """medtune's checks of a (raw, unprepared) cluster config; an empty list means fine."""
    import ray

    ray_version = ray_version or ray.__version__
    problems: list[str] = []
    setup = _commands(config, "setup_commands", "head_setup_commands", "worker_setup_commands")
    provider = (config.get("provider") or {}).get("type")

    pins = re.findall(r"ray(?:\[[\w,\s-]*\])?==([\w.\-+]+)", " ".join(setup))
    if not pins:
        problems.append(f"no setup command pins Ray: nodes would get whatever pip picks; add "
                        f"`pip install \"ray[default,tune]=={ray_version}\"` to setup_commands")
    for pin in sorted(set(pins)):
        if pin != ray_version:
            problems.append(f"the setup commands pin Ray {pin}, but the Ray installed here is {ray_version}: a "
                            f"driver and a cluster on different Ray versions cannot talk; pin ray=={ray_version}")
    if not any(re.search(r"pip\"?\s+install\b.*(\s-e\s|medtune)", c) for c in setup):
        problems.append("no setup command installs the project (`pip install -e <checkout>[cluster]`): trials "
                        "import medtune on every node; add it to setup_commands")

    node_types = config.get("available_node_types") or {}
    head_type = config.get("head_node_type")
    for name, node in node_types.items():
        if not isinstance(node, dict):
            continue
        low, high = node.get("min_workers", 0), node.get("max_workers")
        if isinstance(low, int) and isinstance(high, int) and low > high:
            problems.append(f"available_node_types.{name}: `min_workers <= max_workers` must hold, but got "
                            f"(min_workers={low}, max_workers={high}); lower min_workers or raise max_workers")
        if provider == "aws" and not (node.get("node_config") or {}).get("InstanceType"):
            problems.append(f"available_node_types.{name}.node_config has no InstanceType; name one, e.g. g5.xlarge")
    if provider != "local":
        gpu_types = [name for name, node in node_types.items() if name != head_type and isinstance(node, dict)
                     and _number((node.get("resources") or {}).get("GPU")) >= 1
                     and _number(node.get("max_workers"), default=1) >= 1]
        if not gpu_types:
            problems.append("no worker node type declares a GPU (`resources: {GPU: n}` with max_workers >= 1): "
                            "trials asking for a GPU would wait forever; add a GPU worker type such as g5.xlarge")
        head = node_types.get(head_type) if isinstance(node_types.get(head_type), dict) else {}
        if _number((head.get("resources") or {}).get("GPU")):
            problems.append(f"the head type {head_type!r} declares GPUs: it runs the driver and MLflow, and trials "
                            "on it compete with them; set its resources to {CPU: 0} and use GPU workers")
    else:
        starts = " ".join(_commands(config, "initialization_commands", "worker_start_ray_commands"))
        if "--num-gpus" not in starts:
            problems.append("the local provider's workers declare no GPUs (`ray start --num-gpus=1`): trials asking "
                            "for a GPU would wait forever; pass --num-gpus to the workers' ray start")

    head_cmds = _commands(config, "head_setup_commands", "head_start_ray_commands")
    server = [c for c in head_cmds if "mlflow server" in c]
    if not server:
        problems.append("the head does not start MLflow: add `mlflow server --backend-store-uri sqlite:///... "
                        "--host 127.0.0.1` to head_start_ray_commands so the driver logs every trial to it")
    else:
        store = re.search(r"--backend-store-uri\s+(\S+)", server[0])
        uri = store.group(1).strip("\"'") if store else ""
        if not uri.startswith(SQL_STORES):
            problems.append(f"the head's MLflow server needs a SQL backend store (sqlite:///, postgresql://, mysql://), "
                            f"but got {uri or 'none'!r}; pass --backend-store-uri sqlite:///$HOME/mlflow/mlflow.db")
    tracking = env_value(config, "MLFLOW_TRACKING_URI")
    if not tracking or not tracking.startswith(("http://", "https://")):
        problems.append(f"MLFLOW_TRACKING_URI must point the driver at the head's server (http://...), but got "
                        f"{tracking!r}; export it in the commands that write the nodes' environment")

    storage = env_value(config, "MEDTUNE_STORAGE")
    if not storage:
        problems.append("MEDTUNE_STORAGE is not exported: multi-node Tune needs storage every node sees; export "
                        "MEDTUNE_STORAGE=s3://BUCKET/studies (or a shared filesystem path)")
    else:
        scheme = storage.split("://", 1)[0] if "://" in storage else ""
        if scheme and scheme not in SHARED_STORAGE_SCHEMES and scheme != "file":
            problems.append(f"MEDTUNE_STORAGE scheme {scheme!r} is not one pyarrow can share across nodes "
                            f"({', '.join(SHARED_STORAGE_SCHEMES)}); use s3://BUCKET/studies")
        elif not scheme and not _all_loopback(config):
            problems.append(f"MEDTUNE_STORAGE={storage!r} is a path on each node's own disk, so trials on other "
                            "nodes could not write their checkpoints; use s3://BUCKET/studies or a shared mount")

    auth = env_value(config, "RAY_AUTH_MODE")
    if auth not in ("token", "disabled"):
        problems.append(f"RAY_AUTH_MODE is {auth!r}: Ray 2.60 turns token auth on by default for some processes "
                        "only, so head, workers and driver must set it alike; export RAY_AUTH_MODE=token everywhere")
    elif auth == "token" and not any("auth_token" in str(k) for k in (config.get("file_mounts") or {})):
        problems.append("RAY_AUTH_MODE=token but no file mount brings the token to the nodes; mount "
                        "~/.ray/auth_token: ~/.ray/auth_token (create it with `ray get-auth-token --generate`)")
    return problems


def check_config(path: str | Path) -> ClusterSummary:
    """Run Ray's validation and medtune's checks on the config at ``path``.

    Raises:
        ClusterConfigError: listing every problem found, each with its fix.
    """
    import ray

    config = load_config(path)
    prepared, problems = ray_errors(config)
    problems += project_errors(config)
    if problems:
        raise ClusterConfigError(path, problems)
    assert prepared is not None
    workers = {name: (node.get("min_workers", 0), node.get("max_workers", 0), node.get("resources") or {})
               for name, node in prepared["available_node_types"].items() if name != prepared["head_node_type"]}
    return ClusterSummary(provider=config["provider"]["type"], head=prepared["head_node_type"], workers=workers,
                          ray_version=ray.__version__, storage=env_value(config, "MEDTUNE_STORAGE") or "",
                          tracking_uri=env_value(config, "MLFLOW_TRACKING_URI") or "")


def detected_resources(config: dict[str, Any]) -> dict[str, dict[str, int]]:
    """CPU/GPU per node type as Ray's AWS provider detects them from the instance types.

    Calls ``DescribeInstanceTypes`` (read-only) through Ray's own autofill, with the
    declared ``resources`` removed so nothing masks what AWS reports.

    Raises:
        ClusterConfigError: an instance type that does not exist in the region.
    """
    from ray.autoscaler._private.aws.node_provider import AWSNodeProvider

    bare = copy.deepcopy(config)
    for node in bare["available_node_types"].values():
        node.pop("resources", None)
    try:
        filled = AWSNodeProvider.fillout_available_node_types_resources(bare)
    except ValueError as err:
        raise ClusterConfigError("cluster config", [f"{err} Pick an instance type that exists there "
                                                    "(`aws ec2 describe-instance-types`)."]) from None
    return {name: {k: v for k, v in (node.get("resources") or {}).items() if k in ("CPU", "GPU")}
            for name, node in filled["available_node_types"].items()}


def resource_mismatches(config: dict[str, Any], detected: dict[str, dict[str, int]]) -> list[str]:
    """Declared ``resources`` (CPU/GPU, worker types) that differ from the detected ones."""
    problems = []
    for name, node in config["available_node_types"].items():
        if name == config.get("head_node_type"):
            continue  # the head declares CPU: 0 on purpose (no trials there)
        declared = {k: v for k, v in (node.get("resources") or {}).items() if k in ("CPU", "GPU")}
        if declared != detected.get(name):
            problems.append(f"available_node_types.{name}.resources declares {declared}, but a "
                            f"{node['node_config']['InstanceType']} has {detected.get(name)}; declare what it has")
    return problems


def shared_differences(config: dict[str, Any], sim: dict[str, Any]) -> list[str]:
    """Keys of :data:`SHARED_KEYS` whose values differ between two configs."""
    return [key for key in SHARED_KEYS if config.get(key) != sim.get(key)]


def describe(summary: ClusterSummary) -> str:
    """Human-readable lines about a checked config."""
    lines = [f"{summary.provider} cluster, head type {summary.head!r}, Ray {summary.ray_version} pinned on every node"]
    for name, (low, high, resources) in summary.workers.items():
        shown = ", ".join(f"{k} {v}" for k, v in resources.items()) or "resources detected by Ray"
        lines.append(f"  workers {name}: {low}-{high} nodes, {shown}")
    lines.append(f"  studies in {summary.storage}; MLflow at {summary.tracking_uri} on the head")
    return "\n".join(lines)



BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"


def autoscaling_node_types(path: str | Path = BOOTSTRAP_CONFIG) -> list[dict[str, float]]:
    """Resources of one node of each type the autoscaler may start (the head's included),
    from the config ``ray up`` leaves on the head; ``[]`` elsewhere."""
    config = _bootstrap_config(path)
    if config is None:
        return []
    return [{key: _number(value) for key, value in (node.get("resources") or {}).items()}
            for node in config["available_node_types"].values()]


def _bootstrap_config(path: str | Path) -> dict[str, Any] | None:
    """The launcher config ``ray up`` leaves on the head, when it is there and well formed."""
    file = Path(path).expanduser()
    try:
        config = yaml.safe_load(file.read_text()) if file.is_file() else None
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(config, dict) or not isinstance(config.get("available_node_types"), dict):
        return None
    return config


def autoscaling_capacity(path: str | Path = BOOTSTRAP_CONFIG) -> dict[str, float]:
    """The most resources the autoscaler may bring up, from the config ``ray up`` leaves on
    the head (every worker type at ``max_workers``, plus the head); ``{}`` elsewhere.

    An autoscaling cluster starts with no GPU worker, so the resources present when a
    study starts say nothing about what it will get: a driver on the head sizes the
    study's concurrency and GPUs per trial by this instead.
    """
    config = _bootstrap_config(path)
    if config is None:
        return {}
    total: dict[str, float] = {}
    for name, node in config["available_node_types"].items():
        count = 1 if name == config.get("head_node_type") else _number(node.get("max_workers"))
        for key, value in (node.get("resources") or {}).items():
            total[key] = total.get(key, 0) + count * _number(value)
    return total
