"""Test (and benchmark) infrastructure beyond one local server: PostgreSQL clusters of our own
(Debian's PostgreSQL 15 binaries, run as the `postgres` user), streaming replicas made with
pg_basebackup, and worker "hosts" in network namespaces joined to this one by veth pairs.

Everything here cleans up after itself: use `PgCluster`/`Hosts` as context managers (or call
`destroy()`), so a failing test leaves no server, namespace or link behind."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

PGBIN = Path(os.environ.get("PGQ_PG_BIN", "/usr/lib/postgresql/15/bin"))
HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cluster_unavailable() -> str | None:
    """Why we cannot start PostgreSQL clusters of our own here, or None."""
    if not (PGBIN / "postgres").exists():
        return f"no PostgreSQL binaries in {PGBIN} (set PGQ_PG_BIN)"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` user to run PostgreSQL as"
    return None


def _as_postgres() -> dict[str, Any]:
    return {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}


def _run(*args: str | Path) -> None:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                          **_as_postgres(), check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} failed:\n{proc.stdout}{proc.stderr}")


class PgCluster:
    """One PostgreSQL server in a fresh directory: trust authentication, TCP on
    `listen` addresses plus a Unix socket in its directory."""

    def __init__(self, name: str, *, port: int | None = None, listen: str = "127.0.0.1",
                 settings: dict[str, Any] | None = None, base: Path | None = None) -> None:
        self.name = name
        self.base = base or Path(tempfile.mkdtemp(prefix=f"pgq-{name}-"))
        os.chmod(self.base, 0o777)
        self.data = self.base / "data"
        self.port = port or free_port()
        self.listen = listen
        self.settings = {
            "max_connections": 200, "wal_level": "replica", "max_wal_senders": 10,
            "fsync": "off", "full_page_writes": "off", "shared_buffers": "64MB",
            "wal_sender_timeout": "5s", "wal_receiver_status_interval": "1s",
            **(settings or {}),
        }
        self.owned = [self.base]

    # --- life cycle ---------------------------------------------------------------------

    def init(self) -> PgCluster:
        _run(PGBIN / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
             "--no-sync")
        with open(self.data / "pg_hba.conf", "a") as hba:
            hba.write("host all all 0.0.0.0/0 trust\nhost replication all 0.0.0.0/0 trust\n")
        self._write_settings()
        return self

    def _write_settings(self) -> None:
        values = {**self.settings, "port": self.port, "listen_addresses": self.listen,
                  "unix_socket_directories": str(self.base)}
        with open(self.data / "postgresql.auto.conf", "a") as conf:
            for key, value in values.items():
                text = value if isinstance(value, int | float) else f"'{value}'"
                conf.write(f"{key} = {text}\n")

    def set(self, **settings: Any) -> None:
        """Change settings (written now, applied on the next start or reload)."""
        self.settings.update(settings)
        self._write_settings()

    def start(self) -> PgCluster:
        _run(PGBIN / "pg_ctl", "-D", self.data, "-l", self.base / "log", "-w", "-t", "60",
             "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        with contextlib.suppress(RuntimeError):
            _run(PGBIN / "pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend: a crashed machine, as far as we can."""
        pids = self._pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _pids(self) -> list[int]:
        pidfile = self.data / "postmaster.pid"
        if not pidfile.exists():
            return []
        postmaster = int(pidfile.read_text().split()[0])
        children = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True,
                                  text=True, check=False).stdout.split()
        return [postmaster, *map(int, children)]

    def promote(self) -> None:
        _run(PGBIN / "pg_ctl", "-D", self.data, "-w", "-t", "60", "promote")

    def reload(self) -> None:
        _run(PGBIN / "pg_ctl", "-D", self.data, "reload")

    def destroy(self) -> None:
        self.stop("immediate")
        self.kill()
        for path in self.owned:
            shutil.rmtree(path, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # --- connecting ---------------------------------------------------------------------

    def dsn(self, dbname: str = "postgres", host: str | None = None) -> str:
        return f"host={host or self.base} port={self.port} user=postgres dbname={dbname}"

    def tcp_dsn(self, dbname: str = "postgres", host: str = "127.0.0.1") -> str:
        return self.dsn(dbname, host)

    def sql(self, query: str, *params: Any, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn(dbname), autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(query, params or None)
            return cur.fetchall() if cur.description else []

    def create_database(self, name: str) -> str:
        self.sql(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    # --- replication --------------------------------------------------------------------

    def replica(self, name: str, *, application_name: str = "replica1",
                stream_from: tuple[str, int] | None = None) -> PgCluster:
        """A streaming replica of this (running) server, made with pg_basebackup, started.
        `stream_from` (host, port): where it reaches this server for WAL (e.g. a proxy)."""
        standby = PgCluster(name, listen=self.listen, settings=self.settings)
        host, port = stream_from or (str(self.base), self.port)
        _run(PGBIN / "pg_basebackup", "-D", standby.data, "-h", self.base, "-p", self.port,
             "-U", "postgres", "-X", "stream", "-R", "--checkpoint=fast", "--no-sync")
        with open(standby.data / "postgresql.auto.conf", "a") as conf:
            conf.write(f"primary_conninfo = 'host={host} port={port} user=postgres "
                       f"application_name={application_name}'\n")
        standby._write_settings()
        return standby.start()

    def wait_streaming(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sql("SELECT 1 FROM pg_stat_replication WHERE state = 'streaming'"):
                return
            time.sleep(0.05)
        raise AssertionError("the replica did not start streaming")


# --- worker hosts in network namespaces ------------------------------------------------------


def _ip(*args: str, netns: str | None = None, check: bool = True) -> bool:
    cmd = ["ip", *(["netns", "exec", netns, "ip"] if netns else []), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip()}")
    return proc.returncode == 0


def netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    probe = f"pgqprobe{os.getpid()}"
    if not _ip("netns", "add", probe, check=False):
        return "`ip netns add` is not permitted here"
    _ip("netns", "del", probe, check=False)
    return None


def netem_available() -> bool:
    """Whether this kernel has the netem qdisc (it is a module some kernels leave out)."""
    probe = f"pqnm{os.getpid() % 100000}"
    if not _ip("link", "add", probe, "type", "dummy", check=False):
        return False
    try:
        return subprocess.run(["tc", "qdisc", "add", "dev", probe, "root", "netem", "delay",
                               "1ms"], capture_output=True, check=False).returncode == 0
    finally:
        _ip("link", "del", probe, check=False)


class Host:
    """One network namespace with a veth pair to this one: `address` is its side,
    `gateway` ours (where a server listening on it is reachable from the namespace)."""

    def __init__(self, index: int, tag: int) -> None:
        self.index = index
        self.netns = f"pgqhost{tag}-{index}"
        self.veth_out = f"pq{tag}h{index}"  # our side; names are at most 15 bytes
        self.veth_in = f"pq{tag}n{index}"
        # A /30 per host inside a /24 of this process's own (tag: its pid), so two runs at
        # once (a test and a benchmark) never share addresses.
        subnet = f"10.{200 + (tag >> 8) % 50}.{tag % 256}"
        self.gateway = f"{subnet}.{4 * index + 1}"
        self.address = f"{subnet}.{4 * index + 2}"
        self.processes: list[subprocess.Popen[Any]] = []  # workers: stop_processes() ends them
        self.services: list[subprocess.Popen[Any]] = []  # the delay proxy: lives until destroy()
        self.db_host = self.gateway  # where processes in the namespace reach PostgreSQL
        self.db_port: int | None = None

    def create(self, delay_ms: float) -> str:
        """Create the namespace and link; returns how the delay is made ("netem", "proxy"
        when the caller must start a delaying proxy, or "none")."""
        _ip("netns", "add", self.netns)
        _ip("link", "add", self.veth_out, "type", "veth", "peer", "name", self.veth_in)
        _ip("link", "set", self.veth_in, "netns", self.netns)
        _ip("addr", "add", f"{self.gateway}/30", "dev", self.veth_out)
        _ip("link", "set", self.veth_out, "up")
        _ip("addr", "add", f"{self.address}/30", "dev", self.veth_in, netns=self.netns)
        _ip("link", "set", self.veth_in, "up", netns=self.netns)
        _ip("link", "set", "lo", "up", netns=self.netns)
        if delay_ms <= 0:
            return "none"
        half = f"{delay_ms / 2:g}ms"  # each direction: the round trip gets the whole delay
        ok = all(subprocess.run(cmd, capture_output=True, check=False).returncode == 0 for cmd in (
            ["tc", "qdisc", "add", "dev", self.veth_out, "root", "netem", "delay", half],
            ["ip", "netns", "exec", self.netns, "tc", "qdisc", "add", "dev", self.veth_in,
             "root", "netem", "delay", half]))
        return "netem" if ok else "proxy"

    def command(self, args: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *args]

    def spawn(self, args: list[str], *, service: bool = False,
              **kwargs: Any) -> subprocess.Popen[Any]:
        proc = subprocess.Popen(self.command(args), start_new_session=True, **kwargs)
        (self.services if service else self.processes).append(proc)
        return proc

    def start_delay_proxy(self, server: str, port: int, delay_ms: float) -> None:
        """A userspace stand-in for netem: a forwarder inside the namespace that holds every
        chunk for delay/2 in each direction; processes there connect to 127.0.0.1."""
        local = 6432
        self.spawn([sys.executable, str(HERE / "delay_proxy.py"), f"127.0.0.1:{local}",
                    f"{server}:{port}", str(delay_ms / 2)], service=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.db_host, self.db_port = "127.0.0.1", local
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            probe = subprocess.run(self.command([sys.executable, "-c",
                                                 "import socket; socket.create_connection("
                                                 f"('127.0.0.1', {local}), 1).close()"]),
                                   capture_output=True, check=False)
            if probe.returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError(f"the delay proxy in {self.netns} did not start")

    def stop_processes(self, services: bool = False) -> None:
        procs = self.processes + (self.services if services else [])
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def destroy(self) -> None:
        self.stop_processes(services=True)
        _ip("netns", "del", self.netns, check=False)  # takes the veth pair with it
        _ip("link", "del", self.veth_out, check=False)


def remove_stale_namespaces() -> None:
    """Namespaces left by an earlier run that was killed before it could clean up (their
    name carries the pid of the process that made them)."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                             check=False).stdout
    for name in re.findall(r"^pgqhost(\d+)-\d+", listing, re.M):
        if not Path(f"/proc/{name}").exists():
            for netns in re.findall(rf"^(pgqhost{name}-\d+)", listing, re.M):
                _ip("netns", "del", netns, check=False)


class Hosts:
    """`n` worker hosts, each a network namespace `delay_ms` (round trip) away."""

    def __init__(self, n: int, delay_ms: float = 2.0) -> None:
        self.tag = os.getpid()
        self.hosts = [Host(k + 1, self.tag) for k in range(n)]
        self.delay_ms = delay_ms
        self.delay = "none"

    def __enter__(self) -> Hosts:
        remove_stale_namespaces()
        try:
            for host in self.hosts:
                self.delay = host.create(self.delay_ms)
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts)

    @property
    def gateways(self) -> list[str]:
        return [h.gateway for h in self.hosts]

    def connect_to(self, port: int) -> None:
        """Point every host at a PostgreSQL listening on the gateways at `port`, through a
        delaying proxy when the kernel has no netem."""
        for host in self.hosts:
            host.db_port = port
            if self.delay == "proxy":
                host.start_delay_proxy(host.gateway, port, self.delay_ms)

    def dsn(self, host: Host, dbname: str = "postgres") -> str:
        return f"host={host.db_host} port={host.db_port} user=postgres dbname={dbname}"

    def destroy(self) -> None:
        for host in self.hosts:
            host.destroy()
