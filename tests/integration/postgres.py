"""A real PostgreSQL server for the tests: initdb in a temporary folder, pg_ctl start on a
free port with its socket in that folder, stopped and removed at the end. Debian's
`postgresql` package provides the binaries (the Makefile installs it when missing). As
root, the server runs as `nobody` (PostgreSQL refuses to run as root)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from types import TracebackType

import psycopg

from bo_queue.testing import free_port


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("no PostgreSQL binaries in /usr/lib/postgresql/*/bin: `make test` "
                           "installs Debian's postgresql package")
    return Path(found[-1]).parent  # the newest version


class PostgresServer:
    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.base = Path(tempfile.mkdtemp(prefix="bo-queue-pg-"))
        self.data = self.base / "data"
        self.port = free_port()
        self.user = "nobody" if os.geteuid() == 0 else None

    def _run(self, *argv: str) -> None:
        command = [str(self.bin / argv[0]), *argv[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        subprocess.run(command, check=True, cwd=self.base, capture_output=True, timeout=120)

    def start(self) -> PostgresServer:
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.base, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "-E", "UTF8", "--locale=C")
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data),
                  "-l", str(self.base / "server.log"), "-o", options)
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.data))
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database on this server; its SQLAlchemy URL."""
        name = f"t{uuid.uuid4().hex[:12]}"
        dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)
