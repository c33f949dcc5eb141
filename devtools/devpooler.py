"""A PgBouncer in transaction pooling mode, for tests and benchmarks.

Production fleets share PostgreSQL through PgBouncer in transaction mode: a
server connection belongs to a client only for the length of one transaction,
so nothing a connection remembers between transactions may be relied on. This
runs Debian's ``pgbouncer`` (``apt-get install pgbouncer``) in the foreground
in front of a PostgreSQL, listening on 127.0.0.1 only, with a small pool so
that client connections really do share server connections. Under root it
runs as the same unprivileged user as the embedded PostgreSQL.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import make_url

from .devdb import SYSTEM_USER, _free_port, _make_traversable, _run_as_owner


def pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (path for path in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if Path(path).exists()), None
    )


@dataclass
class PgBouncer:
    """``pgbouncer`` in front of the server of ``server_url``, every database of it pooled."""

    work_dir: Path
    server_url: str
    pool_size: int = 4
    port: int | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def log_file(self) -> Path:
        return self.work_dir / "pgbouncer.log"

    def url(self, database_url: str) -> str:
        """``database_url`` (a database on the server) reached through the pooler."""
        return make_url(database_url).set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)

    def _write_config(self) -> Path:
        server = make_url(self.server_url)
        user = server.username or "postgres"
        login = f" user={user}" + (f" password={server.password}" if server.password else "")
        (self.work_dir / "userlist.txt").write_text(f'"{user}" ""\n')
        config = self.work_dir / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            # Every database on the server, under its own name.
            f"* = host={server.host or '127.0.0.1'} port={server.port or 5432}{login}\n"
            "\n[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.work_dir / 'userlist.txt'}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {self.pool_size}\nmin_pool_size = 0\nreserve_pool_size = 0\n"
            "max_client_conn = 1000\n"
            # Clients wait for a server connection rather than fail while the pool is busy.
            "query_wait_timeout = 60\n"
            "server_login_retry = 1\n"
            "log_connections = 0\nlog_disconnections = 0\n"
        )
        return config

    def start(self) -> "PgBouncer":
        binary = pgbouncer_binary()
        if binary is None:
            raise RuntimeError("pgbouncer is not installed: `apt-get install -y pgbouncer` (make test-pooled does it as root)")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        owner = _run_as_owner()
        if owner:  # PgBouncer refuses to run as root
            _make_traversable(self.work_dir / "pgbouncer.ini")
            shutil.chown(self.work_dir, user=SYSTEM_USER, group=owner["group"])
        if self.port is None:
            self.port = _free_port()
        config = self._write_config()
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                [binary, str(config)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **owner
            )
        self._wait_until_listening()
        return self

    def _wait_until_listening(self, timeout: float = 30.0) -> None:
        import socket

        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited:\n{self.log_file.read_text(errors='replace')[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"pgbouncer did not listen:\n{self.log_file.read_text(errors='replace')[-2000:]}")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
