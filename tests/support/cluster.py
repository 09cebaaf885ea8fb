"""A 3-node RabbitMQ cluster on this machine, beside its own RabbitMQ, for the
cluster fault tests and the benchmarks.

Each node is a ``rabbitmq-server`` of its own (node name cqrs-RUN-cN@localhost,
AMQP and distribution ports of its own, data and logs in a folder of the
run's), started as the ``rabbitmq`` user so that it shares that user's Erlang
cookie with the machine's node and the CLI; nodes 2 and 3 join node 1. The
machine's own node (rabbit@..., port 5672) is never touched. A run's folder
names the process that started it: a later run kills the nodes of a run whose
process is gone (a crashed or killed test session) and deletes its folder.
Needs root (``runuser``), like the rest of the fault suite's service control.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .processes import free_port
from .waiting import eventually

#: Where every run keeps its nodes' folders (a folder per run).
BASE = Path(tempfile.gettempdir()) / "cqrs-warehouse-rabbitmq-clusters"
USER = "rabbitmq"
#: What the machine's /etc/rabbitmq/rabbitmq-env.conf sets, but its NODENAME.
_ENV_FILE = (
    'ERL_EPMD_ADDRESS=127.0.0.1\nexport ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"\n'
)


class ClusterError(Exception):
    """A node would not start, join or answer (the test fails on it)."""


def _ctl(*args: str, timeout: float = 90, tool: str = "rabbitmqctl") -> str:
    try:
        done = subprocess.run(
            [tool, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise ClusterError(f"{tool} {' '.join(args)} still ran after {timeout} s") from None
    if done.returncode != 0:
        raise ClusterError(f"{tool} {' '.join(args)} exited {done.returncode}: {done.stderr}")
    return done.stdout


@dataclass
class Node:
    name: str  # cqrs-RUN-cN@localhost
    port: int
    dist_port: int
    folder: Path

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def pid_file(self) -> Path:
        return self.folder / "pid"

    def pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.pid_file.read_text().strip())
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if f"RABBITMQ_NODENAME={self.name}".encode() in environ and _alive(pid):
                return pid  # (the node's own, not a reused pid)
        return None

    def ctl(self, *args: str, timeout: float = 90) -> str:
        return _ctl("-n", self.name, *args, timeout=timeout)

    def start(self) -> None:
        """Start the node (detached), its data as it was; returns at once."""
        self.pid_file.unlink(missing_ok=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\nloopback_users = none\n"
        )
        (self.folder / "env.conf").write_text(_ENV_FILE)
        (self.folder / "enabled_plugins").write_text("[].\n")
        shutil.chown(self.folder, USER)
        for path in self.folder.iterdir():
            if path.is_file():
                shutil.chown(path, USER)
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": os.path.expanduser(f"~{USER}"),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.folder / "rabbitmq"),
            "RABBITMQ_CONF_ENV_FILE": str(self.folder / "env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.folder / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.folder / "log"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
        }
        subprocess.run(
            ["runuser", "-u", USER, "--", "rabbitmq-server", "-detached"],
            env=env,
            check=True,
            timeout=60,
            capture_output=True,
        )

    def wait_started(self, timeout: float = 90) -> None:
        """Until the node's application runs (``rabbitmqctl wait`` on its pid file)."""
        self.ctl("wait", "--timeout", str(int(timeout)), str(self.pid_file), timeout=timeout + 10)

    def signal(self, signum: int) -> None:
        pid = self.pid()
        if pid is None:
            raise ClusterError(f"{self.name} has no process")
        os.kill(pid, signum)

    def kill(self) -> None:
        """SIGKILL: the node is gone at once, as a crashed machine's."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            eventually(lambda: _gone(pid), timeout=30, interval=0.05)

    @property
    def running(self) -> bool:
        return self.pid() is not None

    @property
    def answering(self) -> bool:
        """Running and not stopped (SIGSTOP): it can answer the CLI."""
        pid = self.pid()
        return pid is not None and _state(pid) not in ("T", "t")


def _state(pid: int) -> str:
    """The process's state letter (R, S, T: stopped, Z: a zombie...), "" if none."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, which holds nothing, does not)."""
    return _state(pid) not in ("", "Z")


def _gone(pid: int) -> None:
    assert not _alive(pid), f"process {pid} still runs"


