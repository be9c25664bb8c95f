"""Settings: code defaults == settings.toml, file and environment overrides, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from factory_mas.errors import FactoryError, SettingsError
from factory_mas.settings import (
    ENV_ALIASES,
    ENV_NAMES,
    LEAVES,
    Settings,
    as_toml_tree,
    load_settings,
)
from tests.support.paths import REPO

SETTINGS_TOML = REPO / "settings.toml"


def write(tmp_path: Path, text: str, name: str = "settings.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def bad_settings(*, path=None, env=None) -> str:
    """Load, expect SettingsError, check it is one line, and return the message."""
    with pytest.raises(SettingsError) as info:
        load_settings(path, env={} if env is None else env)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, FactoryError)
    message = str(info.value)
    assert message.strip()
    assert "\n" not in message, f"not one line: {message!r}"
    return message


def assert_names(message: str, *parts: str) -> None:
    missing = [p for p in parts if p not in message]
    assert not missing, f"{message!r} does not name {missing}"


# --------------------------------------------------------------------------- defaults


def test_settings_toml_spells_out_exactly_the_code_defaults() -> None:
    from_file = as_toml_tree(load_settings(SETTINGS_TOML, env={}))
    assert from_file == as_toml_tree(Settings())


def test_settings_toml_sets_every_leaf_explicitly() -> None:
    import tomllib

    tree = tomllib.loads(SETTINGS_TOML.read_text(encoding="utf-8"))
    for path in LEAVES:
        node = tree
        for key in path:
            assert key in node, f"settings.toml does not spell out {'.'.join(path)}"
            node = node[key]


def test_defaults_without_any_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./settings.toml here
    s = load_settings(env={})
    assert s == Settings()
    assert s.server.port == 8000
    assert s.server.log_level == "info"
    assert s.server.cors_origins == []
    assert s.data_dir == Path("./data")
    assert s.agents.pm.rul_critical_hours == 24.0


def test_working_folder_settings_toml_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "[server]\nport = 8123\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings(env={}).server.port == 8123


def test_models_dir_defaults_to_artifacts_beside_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_settings(env={}).models_dir == REPO / "artifacts"


# --------------------------------------------------------------------------- environment


def test_env_port() -> None:
    assert load_settings(SETTINGS_TOML, env={"PORT": "9001"}).server.port == 9001


@pytest.mark.parametrize("raw", ["debug", "DEBUG", "Debug", " debug "])
def test_env_log_level_is_case_insensitive(raw: str) -> None:
    assert load_settings(SETTINGS_TOML, env={"LOG_LEVEL": raw}).server.log_level == "debug"


def test_env_cors_origins_comma_list() -> None:
    s = load_settings(
        SETTINGS_TOML, env={"CORS_ORIGINS": "https://a.example, https://b.example:8443,,"}
    )
    assert s.server.cors_origins == ["https://a.example", "https://b.example:8443"]


def test_env_data_dir() -> None:
    s = load_settings(SETTINGS_TOML, env={"FACTORY_DATA_DIR": "/var/lib/factory"})
    assert s.data.dir == "/var/lib/factory"
    assert s.data_dir == Path("/var/lib/factory")


def test_env_pm_threshold() -> None:
    s = load_settings(SETTINGS_TOML, env={"FACTORY_AGENTS_PM_RUL_CRITICAL_HOURS": "12"})
    assert s.agents.pm.rul_critical_hours == 12.0
    assert s.agents.pm.rul_warning_hours == 72.0


@pytest.mark.parametrize(("raw", "expected"), [("false", False), ("true", True), ("0", False)])
def test_env_replay_enabled_bool(raw: str, expected: bool) -> None:
    s = load_settings(SETTINGS_TOML, env={"FACTORY_REPLAY_ENABLED": raw})
    assert s.replay.enabled is expected


def test_env_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 9000\nhost = '127.0.0.1'\n")
    s = load_settings(path, env={"PORT": "9100"})
    assert s.server.port == 9100
    assert s.server.host == "127.0.0.1"


def test_factory_settings_env_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[hub]\nqueue_size = 32\n", name="custom.toml")
    s = load_settings(env={"FACTORY_SETTINGS": str(path)})
    assert s.hub.queue_size == 32


def test_file_in_tmp_path_with_partial_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[server]
port = 8081
cors_origins = ["https://dash.example"]

[replay]
enabled = false
rate = 0

[agents.pm]
rul_critical_hours = 10.0
alert_min_level = "CRITICAL"
""",
    )
    s = load_settings(path, env={})
    assert s.server.port == 8081
    assert s.server.cors_origins == ["https://dash.example"]
    assert s.replay.enabled is False
    assert s.replay.rate == 0
    assert s.agents.pm.rul_critical_hours == 10.0
    assert s.agents.pm.alert_min_level == "CRITICAL"
    # untouched values keep their defaults
    assert s.server.log_level == "info"
    assert s.agents.pm.rul_warning_hours == 72.0
    assert s.hub.queue_size == Settings().hub.queue_size


