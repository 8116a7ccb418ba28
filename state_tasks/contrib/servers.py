"""Real servers for tests and benchmarks: a private redis-server and worker subprocesses.

Used by this project's test suite and benchmarks, and usable by yours::

    from state_tasks.contrib.servers import RedisServer, Worker

    server = RedisServer(tmp_path / "redis")           # a free port, nothing on disk
    worker = Worker(tmp_path, {"REDIS_URL": server.url()}, includes=("myhandlers",)).start()
    ...
    worker.stop()
    server.stop()
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

CELERY = [sys.executable, "-m", "celery"]
_names = itertools.count(1)
#: Variables of ours that a developer's shell may carry; a worker started here gets only
#: the ones it is given.
OUR_VARIABLES = (
    "CELERY_BROKER_URL",
    "CELERY_RESULT_BACKEND",
    "REDIS_URL",
    "STATE_CONFIG",
    "CELERY_WORKER_POOL",
    "CELERY_WORKER_CONCURRENCY",
    "STATE_TASKS_DATA_DIR",
    "CELERY_CONFIG_MODULE",
    "CELERY_SSL_CA_CERTS",
    "CELERY_SSL_CERTFILE",
    "CELERY_SSL_KEYFILE",
    "CELERY_SSL_CERT_REQS",
    "STATE_TASKS_SIGNING_KEY",
    "STATE_TASKS_SIGNING_CERT",
    "STATE_TASKS_SIGNING_CERT_STORE",
    "STATE_TASKS_SENTINEL_MASTER",
    "STATE_TASKS_SENTINEL_PASSWORD",
    "STATE_TASKS_QUEUE_TYPE",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_cluster_port() -> int:
    """A free port whose cluster bus port (10,000 higher) is free too."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20_000, 55_000)
        try:
            for candidate in (port, port + 10_000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def wait_until(
    predicate: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def _redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed; run ./scripts/test, which installs it")
    return binary


def _launch_redis(workdir: Path, port: int, *args: str) -> subprocess.Popen[bytes]:
    """Start one redis-server on ``127.0.0.1:port`` with its files in ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            _redis_binary(),
            *args,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(workdir),
            "--logfile",
            str(workdir / f"redis-{port}.log"),
        ],
    )


def _stop(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for TLS tests: a CA, a server and a client certificate it signed, and a
    second CA that signed nothing here (a client trusting only it must be refused)."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_cert: Path


def _openssl(*args: str | Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise RuntimeError("openssl is not installed; it makes the test certificates")
    done = subprocess.run([binary, *map(str, args)], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(map(str, args))} failed: {done.stderr.strip()}")


def self_signed_certificate(folder: Path, name: str, days: int = 2) -> tuple[Path, Path]:
    """A self-signed certificate and its key (``<name>.crt``, ``<name>.key``): a test CA,
    or a message-signing identity. Returns ``(certificate, key)``."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", str(days),
        "-subj", f"/CN={name}", "-keyout", key, "-out", cert,
    )  # fmt: skip
    return cert, key


def _signed_certificate(folder: Path, name: str, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    """A certificate for ``127.0.0.1`` and ``localhost`` signed by ``ca``."""
    cert, key, request = folder / f"{name}.crt", folder / f"{name}.key", folder / f"{name}.csr"
    extensions = folder / f"{name}.ext"
    extensions.write_text("subjectAltName = IP:127.0.0.1, DNS:localhost\n")
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-sha256", "-subj", f"/CN={name}",
        "-keyout", key, "-out", request,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", request, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
        "-days", "2", "-sha256", "-extfile", extensions, "-out", cert,
    )  # fmt: skip
    return cert, key


def make_tls_files(folder: Path) -> TlsFiles:
    """Make a test CA with a server and a client certificate (``openssl``), in ``folder``."""
    ca = self_signed_certificate(folder, "ca")
    server = _signed_certificate(folder, "server", ca)
    client = _signed_certificate(folder, "client", ca)
    other_ca, _ = self_signed_certificate(folder, "other-ca")
    return TlsFiles(ca[0], server[0], server[1], client[0], client[1], other_ca)


class RedisServer:
    """A redis-server of our own on a free port, keeping nothing on disk."""

    def __init__(
        self,
        workdir: Path,
        password: str | None = None,
        persistent: bool = False,
        tls: TlsFiles | None = None,
    ) -> None:
        """``persistent``: an append-only file fsynced on every write, so a restart (even
        after ``kill -9``) keeps every acknowledged write. ``password``: the default user
        needs it (``--requirepass``). ``tls``: also listen with TLS on ``tls_port``,
        requiring a client certificate signed by ``tls.ca_cert`` (see :meth:`tls_url`)."""
        self.password = password
        self.persistent = persistent
        self.tls = tls
        self.workdir = workdir
        self.port = free_port()
        self.tls_port = free_port() if tls is not None else None
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        extra: list[str] = []
        if self.password:
            extra += ["--requirepass", self.password]
        if self.tls is not None:
            extra += [
                "--tls-port", str(self.tls_port),
                "--tls-cert-file", str(self.tls.server_cert),
                "--tls-key-file", str(self.tls.server_key),
                "--tls-ca-cert-file", str(self.tls.ca_cert),
                "--tls-auth-clients", "yes",
            ]  # fmt: skip
        self.process = _launch_redis(
            self.workdir,
            self.port,
            "--save",
            "",
            "--appendonly",
            "yes" if self.persistent else "no",
            "--appendfsync",
            "always",
            "--databases",
            "1024",
            *extra,
        )
        client = redis.Redis(port=self.port, password=self.password)
        wait_until(lambda: _pings(client), 10, f"redis-server on port {self.port}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        _stop(self.process, sig)
        self.process = None

    def url(self, db: int = 0) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def tls_url(self, db: int = 0) -> str:
        """The ``rediss://`` URL of the TLS port (the server was started with ``tls``)."""
        if self.tls_port is None:
            raise RuntimeError("this RedisServer was started without tls")
        auth = f":{self.password}@" if self.password else ""
        return f"rediss://{auth}127.0.0.1:{self.tls_port}/{db}"


class RedisCluster:
    """A local Redis Cluster: ``masters`` masters with ``replicas`` replicas each.

    Every node is a redis-server on a free loopback port with ``--cluster-enabled yes``;
    ``redis-cli --cluster create`` assigns the slots. ``node_timeout_ms`` is how long the
    others wait before failing a silent master over to its replica (short in tests).
    """

    def __init__(
        self, workdir: Path, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 2000
    ) -> None:
        self.workdir = workdir
        self.ports = [free_cluster_port() for _ in range(masters * (1 + replicas))]
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        for port in self.ports:
            self.processes[port] = _launch_redis(
                workdir / str(port),
                port,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{port}.conf",
                "--cluster-node-timeout",
                str(node_timeout_ms),
                "--save",
                "",
                "--appendonly",
                "no",
            )
        for port in self.ports:
            client = redis.Redis(port=port)
            wait_until(lambda c=client: _pings(c), 10, f"cluster node on port {port}")  # type: ignore[misc]
        created = subprocess.run(
            [
                shutil.which("redis-cli") or "redis-cli",
                "--cluster",
                "create",
                *[f"127.0.0.1:{port}" for port in self.ports],
                "--cluster-replicas",
                str(replicas),
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if created.returncode != 0:
            self.stop()
            raise RuntimeError(
                f"redis-cli --cluster create failed: {created.stdout}{created.stderr}"
            )
        wait_until(self._all_ok, 60, "the cluster to be ok and every replica synced")

    def _all_ok(self) -> bool:
        for port in self.live_ports():
            try:
                info = redis.Redis(port=port, decode_responses=True).cluster("info")
            except redis.RedisError:
                return False
            if info.get("cluster_state") != "ok":
                return False
            # A replica that has not synced once cannot take over from its master.
            replication = redis.Redis(port=port, decode_responses=True).info("replication")
            if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
                return False
        return True

    def live_ports(self) -> list[int]:
        return [port for port, process in self.processes.items() if process.poll() is None]

    def url(self) -> str:
        """A seed node's URL (any live node lets a cluster client find the others)."""
        return f"redis://127.0.0.1:{self.live_ports()[0]}"

    def cluster_url(self) -> str:
        """The RedisAdapter's URL for this cluster: every live node as a seed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.live_ports())

    def master_of(self, key: str) -> int:
        """The port of the master that owns ``key``'s slot now."""
        client = redis.RedisCluster(host="127.0.0.1", port=self.live_ports()[0])
        try:
            node = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
            return int(node.port)
        finally:
            client.close()

    def kill(self, port: int, sig: int = signal.SIGKILL) -> None:
        """Stop one node (SIGKILL by default: a crash, as a failover test wants)."""
        _stop(self.processes[port], sig)

    def stop(self) -> None:
        for process in self.processes.values():
            _stop(process)


class RedisSentinelGroup:
    """A master, one replica and three sentinels watching it as ``master_name``."""

    def __init__(
        self, workdir: Path, master_name: str = "mymaster", down_after_ms: int = 1000
    ) -> None:
        self.workdir = workdir
        self.master_name = master_name
        self.master_port, self.replica_port = free_port(), free_port()
        self.sentinel_ports = [free_port() for _ in range(3)]
        common = ("--save", "", "--appendonly", "no", "--databases", "1024")
        self.processes = {
            self.master_port: _launch_redis(workdir / "master", self.master_port, *common),
            self.replica_port: _launch_redis(
                workdir / "replica",
                self.replica_port,
                *common,
                "--replicaof",
                "127.0.0.1",
                str(self.master_port),
            ),
        }
        for port in self.sentinel_ports:
            folder = workdir / f"sentinel-{port}"
            folder.mkdir(parents=True, exist_ok=True)
            config = folder / "sentinel.conf"  # sentinels rewrite their config: one each
            config.write_text(
                f"sentinel monitor {master_name} 127.0.0.1 {self.master_port} 2\n"
                f"sentinel down-after-milliseconds {master_name} {down_after_ms}\n"
                f"sentinel failover-timeout {master_name} {max(3 * down_after_ms, 3000)}\n"
                f"sentinel parallel-syncs {master_name} 1\n"
            )
            self.processes[port] = _launch_redis(folder, port, str(config), "--sentinel")
        for port in self.processes:
            client = redis.Redis(port=port)
            wait_until(lambda c=client: _pings(c), 10, f"redis on port {port}")  # type: ignore[misc]
        wait_until(self._ready, 60, "the replica to sync and the sentinels to know everyone")

    def _ready(self) -> bool:
        info = redis.Redis(port=self.replica_port).info("replication")
        if info.get("master_link_status") != "up":
            return False
        for port in self.sentinel_ports:  # a failover needs the replica and a quorum known
            sentinel = redis.Redis(port=port, decode_responses=True)
            replicas = sentinel.execute_command("SENTINEL", "REPLICAS", self.master_name)  # type: ignore[no-untyped-call]
            others = sentinel.execute_command("SENTINEL", "SENTINELS", self.master_name)  # type: ignore[no-untyped-call]
            if not replicas or len(others) < len(self.sentinel_ports) - 1:
                return False
            if not any(_promotable(replica) for replica in replicas):
                return False
        return True

    def sentinel_url(self) -> str:
        """kombu's convention: every sentinel, ``;``-separated (``master_name`` goes apart)."""
        return ";".join(f"sentinel://127.0.0.1:{port}" for port in self.sentinel_ports)

    def master_port_now(self) -> int:
        """The port of the master the sentinels name now."""
        sentinel = redis.Redis(port=self.sentinel_ports[0], decode_responses=True)
        _host, port = sentinel.execute_command(  # type: ignore[no-untyped-call]
            "SENTINEL", "get-master-addr-by-name", self.master_name
        )
        return int(port)

    def failover(self, timeout_s: float = 30) -> None:
        """Ask a sentinel for a failover (``SENTINEL FAILOVER``), as an operator would, and
        ask again while it answers that no replica can be promoted yet (``NOGOODSLAVE``: a
        replica that rejoined a moment ago is not trusted before the sentinel has its
        ``INFO``) or that a failover is under way (``INPROG``)."""
        sentinel = redis.Redis(port=self.sentinel_ports[0])
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                sentinel.execute_command("SENTINEL", "FAILOVER", self.master_name)  # type: ignore[no-untyped-call]
                return
            except redis.ResponseError as e:
                retryable = str(e).startswith(("NOGOODSLAVE", "INPROG"))
                if not retryable or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def stop(self) -> None:
        for process in self.processes.values():
            _stop(process)


def _promotable(replica: Any) -> bool:
    """Whether a sentinel would promote this replica now (a ``SENTINEL REPLICAS`` entry, as
    redis-py parses it or as flat pairs): linked to its master, not flagged down, and its
    ``INFO`` fresh."""
    if isinstance(replica, dict):
        fields = {str(k): str(v) for k, v in replica.items()}
    else:
        fields = dict(zip(replica[::2], replica[1::2], strict=True))
    return (
        fields.get("flags") == "slave"
        and fields.get("master-link-status") == "ok"
        and int(fields.get("info-refresh", "1000000")) < 10_000
    )


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


class Worker:
    """A ``celery -A state_tasks worker`` subprocess with its own environment."""

    def __init__(
        self,
        workdir: Path,
        env: Mapping[str, str],
        args: tuple[str, ...] = (),
        includes: tuple[str, ...] = (),
        name: str | None = None,
        pythonpath: Sequence[str | os.PathLike[str]] = (),
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name or f"w{next(_names)}"
        self.log_path = workdir / f"{self.name}.log"
        ambient = {k: v for k, v in os.environ.items() if k not in OUR_VARIABLES}
        self.env = {**ambient, **env, "PYTHONPATH": os.pathsep.join(map(str, pythonpath))}
        self.command = [
            *CELERY,
            "-A",
            "state_tasks",
            "worker",
            "-l",
            "info",
            "-n",
            f"{self.name}@%h",
            # One -I with a comma-separated list: Celery keeps only the last of several -I.
            *(("-I", ",".join(includes)) if includes else ()),
            *args,
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> Worker:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command, cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        if wait:
            wait_until(self._ready, 60, f"worker {self.name} to be ready:\n{self.tail()}", 0.1)
        return self

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"worker {self.name} exited early:\n{self.tail()}")
        return " ready." in self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        code = self.process.returncode
        self.process = None
        return code

    def run_to_exit(self, timeout_s: float = 60) -> tuple[int, str]:
        """Start the worker expecting it to refuse to start; return its exit code and log."""
        self.start(wait=False)
        assert self.process is not None
        try:
            code = self.process.wait(timeout_s)
        finally:
            self.stop(signal.SIGKILL)
        return code, self.log()


def adapter_yaml(adapter_class: str, **config: object) -> str:
    """A state.yaml for one adapter with the given config."""
    fields = ", ".join(f"{name}: {json.dumps(value)}" for name, value in config.items())
    return (
        "modules:\n  - class: modules::state::StateModule\n    config:\n      adapter:\n"
        f"        class: {adapter_class}\n        config: {{{fields}}}\n"
    )


class RabbitVhost:
    """A fresh RabbitMQ virtual host on the local server (guest has every permission).

    Needs a running ``rabbitmq-server`` and ``rabbitmqctl`` (root); ``./scripts/test``
    installs and starts them when missing.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 5672) -> None:
        self.name = f"state-tasks-{os.getpid()}-{next(_names)}"
        self.url = f"amqp://guest:guest@{host}:{port}/{self.name}"
        _rabbitmqctl("add_vhost", self.name)
        _rabbitmqctl("set_permissions", "-p", self.name, "guest", ".*", ".*", ".*")

    def delete(self) -> None:
        _rabbitmqctl("delete_vhost", self.name)


def _rabbitmqctl(*args: str) -> None:
    binary = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    done = subprocess.run([binary, "-q", *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr.strip()}")


def _rabbit_tool(name: str) -> str:
    """``rabbitmq-server`` or ``rabbitmqctl`` themselves: Debian's ``/usr/sbin`` wrappers
    switch to the ``rabbitmq`` user when run as root, who cannot read a test's files."""
    packaged = Path("/usr/lib/rabbitmq/bin") / name
    if packaged.exists():
        return str(packaged)
    binary = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if binary is None:
        raise RuntimeError(f"{name} is not installed; run ./scripts/test, which installs it")
    return binary


class RabbitTlsNode:
    """A RabbitMQ node of our own that listens only with TLS (``amqps://``), on a free port.

    Its own node name, ports, config, logs, database and Erlang cookie (a ``HOME`` of its
    own), all in ``workdir``; no plugins; no plain AMQP listener. The server presents
    ``tls.server_cert`` (for ``127.0.0.1`` and ``localhost``), and with
    ``require_client_cert`` refuses a client without a certificate signed by
    ``tls.ca_cert``. Any node already running (the usual one on 5672) is left alone.
    Starting takes a few seconds::

        node = RabbitTlsNode(tmp_path / "rabbit", make_tls_files(tmp_path / "certs"))
        node.url()   # amqps://guest:guest@127.0.0.1:<port>//  (guest: loopback only)
        node.stop()
    """

    def __init__(
        self,
        workdir: Path,
        tls: TlsFiles,
        require_client_cert: bool = True,
        start_timeout_s: float = 90,
    ) -> None:
        self.workdir = workdir
        self.tls = tls
        self.require_client_cert = require_client_cert
        self.node = f"tls-{os.getpid()}-{next(_names)}@localhost"
        self.tls_port = free_port()
        self.dist_port = free_port()
        self.log_path = workdir / "rabbitmq-server.out"
        self.process: subprocess.Popen[bytes] | None = None
        self.start(start_timeout_s)

    def _env(self) -> dict[str, str]:
        home = self.workdir / "home"
        home.mkdir(parents=True, exist_ok=True)
        env_file = self.workdir / "rabbitmq-env.conf"  # not the system's (it names a node)
        env_file.touch()
        plugins = self.workdir / "enabled_plugins"
        plugins.write_text("[].\n")
        config = self.workdir / "rabbitmq.conf"
        config.write_text(
            "listeners.tcp = none\n"
            f"listeners.ssl.default = 127.0.0.1:{self.tls_port}\n"
            f"ssl_options.cacertfile = {self.tls.ca_cert}\n"
            f"ssl_options.certfile = {self.tls.server_cert}\n"
            f"ssl_options.keyfile = {self.tls.server_key}\n"
            "ssl_options.verify = verify_peer\n"
            f"ssl_options.fail_if_no_peer_cert = {str(self.require_client_cert).lower()}\n"
        )
        ambient = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        return ambient | {
            "HOME": str(home),  # the Erlang cookie: $HOME/.erlang.cookie, made at start
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONF_ENV_FILE": str(env_file),
            "RABBITMQ_CONFIG_FILE": str(config),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.workdir / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
            "RABBITMQ_MNESIA_BASE": str(self.workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.workdir / "log"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def start(self, timeout_s: float = 90) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = self._env()
        with self.log_path.open("ab") as log:
            # A session of its own: rabbitmq-server is a shell that runs the Erlang VM as a
            # child, and stop() may have to kill both.
            self.process = subprocess.Popen(
                [_rabbit_tool("rabbitmq-server")],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_until(self._started, timeout_s, f"RabbitMQ node {self.node}", 0.2)
        except BaseException:
            self.stop()
            raise

    def _started(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"RabbitMQ node {self.node} exited early:\n{self.tail()}")
        # await_startup fails at once while the node has not registered with epmd.
        return self.ctl("await_startup", "--timeout", "10", check=False).returncode == 0

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``rabbitmqctl -n <this node> -q <args>``."""
        done = subprocess.run(
            [_rabbit_tool("rabbitmqctl"), "-n", self.node, "-q", *args],
            env=self._ctl_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr.strip()}")
        return done

    def _ctl_env(self) -> dict[str, str]:
        ambient = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        return ambient | {
            "HOME": str(self.workdir / "home"),
            "RABBITMQ_CONF_ENV_FILE": str(self.workdir / "rabbitmq-env.conf"),
        }

    def connections(self) -> list[dict[str, str]]:
        """The node's client connections: ``ssl`` (``true``/``false``), ``peer_cert_subject``
        and ``user`` of each."""
        done = self.ctl(
            "list_connections", "--no-table-headers", "ssl", "peer_cert_subject", "user"
        )
        rows = [line.split("\t") for line in done.stdout.splitlines() if line.strip()]
        return [{"ssl": r[0], "peer_cert_subject": r[1], "user": r[2]} for r in rows]

    def url(
        self,
        vhost: str = "/",
        user: str = "guest",
        password: str = "guest",
        host: str = "127.0.0.1",
    ) -> str:
        """The ``amqps://`` URL of the TLS listener (``guest`` logs in from loopback only;
        ``host``: ``127.0.0.1`` or ``localhost``, the names the certificate has)."""
        path = "//" if vhost == "/" else f"/{vhost}"
        return f"amqps://{user}:{password}@{host}:{self.tls_port}{path}"

    def tail(self, lines: int = 40) -> str:
        logs = [self.log_path, *sorted((self.workdir / "log").glob("*.log"))]
        text = "\n".join(p.read_text(errors="replace") for p in logs if p.exists())
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """``rabbitmqctl stop``; then SIGTERM to the node's session (the script stops the VM
        cleanly on it), and SIGKILL to every process of it still there after 10 s more: a
        node hung at boot leaves no Erlang VM behind."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.ctl("stop", check=False)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self._signal_session(signal.SIGTERM)
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    pass
        self._signal_session(signal.SIGKILL)  # whatever of the session outlived the shell
        if self.process.poll() is None:
            self.process.wait(10)
        self.process = None

    def _signal_session(self, sig: int) -> None:
        assert self.process is not None
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass
