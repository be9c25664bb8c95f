"""PPE rules: pure functions of per-frame probabilities, a camera's recent frames and the
settings.

One frame is not a verdict: a worker turning away, a forklift passing in front or motion
blur hides a helmet for a frame or two. An item therefore counts as worn when the model saw
it in at least `min_worn_frames` of the camera's last `window_frames` frames. Frames a new
camera has not sent yet count as worn (benefit of the doubt), so the first frames of a
compliant worker are not flagged and a missing item is flagged as soon as
`window_frames - min_worn_frames + 1` frames agree: 3 with the default 3 of 5.

An item already flagged needs `clear_worn_frames` sightings (4 of 5) to count as worn again.
Without that margin an item seen in every other frame would flip between 3 and 2 of 5 and
start a new violation, with a new alert, every second frame.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

from ...levels import Level
from ...messages import PPE_ITEMS
from ...settings import PpeSettings

# Assigned, not imported under this name, so that the agent, training and tests can read
# it from here (an `import ... as` exports no name to a type checker).
ITEMS = PPE_ITEMS


def worn_items(probabilities: Mapping[str, float], threshold: float) -> frozenset[str]:
    """What one frame shows: the items whose probability reaches the threshold."""
    return frozenset(item for item in ITEMS if probabilities[item] >= threshold)


def missing_of(worn: Iterable[str]) -> list[str]:
    """The items not in `worn`, in the fixed ITEMS order so results read the same way."""
    present = set(worn)
    return [item for item in ITEMS if item not in present]


def smoothed_missing(
    window: Sequence[frozenset[str]], flagged: Collection[str], t: PpeSettings
) -> list[str]:
    """Items not seen often enough in the last window_frames frames; `flagged` are the
    items this camera's previous verdict had missing."""
    recent = list(window)[-t.window_frames :]
    unseen = t.window_frames - len(recent)
    missing = []
    for item in ITEMS:
        sightings = unseen + sum(item in worn for worn in recent)
        if sightings < (t.clear_worn_frames if item in flagged else t.min_worn_frames):
            missing.append(item)
    return missing


def level_for(missing: Sequence[str], t: PpeSettings) -> Level:
    if not missing:
        return "NORMAL"
    if any(item in t.critical_items for item in missing):
        return t.critical_level
    return t.missing_level


def violation_details(camera_id: str, machine_id: int | None, missing: Sequence[str]) -> str:
    where = f"Camera {camera_id}" + (f" (machine {machine_id})" if machine_id is not None else "")
    return (
        f"{where}: worker without {', '.join(missing)}. "
        "Stop the worker at the entry to the area until the PPE is on."
    )
