"""A multi-node Ray cluster on this machine for the tests: ``ray start`` processes, one per node.

Every node is a ``ray start --block`` process of its own (the head with ``--head``, the
others with ``--address``), with its own ``--temp-dir`` (so the cluster's address file,
``<temp-dir>/ray_current_cluster``, never replaces the one in /tmp/ray of another Ray on
this machine) and its own ports, all picked free on loopback. ``--block`` keeps the
``ray start`` process as the parent of the node's processes: stopping a node is a SIGTERM
to that process (it tears its processes down), never ``ray stop`` (which would stop every
Ray on the machine). :meth:`LocalCluster.kill_raylet` kills a node's raylet by PID, as a
lost machine would.

Node ids come from the raylet's command line (``--node_id=...``); no Ray client connects
from this process (a test session's own Ray stays as it is).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from s3_server import free_port

RAY = str(Path(sys.executable).with_name("ray"))


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc)."""
    parents: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in parents.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _renice_tree(pid: int, value: int) -> None:
    """Set the niceness of every thread of ``pid`` and its descendants (Linux: per thread)."""
    for p in [pid, *_children(pid)]:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{p}/task")]
        except OSError:
            continue
        for tid in tids:
            try:
                os.setpriority(os.PRIO_PROCESS, tid, value)
            except OSError:
                pass


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class Node:
    """One ``ray start --block`` process and what it started."""

    name: str
    process: subprocess.Popen
    log: Path
    node_id: str = ""
    raylet_pid: int = 0
    resources: dict = field(default_factory=dict)

    def find_raylet(self) -> bool:
        for pid in _children(self.process.pid):
            args = _cmdline(pid)
            if args and args[0].endswith("/raylet"):
                ids = [a.split("=", 1)[1] for a in args if a.startswith("--node_id=")]
                if ids:
                    self.raylet_pid, self.node_id = pid, ids[0]
                    return True
        return False


