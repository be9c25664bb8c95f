"""PPE rules: the per-camera smoothing (k of the last n frames), the levels and what
they mean for alerts, and the settings that drive them."""

from __future__ import annotations

import msgspec
import pytest

from factory_mas.agents.conditioning import Gate, gate_step
from factory_mas.agents.ppe import logic
from factory_mas.errors import SettingsError
from factory_mas.settings import PpeSettings, load_settings

DEFAULT = PpeSettings()
LETTERS = dict(zip("HBPS", logic.ITEMS, strict=True))


def seen(code: str) -> frozenset[str]:
    """'HB-S' -> the items a frame showed (here: all but pants)."""
    return frozenset(LETTERS[c] for c in code if c != "-")


def replay(codes: list[str], t: PpeSettings = DEFAULT) -> list[list[str]]:
    """The smoothed missing items after each frame of one camera."""
    window: list[frozenset[str]] = []
    missing: list[str] = []
    out = []
    for code in codes:
        window = [*window, seen(code)][-t.window_frames :]
        missing = logic.smoothed_missing(window, missing, t)
        out.append(missing)
    return out


def settings(**changes: object) -> PpeSettings:
    return msgspec.structs.replace(DEFAULT, **changes)


# --------------------------------------------------------------------------- one frame


def test_worn_items_counts_a_probability_at_the_threshold_as_worn() -> None:
    probabilities = {"helmet": 0.5, "boots": 0.4999, "pants": 0.97, "shirt": 0.0}
    assert logic.worn_items(probabilities, 0.5) == {"helmet", "pants"}
    assert logic.worn_items(probabilities, 0.98) == set()
    assert logic.worn_items(probabilities, 0.0) == set(logic.ITEMS)


def test_missing_of_keeps_the_items_order() -> None:
    assert logic.missing_of({"shirt", "helmet"}) == ["boots", "pants"]
    assert logic.missing_of(set(logic.ITEMS)) == []
    assert logic.missing_of(set()) == list(logic.ITEMS)


# --------------------------------------------------------------------------- smoothing, 3 of 5


@pytest.mark.parametrize(
    ("frames", "expected"),
    [
        # A new camera's first frames get the benefit of the doubt: the third agreeing
        # frame flags the helmet, not the first.
        (["-BPS", "-BPS", "-BPS"], [[], [], ["helmet"]]),
        # One or two bad frames (a head turned away) are not a violation.
        (["HBPS", "-BPS", "HBPS", "-BPS", "HBPS"], [[], [], [], [], []]),
        (["HBPS"] * 3 + ["-BPS"] * 2, [[]] * 5),
        # Three of the last five agree: flagged, whether or not they were consecutive.
        (["HBPS", "-BPS", "HBPS", "-BPS", "-BPS"], [[], [], [], [], ["helmet"]]),
        (["HBPS"] * 5 + ["H-P-"] * 3, [[]] * 7 + [["boots", "shirt"]]),
        # A flagged item needs four of the last five to count as worn again.
        (["-BPS"] * 5 + ["HBPS"] * 4, [[], []] + [["helmet"]] * 6 + [[]]),
        # A frame that shows nothing (camera covered) counts against every item.
        (["----"] * 3, [[], [], list(logic.ITEMS)]),
        # A new camera's unseen frames count as sightings on the way out too.
        (["-BPS"] * 3 + ["HBPS"] * 5, [[], []] + [["helmet"]] * 4 + [[]] * 2),
        # Seen in three of five is not enough to end a violation, only to avoid one.
        (
            ["-BPS"] * 5 + ["HBPS", "-BPS", "HBPS", "-BPS", "HBPS", "HBPS", "HBPS"],
            [[], []] + [["helmet"]] * 9 + [[]],
        ),
    ],
    ids=[
        "new-camera",
        "alternating-2-of-5",
        "two-at-the-end",
        "3-of-5-not-consecutive",
        "two-items-at-once",
        "episode-end",
        "covered-camera",
        "new-camera-recovers",
        "3-of-5-does-not-clear",
    ],
)
def test_smoothing_three_of_five(frames: list[str], expected: list[list[str]]) -> None:
    assert replay(frames) == expected


