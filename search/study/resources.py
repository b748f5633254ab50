"""What a trial asks of the Ray cluster, and whether any node can give it.

The driver starts (or joins) Ray, sizes GPUs per trial and the number of trials at once
from the cluster (an autoscaling cluster by what it may start, not what is up now), and
refuses per-trial resources no node can ever provide, which Ray would leave pending
forever.
"""

from __future__ import annotations

from search.space import Space, SpaceError


def start_ray(address: str | None, num_cpus: int | None) -> bool:
    """Start a local Ray (or join ``address``); True when the driver joined a cluster."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, num_cpus=num_cpus if address is None else None,
                 include_dashboard=False, log_to_driver=False, configure_logging=False)
    return address is not None  # an existing cluster, maybe autoscaling (search.cluster)


def check_trial_fits(space: Space, resources: dict[str, float], joined: bool) -> None:
    """Refuse per-trial resources that no node of the cluster can ever provide.

    Ray would keep such trials pending forever (and the study's MLflow run open). An
    autoscaling cluster counts the node types it may start, not only the nodes up now.
    """
    import ray

    from search.cluster import autoscaling_node_types

    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    nodes += autoscaling_node_types() if joined else []
    if any(node.get("CPU", 0) >= resources["cpu"] and node.get("GPU", 0) >= resources["gpu"] for node in nodes):
        return
    largest = ", ".join(sorted({f"{node.get('CPU', 0):g} CPUs / {node.get('GPU', 0):g} GPUs" for node in nodes}))
    raise SpaceError(space.path, "resources", f"each trial asks for {resources['cpu']:g} CPUs and "
                     f"{resources['gpu']:g} GPUs, but no node of the Ray cluster has that much (nodes: {largest}), "
                     "so every trial would wait forever",
                     "lower resources.cpus / resources.gpus, or add a node that big (--num-cpus sets the CPUs of "
                     "a local Ray)")


def cluster_totals(joined: bool = False) -> dict[str, float]:
    """Resources of the Ray cluster: those up now or, when the driver ``joined`` a cluster
    made by ``ray up`` with autoscaling workers, the most the autoscaler may start
    (whichever is larger). A Ray started by the driver itself never autoscales."""
    import ray

    from search.cluster import autoscaling_capacity

    now = ray.cluster_resources()
    most = autoscaling_capacity() if joined else {}
    return {key: max(float(now.get(key, 0)), float(most.get(key, 0))) for key in {*now, *most}}


def _cluster_gpus(joined: bool = False) -> float:
    return cluster_totals(joined).get("GPU", 0.0)


def trial_slots(resources: dict[str, float], joined: bool = False) -> int:
    """How many trials fit on the cluster at once with these per-trial resources."""
    total = cluster_totals(joined)
    slots = total.get("CPU", 1) // max(resources["cpu"], 1e-9)
    if resources["gpu"] > 0:
        slots = min(slots, total.get("GPU", 0) // resources["gpu"])
    return max(1, int(slots))


def trial_gpus(requested: float | None, available: float) -> float:
    """GPUs per trial: the space's value, or 1 when the cluster has GPUs (``null``).

    Asking for GPUs on a cluster without any would leave every trial pending forever,
    so it runs on CPUs instead, and says so.
    """
    if requested is None:
        return 1.0 if available > 0 else 0.0
    if requested > 0 and available == 0:
        print(f"resources.gpus is {requested:g} but the Ray cluster has no GPU: trials run on CPUs", flush=True)
        return 0.0
    return requested