class LocalCluster:
    """A head node plus worker nodes, each a ``ray start --block`` process.

    Args:
        root: a folder for the nodes' temp dirs and logs (Ray's socket paths must stay
            short: use a folder directly under /tmp).
        env: the nodes' environment (their workers inherit it): e.g. PYTHONPATH, the S3
            endpoint settings, ``RAY_AUTH_MODE=token`` (Ray 2.60 turns token auth on for a
            head started here; the other nodes and drivers must use the token too).
    """

    def __init__(self, root: str | os.PathLike, env: dict[str, str], *, startup_nice: int = 0) -> None:
        self.root = Path(root)
        self.env = dict(env)
        self.startup_nice = startup_nice
        self.nodes: list[Node] = []
        self.port = 0
        self.dashboard_port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def head(self) -> Node:
        return self.nodes[0]

    def _common_args(self, name: str) -> list[str]:
        temp = self.root / name
        temp.mkdir(parents=True, exist_ok=True)
        return [
            "--block", "--temp-dir", str(temp), "--disable-usage-stats", "--include-log-monitor", "false",
            "--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
            "--metrics-export-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
            "--dashboard-agent-grpc-port", str(free_port()), "--runtime-env-agent-port", str(free_port()),
            "--object-store-memory", str(100 * 1024**2),
        ]

    def _resource_args(self, num_cpus: int, resources: dict | None, memory: int | None) -> list[str]:
        args = ["--num-cpus", str(num_cpus)]
        if resources:
            args += ["--resources", json.dumps(resources)]
        if memory is not None:
            args += ["--memory", str(memory)]
        return args

    def start_head(self, num_cpus: int, *, resources: dict | None = None, memory: int | None = None,
                   timeout_s: float = 240.0, attempts: int = 6) -> Node:
        def args() -> list[str]:
            self.port, self.dashboard_port = free_port(), free_port()
            return [
                RAY, "start", "--head", "--port", str(self.port), "--include-dashboard", "true",
                "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
                "--ray-client-server-port", str(free_port()),
                *self._resource_args(num_cpus, resources, memory), *self._common_args("head"),
            ]

        return self._start("head", args, resources or {}, timeout_s, attempts)

    def add_node(self, name: str, num_cpus: int, *, resources: dict | None = None, memory: int | None = None,
                 timeout_s: float = 240.0, attempts: int = 6) -> Node:
        if not self.nodes:
            raise RuntimeError("start the head first")

        def args() -> list[str]:
            return [RAY, "start", "--address", self.address, *self._resource_args(num_cpus, resources, memory),
                    *self._common_args(name)]

        return self._start(name, args, resources or {}, timeout_s, attempts)

    def _start(self, name: str, make_args, resources: dict, timeout_s: float, attempts: int) -> Node:
        """Start a node; retried when ``ray start`` gives up: its raylet waits a fixed 15 s for
        the node's dashboard agent (a Python process) to come up and must register with the
        GCS within a fixed 30 s, which a heavily loaded machine can miss."""
        for attempt in range(1, attempts + 1):
            log = self.root / f"{name}.{attempt}.log"
            nice = self.startup_nice
            with open(log, "w") as out:
                proc = subprocess.Popen(make_args(), env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True, preexec_fn=(lambda: os.nice(nice)) if nice else None)
            node = Node(name, proc, log, resources=resources)
            deadline = time.monotonic() + timeout_s
            try:
                while True:
                    text = log.read_text(errors="replace")
                    if "Ray runtime started" in text and node.find_raylet():
                        if nice:
                            _renice_tree(proc.pid, 0)  # the node runs at normal priority from here on
                        self.nodes.append(node)
                        return node
                    if proc.poll() is not None or time.monotonic() > deadline:
                        why = f"exited with {proc.returncode}" if proc.returncode is not None else f"not up in {timeout_s} s"
                        if attempt == attempts:
                            raise RuntimeError(f"ray start for node {name} {why} ({attempts} attempts):\n{text[-3000:]}")
                        print(f"ray start for node {name} {why}; trying again", flush=True)
                        self._stop(node)
                        break
                    time.sleep(0.5)
            except BaseException:  # never leave a half-started node behind (also on Ctrl-C)
                self._stop(node)
                raise
        raise AssertionError("unreachable")

    def node_by_id(self, node_id: str) -> Node:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise KeyError(f"no node {node_id} in {[n.node_id for n in self.nodes]}")

    def kill_raylet(self, node: Node) -> int:
        """SIGKILL the node's raylet (its workers then exit; its ``ray start`` tears down the rest)."""
        os.kill(node.raylet_pid, signal.SIGKILL)
        return node.raylet_pid

    def shutdown(self) -> None:
        """Stop every node (worker nodes first), then kill whatever they left behind."""
        for node in reversed(self.nodes):
            self._stop(node)
        self.nodes.clear()

    @staticmethod
    def _stop(node: Node) -> None:
        leftovers = _children(node.process.pid)
        if node.process.poll() is None:
            node.process.send_signal(signal.SIGTERM)
            try:
                node.process.wait(60)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait(10)
        for pid in leftovers + _children(node.process.pid):  # only processes this node started
            if alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:  # its session (start_new_session): whatever was re-parented away from it
            os.killpg(node.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def collect_logs(self, dest: str | os.PathLike) -> None:
        """Copy the ``ray start`` outputs and the nodes' Ray logs (gcs, raylets) to ``dest``."""
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        for f in self.root.glob("*.log"):
            shutil.copy(f, dest / f.name)
        for f in self.root.glob("*/session_*/logs/*"):
            if f.name.startswith(("raylet", "gcs_server")) and f.is_file():
                node = f.relative_to(self.root).parts[0]
                shutil.copy(f, dest / f"{node}-{f.name}")


def short_tmp(prefix: str) -> str:
    """A fresh folder directly under /tmp (Ray's socket paths must stay under 108 bytes)."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


def remove_tree(path: str | os.PathLike) -> None:
    shutil.rmtree(path, ignore_errors=True)
