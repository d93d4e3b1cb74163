"""Ray at the study's edge: starting or joining Ray, whether a trial fits the cluster, and
shipping user code (objectives, registry plugins) to Ray's processes.

See ``RAY_NOTES.md`` for the Ray facts behind each choice: a local Ray always starts its
own instance (``address="local"``) with its dashboard process (Ray frees the placement
groups of trials stopped early through it), the UI bound to 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from tce_ray.core.registry import plugin_snapshot, snapshot_modules
from tce_ray.train.runspec import TrainSpec
from tce_ray.train.uri_credentials import moved_environment

__all__ = [
    "ensure_ray", "max_concurrent", "cluster_problem", "pickle_by_value", "shipped_plugins",
    "wait_for_address", "ClusterUnreachable", "DEFAULT_CONNECT_TIMEOUT_S",
]

DEFAULT_CONNECT_TIMEOUT_S = 30.0
"""How long ``--address HOST:PORT`` is waited for (``--connect-timeout``)."""


class ClusterUnreachable(RuntimeError):
    """The Ray cluster at the given address did not answer in time; ``str(err)`` is one line."""


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``HOST:PORT`` or ``ray://HOST:PORT`` (None for ``auto``, ``local``
    or an address without a port, which Ray resolves itself)."""
    rest = address.split("://", 1)[1] if "://" in address else address
    rest = rest.split("/", 1)[0]
    if rest in ("auto", "local") or ":" not in rest:
        return None
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        return None
    return host, int(port)


def wait_for_address(
    address: str, timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S, *,
    say: Callable[[str], None] | None = None, poll_s: float = 0.5,
) -> None:
    """Wait until something listens at ``address`` (``HOST:PORT`` or ``ray://HOST:PORT``), at
    most ``timeout_s`` seconds, before ``ray.init`` is called (which can wait for minutes
    and does not stop on Ctrl-C while it does). Raises :class:`ClusterUnreachable` (one
    line). Ctrl-C stops the wait (KeyboardInterrupt): it waits in short socket timeouts
    and sleeps. ``say`` gets one line when the first attempt fails (default: stderr)."""
    hp = _host_port(address)
    if hp is None:
        return
    host, port = hp
    deadline = time.monotonic() + max(0.0, timeout_s)
    said = False
    last: BaseException | None = None
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=max(0.05, min(2.0, left))):
                return
        except socket.gaierror as exc:
            raise ClusterUnreachable(
                f"cannot resolve the Ray cluster's host {host!r} ({exc.strerror or exc}); check --address / RAY_ADDRESS"
            ) from None
        except OSError as exc:
            last = exc
        left = deadline - time.monotonic()
        if left <= 0:
            break
        if not said:
            said = True
            (say or (lambda m: print(m, file=sys.stderr, flush=True)))(
                f"waiting for the Ray cluster at {host}:{port} (up to {timeout_s:g} s; Ctrl-C stops)")
        time.sleep(min(poll_s, left))
    why = getattr(last, "strerror", None) or last or "no answer"
    raise ClusterUnreachable(
        f"no Ray cluster answers at {host}:{port} after {timeout_s:g} s ({why}); start it (ray start --head "
        f"--port {port}) or fix --address / RAY_ADDRESS (--connect-timeout S waits longer)"
    )

_BY_REFERENCE = ("tce_ray", "numpy", "torch")
"""Top-level packages always pickled by reference (installed on every node)."""


