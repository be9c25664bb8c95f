"""A real PostgreSQL server for the tests: one per session, a fresh database per test.

`initdb` makes a throwaway cluster in a temporary folder and `postgres` serves it on a free
loopback port (TCP only, no Unix socket), with fsync off: a test database need not survive
a power cut. The cluster has a password, so the tests see URLs shaped like real ones and
can check that the password never shows. PostgreSQL refuses to run as root: as root, the
server runs as the `postgres` user the Debian package creates (else `nobody`).

Without the server binaries the tests that ask for PostgreSQL are skipped, saying how to
install them; .ci/run installs them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.net import free_port

INSTALL_HINT = "PostgreSQL server binaries not found: apt-get install postgresql"
USER = "factory"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


def server_binaries() -> Path | None:
    """The folder holding initdb and postgres of one version, or None."""
    candidates: list[Path] = []
    for name in ("postgres", "pg_ctl", "initdb"):
        found = shutil.which(name)
        if found:
            candidates.append(Path(found).resolve().parent)
    # Debian keeps them off PATH, one folder per major version: the newest first.
    versions = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(versions, key=lambda p: _major(p.parent.name), reverse=True)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    return None


def _major(name: str) -> int:
    return int(name) if name.isdigit() else -1


def _server_user() -> pwd.struct_passwd | None:
    """Who the server runs as: None for the current user, unless that is root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root and there is no postgres or nobody user to run as")


def _stop_with_parent() -> Callable[[], None] | None:
    """For the child: a fast shutdown when the test run dies (killed, Ctrl-C twice), so no
    server is left running on a machine others measure on. Linux only; elsewhere none."""
    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    # Runs between fork and exec, after the switch of user (which would clear it): it
    # must only call into libc, which the child can do while other threads' locks are held.
    def set_pdeathsig() -> None:
        prctl(pr_set_pdeathsig, signal.SIGINT)

    return set_pdeathsig


class Postgres:
    """One throwaway cluster; `database()` makes a new empty database and returns its URL."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.user = _server_user()
        # Not below pytest's tmp folders: they are private to root, and the server user
        # must reach its data folder.
        self.base = Path(tempfile.mkdtemp(prefix="factory-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "postgres.log"
        self.password = "pg-5ecret-" + secrets.token_hex(6)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._names = itertools.count(1)

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> Postgres:
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.password + "\n", encoding="utf-8")
        if self.user is not None:
            for path in (self.base, pwfile):
                os.chown(path, self.user.pw_uid, self.user.pw_gid)
        self._run(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                USER,
                f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )
        self.port = free_port()
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": "",
            # A test database need not survive a crash of the machine.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        args = [str(self.bin_dir / "postgres"), "-D", str(self.data), "-p", str(self.port)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(),
                preexec_fn=_stop_with_parent(),
                **self._as_user(),
            )
        self._wait_ready()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # "fast" shutdown: disconnects clients
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        shutil.rmtree(self.base, ignore_errors=True)

    def _wait_ready(self) -> None:
        import psycopg

        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}:\n{self.output()}")
            try:
                psycopg.connect(self._conninfo("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"postgres not ready in {START_TIMEOUT_S:.0f} s: {exc}\n{self.output()}"
                    ) from exc
                time.sleep(0.1)

    def _run(self, args: list[str]) -> None:
        done = subprocess.run(
            args, capture_output=True, env=self._env(), check=False, **self._as_user()
        )
        if done.returncode != 0:
            out = (done.stdout + done.stderr).decode(errors="replace")
            raise RuntimeError(f"{Path(args[0]).name} failed ({done.returncode}):\n{out}")

    def _as_user(self) -> dict[str, Any]:
        if self.user is None:
            return {}
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}

    def _env(self) -> dict[str, str]:
        # Nothing of the caller's PG* settings or locale: initdb's choices stay fixed.
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    # -- databases -------------------------------------------------------------------------

    def _conninfo(self, database: str) -> str:
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def url(self, database: str, scheme: str = "postgresql") -> str:
        return f"{scheme}://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def database(self, hint: str = "t") -> str:
        """Create an empty database; returns its name."""
        import psycopg

        name = f"{re.sub(r'[^a-z0-9_]', '_', hint.lower())[:40]}_{next(self._names)}"
        with psycopg.connect(self._conninfo("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """The session's PostgreSQL server; skips the test when PostgreSQL is not installed."""
    bin_dir = server_binaries()
    if bin_dir is None:
        pytest.skip(INSTALL_HINT)
    server = Postgres(bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres: Postgres, request: pytest.FixtureRequest) -> str:
    """A new empty database for this test, as a postgresql:// URL with a password."""
    return postgres.url(postgres.database(request.node.name))