def test_every_leaf_has_a_factory_env_name() -> None:
    for path in LEAVES:
        name = "FACTORY_" + "_".join(path).upper()
        assert ENV_NAMES.get(name) == path, f"{'.'.join(path)} has no env name {name}"
    # no two leaves collapse onto one name
    factory_names = [n for n in ENV_NAMES if n.startswith("FACTORY_")]
    assert len(factory_names) == len(LEAVES)
    assert set(ENV_NAMES.values()) == set(LEAVES)
    for alias, path in ENV_ALIASES.items():
        assert ENV_NAMES[alias] == path
    assert ENV_NAMES["PORT"] == ("server", "port")
    assert ENV_NAMES["LOG_LEVEL"] == ("server", "log_level")
    assert ENV_NAMES["CORS_ORIGINS"] == ("server", "cors_origins")


def test_the_generic_env_name_works_for_a_leaf() -> None:
    s = load_settings(SETTINGS_TOML, env={"FACTORY_INFERENCE_THREADS": "4"})
    assert s.inference.threads == 4


# --------------------------------------------------------------------------- errors


def test_port_not_a_number() -> None:
    msg = bad_settings(path=SETTINGS_TOML, env={"PORT": "abc"})
    assert_names(msg, "port", "abc", "PORT", "65535")


def test_port_zero() -> None:
    msg = bad_settings(path=SETTINGS_TOML, env={"PORT": "0"})
    assert_names(msg, "port", "0", "PORT", ">= 1", "65535")


def test_a_proxy_that_is_not_an_address() -> None:
    msg = bad_settings(path=SETTINGS_TOML, env={"FORWARDED_ALLOW_IPS": "10.0.0.1,proxy.local"})
    assert_names(msg, "forwarded_allow_ips", "'proxy.local'", "FORWARDED_ALLOW_IPS", "network")
    ok = load_settings(SETTINGS_TOML, env={"FORWARDED_ALLOW_IPS": "10.0.0.0/8, *"})
    assert ok.server.forwarded_allow_ips == ["10.0.0.0/8", "*"]


def test_port_too_large() -> None:
    msg = bad_settings(path=SETTINGS_TOML, env={"PORT": "70000"})
    assert_names(msg, "port", "70000", "PORT", "65535")


def test_log_level_unknown() -> None:
    msg = bad_settings(path=SETTINGS_TOML, env={"LOG_LEVEL": "verbose"})
    assert_names(msg, "log_level", "verbose", "LOG_LEVEL", "debug", "info", "warning")


def test_bool_env_not_a_bool() -> None:
    msg = bad_settings(path=SETTINGS_TOML, env={"FACTORY_REPLAY_ENABLED": "maybe"})
    assert_names(msg, "enabled", "maybe", "FACTORY_REPLAY_ENABLED", "true or false")


def test_bad_value_in_the_file_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nport = "abc"\n')
    msg = bad_settings(path=path, env={})
    assert_names(msg, "port", "abc", str(path), "65535")


def test_bad_value_in_env_names_the_env_var_not_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 9000\n")
    msg = bad_settings(path=path, env={"FACTORY_HUB_QUEUE_SIZE": "-3"})
    assert_names(msg, "queue_size", "-3", "FACTORY_HUB_QUEUE_SIZE", ">= 1")


def test_unknown_key_in_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\ncolour = "blue"\n')
    msg = bad_settings(path=path, env={})
    assert_names(msg, "colour", "server", str(path), "port", "log_level")


def test_unknown_section_in_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[bogus]\nx = 1\n")
    msg = bad_settings(path=path, env={})
    assert_names(msg, "bogus", str(path), "server", "replay", "agents")


