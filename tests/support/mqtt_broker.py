"""A real mosquitto broker in a child process, on a free loopback port, for tests.

    broker = Broker(tmp_path / "broker").start()
    ... aiomqtt.Client(broker.host, broker.port) ...
    broker.stop(signal.SIGKILL)   # a crash
    broker.restart()              # same port, same persistence directory
    broker.stop()

mosquitto facts this relies on (2.0.11, measured):
- Started as root it drops to the `mosquitto` user and then cannot write a persistence
  directory owned by root, silently. `user` is therefore set to whoever runs the tests.
- Queued QoS 1 messages survive a SIGTERM with `persistence true` (it saves on exit); to
  survive a SIGKILL the database must be written on every change
  (`autosave_on_changes true` + `autosave_interval 1`), which `persistence=True` does.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.support.net import free_port

INSTALL_HINT = "mosquitto is needed by the MQTT tests: apt-get install mosquitto"


def mosquitto_path() -> str:
    """The mosquitto binary; Debian puts it in /usr/sbin, often not on a user's PATH."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise RuntimeError(INSTALL_HINT)
    return found


class Broker:
    """mosquitto as a child process: `start()`, `stop(sig)`, `restart()`, `running`."""

    def __init__(
        self,
        workdir: Path,
        *,
        persistence: bool = True,
        port: int | None = None,
        extra_config: list[str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.persistence = persistence
        # A port we picked may be taken by someone else before mosquitto binds it; then
        # the first start moves to another. A port given, or a restart, never moves.
        self._may_move = port is None
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.extra_config = list(extra_config or ())
        self.config_file = workdir / "mosquitto.conf"
        self.persistence_dir = workdir / "persistence"
        self.persistence_file = self.persistence_dir / "mosquitto.db"
        self.log = workdir / "mosquitto.log"
        self.proc: subprocess.Popen | None = None
        self._log_fh = None

    @property
    def address(self) -> str:
        """HOST:PORT, as `replay --broker` takes it."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def config(self) -> str:
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            # Root would drop to the `mosquitto` user, which cannot write our tmp dirs.
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %H:%M:%S",
            # mosquitto's default of 1000 queued messages per client drops the rest quietly.
            "max_queued_messages 0",
        ]
        if self.persistence:
            lines += [
                "persistence true",
                f"persistence_location {self.persistence_dir}/",
                "persistence_file mosquitto.db",
                # Write the database after every change, so a SIGKILL loses nothing queued.
                "autosave_on_changes true",
                "autosave_interval 1",
            ]
        return "\n".join([*lines, *self.extra_config, ""])

    def start(self, timeout_s: float = 10.0) -> Broker:
        try:
            return self._start(timeout_s)
        except RuntimeError:
            if not (self._may_move and "Address already in use" in self.output()):
                raise
            self.port = free_port()
            return self._start(timeout_s)
        finally:
            self._may_move = False

    def _start(self, timeout_s: float) -> Broker:
        if self.running:
            raise RuntimeError(f"broker already running on port {self.port}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.persistence_dir.mkdir(exist_ok=True)
        self.config_file.write_text(self.config(), encoding="utf-8")
        self._log_fh = self.log.open("ab")
        self.proc = subprocess.Popen(
            [mosquitto_path(), "-c", str(self.config_file)],
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._close_log()
                raise RuntimeError(
                    f"mosquitto exited with {self.proc.returncode} on port {self.port}:\n"
                    + self.output()
                )
            if self.accepting():
                return self
            time.sleep(0.01)
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"mosquitto not listening on {self.address} in {timeout_s}s")

    def accepting(self) -> bool:
        with socket.socket() as s:
            s.settimeout(0.5)
            try:
                s.connect((self.host, self.port))
            except OSError:
                return False
            return True

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> int | None:
        """Signal the broker and wait for it to exit; its exit code (None: never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_log()
        return self.proc.returncode

    def restart(self, sig: int = signal.SIGTERM) -> Broker:
        """Stop (when running) and start again: same port, config and persistence dir."""
        self.stop(sig)
        return self.start()

    def wait_persisted(self, payload: bytes, timeout_s: float = 10.0) -> None:
        """Wait until the database on disk holds this payload. mosquitto saves in its main
        loop after the PUBACK went out, so a SIGKILL right after a publish can still lose
        the message; a test that means to crash after the save waits for it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            # mosquitto writes mosquitto.db.new and renames it: a read sees a whole file.
            with contextlib.suppress(FileNotFoundError):
                if payload in self.persistence_file.read_bytes():
                    return
            time.sleep(0.01)
        raise AssertionError(f"{payload!r} not in {self.persistence_file} after {timeout_s}s")

    def output(self) -> str:
        """mosquitto's log so far, for assertion messages."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def _close_log(self) -> None:
        if self._log_fh is not None:
            with contextlib.suppress(OSError):
                self._log_fh.close()
            self._log_fh = None

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop(signal.SIGKILL)