@pytest.mark.parametrize(
    ("k", "clear", "n", "frames", "expected"),
    [
        # 1 of 1: no smoothing, every frame is the verdict.
        (1, 1, 1, ["HBPS", "-BPS", "HBPS"], [[], ["helmet"], []]),
        # 1 of 3: one sighting in three frames is enough, so a miss needs three in a row.
        (
            1,
            1,
            3,
            ["-BPS", "-BPS", "HBPS", "-BPS", "-BPS", "-BPS", "HBPS"],
            [[], [], [], [], [], ["helmet"], []],
        ),
        # 3 of 3: any single miss flags the item, and it stays flagged for three frames.
        (
            3,
            3,
            3,
            ["HBPS", "HB-S", "HBPS", "HBPS", "HBPS"],
            [[], ["pants"], ["pants"], ["pants"], []],
        ),
        # 2 of 5 to stay clear, all 5 to clear again.
        (2, 5, 5, ["HB-S"] * 4 + ["HBPS"] * 5, [[]] * 3 + [["pants"]] * 5 + [[]]),
    ],
)
def test_smoothing_with_other_settings(
    k: int, clear: int, n: int, frames: list[str], expected: list[list[str]]
) -> None:
    t = settings(min_worn_frames=k, clear_worn_frames=clear, window_frames=n)
    assert replay(frames, t) == expected


def test_a_window_longer_than_the_setting_uses_only_the_newest_frames() -> None:
    # A checkpoint written with window_frames=8 and read back with 5.
    window = [seen("-BPS")] * 5 + [seen("HBPS")] * 3
    assert logic.smoothed_missing(window, [], DEFAULT) == []
    longer = settings(window_frames=8, min_worn_frames=6, clear_worn_frames=6)
    assert logic.smoothed_missing(window, [], longer) == ["helmet"]


# --------------------------------------------------------------------------- levels


@pytest.mark.parametrize(
    ("missing", "level"),
    [
        ([], "NORMAL"),
        (["helmet"], "CRITICAL"),
        (["boots"], "CRITICAL"),
        (["pants"], "WARNING"),
        (["shirt"], "WARNING"),
        (["pants", "shirt"], "WARNING"),
        (["helmet", "shirt"], "CRITICAL"),
        (list(logic.ITEMS), "CRITICAL"),
    ],
)
def test_default_levels(missing: list[str], level: str) -> None:
    assert logic.level_for(missing, DEFAULT) == level


def test_levels_follow_the_settings() -> None:
    t = settings(critical_items=["helmet"], critical_level="EMERGENCY", missing_level="CAUTION")
    assert logic.level_for(["boots"], t) == "CAUTION"
    assert logic.level_for(["helmet", "boots"], t) == "EMERGENCY"
    assert logic.level_for([], t) == "NORMAL"


def alerts_for(frames: list[str], t: PpeSettings = DEFAULT) -> list[tuple[int, str]]:
    """(frame index, level) of every alert BaseAgent's rule raises for one camera."""
    alerts, gate = [], Gate()
    for i, missing in enumerate(replay(frames, t)):
        level = logic.level_for(missing, t)
        # One frame a second, no delays: what the gate tells is the level logic alone.
        if gate_step(gate, level, float(i), t.alert_min_level, 0, 0, "EMERGENCY") == "alert":
            alerts.append((i, level))
    return alerts


def test_one_alert_per_episode_not_per_frame() -> None:
    episode = ["HBPS"] * 3 + ["-BPS"] * 10 + ["HBPS"] * 5
    assert alerts_for(episode) == [(5, "CRITICAL")]
    # A second violation after compliance came back is a new episode and a new alert.
    assert alerts_for(episode * 2) == [(5, "CRITICAL"), (23, "CRITICAL")]