def test_bad_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[server\nport = = 1\n")
    msg = bad_settings(path=path, env={})
    assert_names(msg, str(path), "TOML", "line 1")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    msg = bad_settings(path=path, env={})
    assert_names(msg, str(path))


def test_missing_file_named_by_factory_settings(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    msg = bad_settings(env={"FACTORY_SETTINGS": str(path)})
    assert_names(msg, str(path))


def test_settings_path_that_is_a_folder(tmp_path: Path) -> None:
    # What a container bind-mount of a missing file produces.
    folder = tmp_path / "settings.toml"
    folder.mkdir()
    msg = bad_settings(path=folder, env={})
    assert_names(msg, str(folder))


def test_threshold_ordering_from_env() -> None:
    msg = bad_settings(path=SETTINGS_TOML, env={"FACTORY_AGENTS_PM_RUL_CRITICAL_HOURS": "100"})
    assert_names(
        msg,
        "rul_critical_hours",
        "rul_warning_hours",
        "rul_caution_hours",
        "100",
        "FACTORY_AGENTS_PM_RUL_CRITICAL_HOURS",
        "<",
    )


def test_threshold_ordering_from_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[agents.pm]\nrul_warning_hours = 200.0\n")
    msg = bad_settings(path=path, env={})
    assert_names(msg, "rul_warning_hours", "rul_caution_hours", "200", str(path), "<")


@pytest.mark.parametrize(
    ("critical", "warning", "caution"),
    [("24", "24", "168"), ("24", "168", "168"), ("80", "72", "168")],
)
def test_threshold_ordering_must_be_strict(critical: str, warning: str, caution: str) -> None:
    env = {
        "FACTORY_AGENTS_PM_RUL_CRITICAL_HOURS": critical,
        "FACTORY_AGENTS_PM_RUL_WARNING_HOURS": warning,
        "FACTORY_AGENTS_PM_RUL_CAUTION_HOURS": caution,
    }
    bad_settings(path=SETTINGS_TOML, env=env)


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"PLANNER_URL": "planner.local"}, ["PLANNER_URL", "http://"]),
        ({"TWILIO_ACCOUNT_SID": "AC1"}, ["all four", "TWILIO_AUTH_TOKEN", "TWILIO_TO_NUMBER"]),
        (
            {
                "TWILIO_ACCOUNT_SID": "AC1",
                "TWILIO_AUTH_TOKEN": "secret-token",
                "TWILIO_FROM_NUMBER": "+15550001111",
                "TWILIO_TO_NUMBER": "0555 123",
            },
            ["TWILIO_TO_NUMBER", "E.164"],
        ),
        ({"FACTORY_ORCHESTRATOR_FLOOD_END_BELOW": "20"}, ["flood_end_below", "flood_threshold"]),
    ],
)
def test_orchestrator_planner_and_notify_settings_are_checked(env, words) -> None:
    message = bad_settings(env=env)
    assert_names(message, *words)
    # Secrets and phone numbers stay out of the message.
    assert "secret-token" not in message and "0555 123" not in message


def test_twilio_credentials_come_from_their_usual_names() -> None:
    s = load_settings(
        env={
            "TWILIO_ACCOUNT_SID": "AC" + "1" * 32,
            "TWILIO_AUTH_TOKEN": "t",
            "TWILIO_FROM_NUMBER": "+15550001111",
            "TWILIO_TO_NUMBER": "+15550002222",
            "PLANNER_URL": "http://planner.local:9000/plan",
        }
    )
    assert s.notify.configured and s.notify.twilio_to_number == "+15550002222"
    assert s.planner.url == "http://planner.local:9000/plan"


def test_alarm_rationalisation_settings_from_the_environment_and_their_errors():
    env = {"FACTORY_ORCHESTRATOR_SUPPRESS_BY": "energy_agent/POWER_ANOMALY=a/B|c/D, x/Y=z/W"}
    s = load_settings(env=env, path=REPO / "settings.toml")
    assert s.orchestrator.suppress_by == {
        "energy_agent/POWER_ANOMALY": ["a/B", "c/D"],
        "x/Y": ["z/W"],
    }
    with pytest.raises(SettingsError, match=r"suppress_by: 'nosl' is not source/type"):
        load_settings(
            env={"FACTORY_ORCHESTRATOR_SUPPRESS_BY": "nosl=a/B"}, path=REPO / "settings.toml"
        )
    with pytest.raises(SettingsError, match="settings file; no environment form"):
        load_settings(
            env={"FACTORY_AGENTS_PM_TYPE_DELAYS": "LOW_RUL=5"}, path=REPO / "settings.toml"
        )
    with pytest.raises(SettingsError, match="chatter_shelve_s"):
        load_settings(
            env={"FACTORY_ORCHESTRATOR_CHATTER_SHELVE_S": "99999"}, path=REPO / "settings.toml"
        )
    with pytest.raises(SettingsError, match="failure_probability_warning"):
        load_settings(
            env={"FACTORY_AGENTS_PM_FAILURE_PROBABILITY_WARNING": "0.9"},
            path=REPO / "settings.toml",
        )
