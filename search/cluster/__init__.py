"""Ray clusters: check a cluster-launcher config (:mod:`search.cluster.check`) and run the
MLflow tracking server a cluster's trials log to (:mod:`search.cluster.service`)."""

from search.cluster.check import (
    BOOTSTRAP_CONFIG,
    SHARED_KEYS,
    ClusterConfigError,
    ClusterSummary,
    autoscaling_capacity,
    autoscaling_node_types,
    check_config,
    describe,
    detected_resources,
    load_config,
    project_errors,
    resource_mismatches,
    shared_differences,
)

__all__ = ["BOOTSTRAP_CONFIG", "SHARED_KEYS", "ClusterConfigError", "ClusterSummary", "autoscaling_capacity",
           "autoscaling_node_types", "check_config", "describe", "detected_resources", "load_config",
           "project_errors", "resource_mismatches", "shared_differences"]
