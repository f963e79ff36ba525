"""The one private JAX API the project still calls, pinned so a JAX release that moves it fails
here, with the place to fix, rather than on a pod at start-up.

training/distributed.py asks JAX's own cluster detection (what jax.distributed.initialize runs)
for the coordinator, process count and id, to name the launcher in its error messages before
initializing; JAX has no public API for that detection (jax 0.12)."""

import inspect

EXPECTED_PARAMETERS = ["coordinator_address", "num_processes", "process_id", "local_device_ids",
                       "cluster_detection_method", "initialization_timeout"]


def test_cluster_detection_used_by_distributed_startup_is_where_it_was():
    try:
        from jax._src import clusters
    except ImportError as error:
        raise AssertionError("jax._src.clusters moved: update training/distributed.py's "
                             "job_layout, which calls its cluster detection") from error
    detect = getattr(clusters.ClusterEnv, "auto_detect_unset_distributed_params", None)
    assert detect is not None, ("jax._src.clusters.ClusterEnv.auto_detect_unset_distributed_params "
                                "is gone: update training/distributed.py's job_layout")
    parameters = list(inspect.signature(detect).parameters)
    assert parameters[-len(EXPECTED_PARAMETERS):] == EXPECTED_PARAMETERS, (
        f"ClusterEnv.auto_detect_unset_distributed_params now takes {parameters}: update the "
        "positional call in training/distributed.py's job_layout")