@dataclass
class Cluster:
    run: str
    folder: Path
    nodes: list[Node]

    @property
    def url(self) -> str:
        """BROKER_URL for the three nodes, in order."""
        return ";".join(node.url for node in self.nodes)

    @classmethod
    def start(cls, size: int = 3) -> Cluster:
        """Start ``size`` nodes at once, then join nodes 2.. to node 1."""
        if os.geteuid() != 0:
            raise ClusterError("the cluster's nodes run as the rabbitmq user: run as root")
        remove_leftovers()
        run = uuid.uuid4().hex[:6]
        folder = BASE / run
        folder.mkdir(parents=True)
        (folder / "owner").write_text(str(os.getpid()))
        shutil.chown(BASE, USER)
        shutil.chown(folder, USER)
        cluster = cls(
            run,
            folder,
            [
                Node(f"cqrs-{run}-c{n}@localhost", free_port(), free_port(), folder / f"c{n}")
                for n in range(1, size + 1)
            ],
        )
        try:
            for node in cluster.nodes:
                node.start()
            _each(cluster.nodes, Node.wait_started)
            first = cluster.nodes[0]
            for node in cluster.nodes[1:]:
                node.ctl("stop_app")
                node.ctl("join_cluster", first.name)
                node.ctl("start_app")
            cluster.wait_whole()
        except BaseException:
            cluster.close()
            raise
        return cluster

    def running_nodes(self) -> set[str]:
        """The nodes the cluster counts as running, asked of any node that answers."""
        for node in self.nodes:
            if node.answering:
                with contextlib.suppress(ClusterError):
                    status = node.ctl("cluster_status", "--formatter", "erlang", timeout=20)
                    running = status.split("{running_nodes,", 1)[1].split("]", 1)[0]
                    return {n.name for n in self.nodes if n.name in running}
        return set()

    def wait_whole(self, timeout: float = 120) -> None:
        """Until every node runs and the cluster counts all of them."""

        def whole() -> None:
            assert self.running_nodes() == {n.name for n in self.nodes}, self.running_nodes()

        eventually(whole, timeout=timeout, interval=0.5)

    def restart(self, node: Node) -> None:
        """Start a node that was killed or stopped; returns once it runs again."""
        node.start()
        node.wait_started()

    def stop(self, node: Node) -> None:
        """Stop a node the way an operator does (``rabbitmqctl stop``)."""
        node.ctl("stop", str(node.pid_file))

    def ensure_whole(self) -> None:
        """Whatever a test did to the nodes: every one continued, started, clustered."""
        for node in self.nodes:
            with contextlib.suppress(OSError, ClusterError):
                node.signal(signal.SIGCONT)
        _each([n for n in self.nodes if not n.running], self.restart)
        self.wait_whole()

    def queue_members(self, prefix: str) -> dict[str, tuple[str, set[str]]]:
        """{queue: (leader, online members)} of the quorum queues named ``prefix``...,
        asked of a running node."""
        for node in self.nodes:
            if not node.answering:
                continue
            with contextlib.suppress(ClusterError):
                rows = node.ctl("list_queues", "-q", "name", "leader", "online", timeout=30)
                found = {}
                for line in rows.splitlines()[1:]:
                    name, leader, online = [*line.split("\t"), "", ""][:3]
                    if name.startswith(prefix):
                        found[name] = (leader, set(online.strip("[]").replace(" ", "").split(",")))
                return found
        raise ClusterError("no node of the cluster answers")

    def node_named(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)

    def close(self) -> None:
        """Kill every node and delete the run's folder."""
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


def remove_leftovers() -> None:
    """Kill the nodes of earlier runs whose process is gone (found by the node
    name in their environment, whether or not their folder is left); delete
    those runs' folders."""
    for pid, name in _node_processes().items():
        if not _owner_alive(BASE / name.split("-")[1]):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    if BASE.is_dir():
        for folder in BASE.iterdir():
            if not _owner_alive(folder):
                shutil.rmtree(folder, ignore_errors=True)


def _node_processes() -> dict[int, str]:
    """{pid: node name} of every running node of these clusters (cqrs-RUN-cN@...)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for variable in (proc / "environ").read_bytes().split(b"\0"):
                if variable.startswith(b"RABBITMQ_NODENAME=cqrs-") and _alive(int(proc.name)):
                    found[int(proc.name)] = variable.split(b"=", 1)[1].decode()
    return found


def _owner_alive(folder: Path) -> bool:
    try:
        return _alive(int((folder / "owner").read_text()))
    except (OSError, ValueError):
        return False


def _each(nodes: Iterable[Node], action: Callable[[Node], None]) -> None:
    """``action`` on every node at once (threads); the first error raised again."""
    errors: list[BaseException] = []

    def run(node: Node) -> None:
        try:
            action(node)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(node,)) for node in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
