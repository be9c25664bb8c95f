"""`python -m factory_mas` as a user runs it: real child processes, real exit codes."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from factory_mas.ingest.schema import parse_record
from tests.support.net import free_port
from tests.support.waiting import wait_until

# Each test runs `python -m factory_mas` as a child process.
pytestmark = pytest.mark.integration

# Hang guard only.
TIMEOUT_S = 60


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACTORY_")}
    for name in ("PORT", "LOG_LEVEL", "CORS_ORIGINS"):
        env.pop(name, None)
    env["FACTORY_DATA_DIR"] = str(tmp_path / "cli-data")
    return env


def run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "factory_mas", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def test_version(tmp_path, cli_env):
    done = run(["--version"], tmp_path, cli_env)
    assert done.returncode == 0
    assert done.stdout.strip() == importlib.metadata.version("factory_mas")


def test_replay_to_stdout_prints_one_valid_record_per_line(tmp_path, cli_env):
    started = datetime.now(UTC)
    done = run(["replay", "--stdout", "--count", "120", "--machines", "6"], tmp_path, cli_env)
    ended = datetime.now(UTC)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 120
    records = [parse_record(json.loads(line)) for line in lines]
    assert Counter(r.machine_id for r in records) == {m: 20 for m in range(1, 7)}
    assert all(started <= r.timestamp <= ended for r in records)


def test_replay_to_stdout_is_repeatable_for_a_seed(tmp_path, cli_env):
    args = ["replay", "--stdout", "--count", "30", "--machines", "3", "--seed", "5"]
    first, second = run(args, tmp_path, cli_env), run(args, tmp_path, cli_env)
    assert first.returncode == second.returncode == 0

    def readings(out: str) -> list[tuple]:
        records = [parse_record(json.loads(line)) for line in out.splitlines()]
        return [(r.machine_id, r.temperature_c, r.vibration_hz) for r in records]

    assert readings(first.stdout) == readings(second.stdout)


def test_replay_to_stdout_stops_quietly_when_the_reader_goes_away(tmp_path, cli_env):
    # `python -m factory_mas replay --stdout | head` must not end in a traceback.
    with subprocess.Popen(
        [sys.executable, "-m", "factory_mas", "replay", "--stdout", "--rate", "0"],
        cwd=tmp_path,
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            assert parse_record(json.loads(first)).machine_id == 1
            proc.stdout.close()  # what `head -1` does once it has its line
            _, raw_stderr = proc.communicate(timeout=TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
        stderr = raw_stderr.decode(errors="replace")
        code = proc.returncode
    assert "Traceback" not in stderr, stderr
    assert code in (0, 1, -13, 141), f"exit code {code}"


def test_train_with_an_unknown_agent_exits_2_naming_the_known_ones(tmp_path, cli_env):
    done = run(["train", "--only", "nope", "--out", str(tmp_path / "models")], tmp_path, cli_env)
    assert done.returncode == 2
    assert "nope" in done.stderr
    assert "pm_agent" in done.stderr
    assert not (tmp_path / "models").exists(), "nothing is trained when the request is wrong"


@pytest.mark.parametrize(
    "command", [[], ["replay", "--stdout", "--count", "1"]], ids=["serve", "replay"]
)
def test_a_bad_port_in_the_environment_exits_2_with_one_line(tmp_path, cli_env, command):
    done = run(command, tmp_path, {**cli_env, "PORT": "abc"})
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "port" in lines[0].lower()
    assert "abc" in lines[0]
    assert "PORT" in lines[0]  # where the value came from
    assert done.stdout == ""


def test_an_unknown_key_in_a_settings_file_exits_2_with_one_line(tmp_path, cli_env):
    settings = tmp_path / "custom.toml"
    settings.write_text('[server]\nport = 8123\nprot = "zz9-plural"\n', encoding="utf-8")
    done = run(
        ["--settings", str(settings), "replay", "--stdout", "--count", "1"], tmp_path, cli_env
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert "prot" in line
    assert "custom.toml" in line
    assert "port" in line  # what is allowed instead
    assert "zz9-plural" in line, f"the value is not named: {line}"
    assert done.stdout == ""


def test_a_bad_value_in_a_settings_file_exits_2_with_one_line(tmp_path, cli_env):
    settings = tmp_path / "custom.toml"
    settings.write_text('[replay]\nmachines = "lots"\n', encoding="utf-8")
    done = run(
        ["--settings", str(settings), "replay", "--stdout", "--count", "1"], tmp_path, cli_env
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "replay.machines" in lines[0]
    assert "lots" in lines[0]
    assert "custom.toml" in lines[0]


def test_a_missing_settings_file_exits_2(tmp_path, cli_env):
    done = run(["--settings", str(tmp_path / "nope.toml"), "--version"], tmp_path, cli_env)
    # --version answers before settings are read; any command that reads them must fail.
    assert done.returncode == 0
    done = run(["--settings", str(tmp_path / "nope.toml"), "replay", "--stdout"], tmp_path, cli_env)
    assert done.returncode == 2
    assert "nope.toml" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_replay_to_an_unreachable_server_exits_1_saying_so(tmp_path, cli_env):
    url = f"http://127.0.0.1:{free_port()}/api/ingest"
    done = run(["replay", "--url", url, "--count", "10", "--rate", "0"], tmp_path, cli_env)
    assert done.returncode == 1
    assert "cannot reach" in done.stderr
    assert url in done.stderr
    assert "Traceback" not in done.stderr


def test_replay_to_a_running_server(tmp_path, cli_env, server_factory):
    server = server_factory()

    def accepted() -> int:
        return server.get("/status").json()["ingest"]["accepted"].get("http", 0)

    assert accepted() == 0
    url = server.url + "/api/ingest"
    done = run(["replay", "--url", url, "--count", "200", "--rate", "0"], tmp_path, cli_env)
    assert done.returncode == 0, done.stderr
    wait_until(lambda: accepted() == 200, what="200 records accepted by the server")
    status = server.get("/status").json()
    assert status["ingest"]["rejected"].get("http", 0) == 0

    def scored() -> bool:
        return (
            server.get("/status").json()["agents"]["pm_agent"]["counters"].get("predictions") == 200
        )

    wait_until(scored, what="pm_agent to score the 200 records")
    history = server.get("/api/pm/history", params={"limit": 500}).json()
    assert history["count"] == 200
    assert {p["machine_id"] for p in history["predictions"]} == set(range(1, 51))


def test_replay_sends_its_key_to_a_server_that_asks_for_one(tmp_path, cli_env, server_factory):
    data = tmp_path / "keyed-data"
    cli_env["FACTORY_DATA_DIR"] = str(data)
    made = run(["keys", "add", "replayer", "--role", "operator"], tmp_path, cli_env)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    server = server_factory({"FACTORY_AUTH_ENABLED": "true"}, data_dir=data)
    url = server.url + "/api/ingest"
    replay = ["replay", "--url", url, "--count", "50", "--rate", "0"]

    refused = run(replay, tmp_path, cli_env)
    assert refused.returncode == 1
    assert "401" in refused.stderr and "FACTORY_API_KEY" in refused.stderr
    assert "Traceback" not in refused.stderr

    wrong = run([*replay, "--key", "not-a-key"], tmp_path, cli_env)
    assert wrong.returncode == 1
    assert "401" in wrong.stderr and "the key given" in wrong.stderr

    by_flag = run([*replay, "--key", key], tmp_path, cli_env)
    assert by_flag.returncode == 0, by_flag.stderr
    by_env = run(replay, tmp_path, {**cli_env, "FACTORY_API_KEY": key})
    assert by_env.returncode == 0, by_env.stderr

    def accepted() -> int:
        status = server.get("/status", headers={"authorization": f"Bearer {key}"})
        return status.json()["ingest"]["accepted"].get("http", 0)

    wait_until(lambda: accepted() == 100, what="both keyed replays accepted")


def test_replay_key_goes_with_url_only(tmp_path, cli_env):
    done = run(["replay", "--stdout", "--key", "k", "--count", "1"], tmp_path, cli_env)
    assert done.returncode == 2
    assert "--key goes with --url" in done.stderr