def ensure_ray(
    address: str | None, dashboard: bool, *, quiet: bool = False, connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
) -> bool:
    """Initialise Ray unless it is; True when the Ray in use is a local one we started
    (or one this process had started), False for a cluster we connected to. A cluster
    address that does not answer within ``connect_timeout_s`` raises :class:`ClusterUnreachable`."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and not ("ray" in sys.modules and sys.modules["ray"].is_initialized()):
        wait_for_address(address, connect_timeout_s)
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env = {"RAY_USAGE_STATS_ENABLED": "0", **moved_environment()}  # a storage URI's credentials (not on disk)
    if dashboard:
        os.environ["RAY_TRAIN_ENABLE_STATE_TRACKING"] = "1"
    if os.environ.get("RAY_TRAIN_ENABLE_STATE_TRACKING"):
        env["RAY_TRAIN_ENABLE_STATE_TRACKING"] = os.environ["RAY_TRAIN_ENABLE_STATE_TRACKING"]
    if ray.is_initialized():
        if dashboard and not quiet:
            print("Ray was already initialised here; its dashboard (if any) is unchanged.")
        return True
    if address:
        ctx = ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=False)
    else:
        ctx = ray.init(
            address="local",  # a new local Ray, even where `ray start` left a cluster (use --address auto)
            include_dashboard=True,  # the State API frees placement groups of stopped trials
            dashboard_host="127.0.0.1",
            dashboard_port=None,  # 8265, or the next free port when another Ray holds it
            runtime_env={"env_vars": env},
            log_to_driver=False,
        )
    if dashboard:
        url = getattr(ctx, "dashboard_url", None)
        print(
            f"Ray dashboard: http://{url}  (token auth on: the token is in ~/.ray/auth_token)"
            if url else "Ray dashboard: not available on this cluster"
        )
    return not address


def max_concurrent(train: TrainSpec, limit: int | None) -> int:
    """``limit``, else what the cluster fits at once: CPUs (and GPUs) over one trial's
    worker demand."""
    if limit:
        return limit
    import ray

    res = ray.cluster_resources()
    fits = int(res.get("CPU", 1) // max(train.num_workers * train.cpus_per_worker, 1e-9))
    if train.use_gpu:
        fits = min(fits, int(res.get("GPU", 0) / (train.num_workers * train.gpus_per_worker) + 1e-9))
    return max(1, fits)


def cluster_problem(train: TrainSpec) -> str | None:
    """Why one trial's workers cannot fit the cluster as it is now (None: they fit)."""
    import ray

    res = ray.cluster_resources()
    need_cpu = train.num_workers * train.cpus_per_worker
    if need_cpu > res.get("CPU", 0) + 1e-9:
        return (
            f"one trial needs {need_cpu:g} CPUs (train.num_workers={train.num_workers} x "
            f"train.cpus_per_worker={train.cpus_per_worker:g}) but the Ray cluster has {res.get('CPU', 0):g}; "
            "lower them or add nodes"
        )
    need_gpu = train.num_workers * train.gpus_per_worker
    if train.use_gpu and need_gpu > res.get("GPU", 0) + 1e-9:
        return (
            f"train.use_gpu with {train.num_workers} workers x train.gpus_per_worker={train.gpus_per_worker:g} "
            f"needs {need_gpu:g} GPUs; the cluster has {res.get('GPU', 0):g}. Set train.use_gpu: false, fewer "
            "workers or a smaller gpus_per_worker"
        )
    return None


def pickle_by_value(modules: Iterable[str]) -> None:
    """Ship these modules' functions and classes to Ray's processes by value: a user's
    script or test file need not be importable there. ``__main__`` already goes by value;
    the package, numpy and torch stay by reference."""
    from ray import cloudpickle

    for name in modules:
        mod = sys.modules.get(name or "")
        if mod is None or name == "__main__" or name.split(".")[0] in _BY_REFERENCE:
            continue
        try:
            cloudpickle.register_pickle_by_value(mod)
        except ValueError:  # a module cloudpickle cannot take by value: leave it by reference
            pass


def shipped_plugins() -> list[Any]:
    """The registry entries registered outside the package (``tce_ray.core.registry``), their
    modules set to travel by value: pass the result to the Ray process that validates or
    builds runs, which installs it with ``tce_ray.core.registry.install_snapshot``."""
    snapshot = plugin_snapshot()
    pickle_by_value(snapshot_modules(snapshot))
    return snapshot