def test_a_violation_that_gets_worse_alerts_again() -> None:
    # Shirt off (WARNING) for a while, then the helmet too (CRITICAL): both are news.
    frames = ["HBP-"] * 4 + ["-BP-"] * 4
    assert alerts_for(frames) == [(2, "WARNING"), (6, "CRITICAL")]


def test_flicker_below_k_never_alerts() -> None:
    assert alerts_for(["HBPS", "HBPS", "-BPS"] * 20) == []


def test_an_item_seen_in_every_other_frame_is_one_violation() -> None:
    flicker = ["HBPS", "-BPS"] * 20
    assert alerts_for(flicker) == [(5, "CRITICAL")]
    # Why clear_worn_frames is above min_worn_frames: without the margin the verdict flips
    # between 3 and 2 sightings of 5, and every other frame is a new alert.
    no_margin = settings(clear_worn_frames=3)
    assert len(alerts_for(flicker, no_margin)) == 18


def test_violation_details_name_the_camera_machine_and_items() -> None:
    text = logic.violation_details("gate-3", 12, ["helmet", "boots"])
    assert "gate-3" in text and "machine 12" in text and "helmet, boots" in text
    assert "machine" not in logic.violation_details("gate-3", None, ["shirt"])


# --------------------------------------------------------------------------- settings


def test_defaults_match_the_documented_rules() -> None:
    assert (DEFAULT.min_worn_frames, DEFAULT.clear_worn_frames, DEFAULT.window_frames) == (3, 4, 5)
    assert DEFAULT.threshold == 0.5
    assert DEFAULT.critical_items == ["helmet", "boots"]
    assert (DEFAULT.critical_level, DEFAULT.missing_level) == ("CRITICAL", "WARNING")
    assert DEFAULT.model_path == DEFAULT.labels_path == ""


@pytest.mark.parametrize(
    ("env", "words"),
    [
        (
            {"FACTORY_AGENTS_PPE_MIN_WORN_FRAMES": "6"},
            ["min_worn_frames", "6", "window_frames", "5"],
        ),
        (
            {"FACTORY_AGENTS_PPE_CLEAR_WORN_FRAMES": "2"},
            ["clear_worn_frames", "2", "min_worn_frames", "3"],
        ),
        ({"FACTORY_AGENTS_PPE_MODEL_PATH": "my.tflite"}, ["model_path", "labels_path"]),
        ({"FACTORY_AGENTS_PPE_LABELS_PATH": "labels.txt"}, ["model_path", "labels_path"]),
        (
            {"FACTORY_AGENTS_PPE_CRITICAL_LEVEL": "CAUTION"},
            ["critical_level", "CAUTION", "missing_level"],
        ),
        ({"FACTORY_AGENTS_PPE_CRITICAL_ITEMS": "helmet,gloves"}, ["critical_items", "gloves"]),
        ({"FACTORY_AGENTS_PPE_THRESHOLD": "1.5"}, ["threshold", "1.5"]),
        ({"FACTORY_AGENTS_PPE_WINDOW_FRAMES": "0"}, ["window_frames", "0"]),
    ],
)
def test_bad_ppe_settings_stop_start_up_naming_the_key(env: dict, words: list[str]) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(env=env)
    message = str(info.value)
    assert "\n" not in message
    missing = [w for w in words if w not in message]
    assert not missing, f"{message!r} does not name {missing}"


def test_camera_machines_from_the_file(tmp_path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text("[agents.ppe]\ncamera_machines = { cam7 = 12, dock = 3 }\n")
    assert load_settings(path, env={}).agents.ppe.camera_machines == {"cam7": 12, "dock": 3}
    path.write_text("[agents.ppe]\ncamera_machines = { cam7 = 12, cam8 = 12 }\n")
    with pytest.raises(SettingsError, match="two cameras to one machine"):
        load_settings(path, env={})
