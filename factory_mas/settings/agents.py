"""Each agent's settings (`[agents.<id>]`): what they all share, and every agent's own."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct, field

from ..levels import LEVELS, Level
from .base import PositiveFloat, PositiveInt, Probability, Seconds, Section


class AlarmDelay(Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    on_s: Seconds = 0.0
    off_s: Seconds = 0.0


class AgentSettings(Section):
    enabled: bool = True
    history_size: Annotated[int, Meta(ge=10, le=1_000_000)] = 10_000
    checkpoint_interval_s: Annotated[float, Meta(ge=0.05)] = 10.0
    # Predictions at or above this level raise an alert when a machine's level changes.
    alert_min_level: Level = "WARNING"
    ws_queue_size: Annotated[int, Meta(ge=1, le=100_000)] = 256
    # Alarm on-delay: a level in the alarm band is told to the orchestrator once it has
    # held this long (seconds of record time). Off-delay: the return to normal likewise.
    on_delay_s: Seconds = 0.0
    off_delay_s: Seconds = 0.0
    # Levels from this one up skip the on-delay: an evacuation does not wait.
    on_delay_skip_level: Level = "EMERGENCY"
    # Alert type -> its own on/off-delay, e.g. {IDLE_WASTE = {on_s = 300, off_s = 60}}.
    type_delays: dict[str, AlarmDelay] = field(default_factory=dict)

    def delays_for(self, alert_type: str) -> tuple[float, float]:
        """The (on, off) delays of an alert type of this agent."""
        d = self.type_delays.get(alert_type)
        return (self.on_delay_s, self.off_delay_s) if d is None else (d.on_s, d.off_s)


class ConditionedSettings(AgentSettings):
    """An agent that scores telemetry records one machine at a time."""

    # Each machine's scores are smoothed over about this many of its records (an EWMA;
    # 1 = none); predictions carry the raw score beside the smoothed one.
    smoothing_records: Annotated[int, Meta(ge=1, le=10_000)] = 1
    # A level is left only once its score is this far back under the level's threshold
    # (hysteresis), in the units of the agent's score (a probability for most).
    deadband: Annotated[float, Meta(ge=0, le=1)] = 0.05


class PmSettings(ConditionedSettings):
    # The forest's RUL for one record is a noisy witness (60-80 h apart from one record to
    # the next on a steady machine); its trend over about an hour of records is not.
    smoothing_records: Annotated[int, Meta(ge=1, le=10_000)] = 60
    deadband: Annotated[float, Meta(ge=0, le=1)] = 0.05
    failure_probability_emergency: Probability = 0.8
    # The classifier's (smoothed) chance of failing within 24 h that is already worth
    # planning for: it rises a day or more before the RUL trend crosses 72 h (measured in
    # `bench --alarms`). 1 turns it off.
    failure_probability_warning: Probability = 0.1
    rul_critical_hours: PositiveFloat = 24.0
    rul_warning_hours: PositiveFloat = 72.0
    rul_caution_hours: PositiveFloat = 168.0
    # A RUL level is left only once the trend is this many hours above its threshold.
    rul_deadband_hours: Annotated[float, Meta(ge=0, le=1000)] = 12.0
    # Remaining life changes over hours: a minute's wait costs nothing and an alarm
    # cleared by one optimistic minute would come straight back.
    on_delay_s: Seconds = 60.0
    off_delay_s: Seconds = 300.0

    def __post_init__(self) -> None:
        if self.failure_probability_warning > self.failure_probability_emergency:
            raise ValueError(
                f"failure_probability_warning ({self.failure_probability_warning}) must not "
                f"exceed failure_probability_emergency ({self.failure_probability_emergency})"
            )
        if not self.rul_critical_hours < self.rul_warning_hours < self.rul_caution_hours:
            raise ValueError(
                "rul_critical_hours < rul_warning_hours < rul_caution_hours must hold, got "
                f"{self.rul_critical_hours} / {self.rul_warning_hours} / {self.rul_caution_hours}"
            )


class EnergySettings(ConditionedSettings):
    # Power surges last minutes: three records' smoothing and a short on-delay keep a
    # single spike (a motor starting) from alarming; the off-delay rides out the dips.
    smoothing_records: Annotated[int, Meta(ge=1, le=10_000)] = 2
    deadband: Annotated[float, Meta(ge=0, le=1)] = 0.1
    on_delay_s: Seconds = 5.0
    off_delay_s: Seconds = 30.0
    # The anomaly score is calibrated at training so that 0.5 is the score the target alert
    # rate (0.5 %) of the normal training readings reach; raise it for fewer, surer alarms.
    anomaly_score_threshold: Probability = 0.5
    # An anomaly drawing this multiple of its forecast or more is CRITICAL (else WARNING).
    critical_forecast_ratio: Annotated[float, Meta(gt=1)] = 2.0
    # An anomaly this far above its forecast (or above the machine's usual level), or this
    # far below the forecast, earns a recommendation saying so.
    above_forecast_pct: PositiveFloat = 25.0
    # Idle drawing this share of the machine's own Active level is waste (CAUTION).
    idle_waste_ratio: Annotated[float, Meta(gt=0, le=2)] = 0.8
    # Good units per kWh that score efficiency 100. The simulated plant labels rows Low
    # below 39 units/kWh, which is 65 on this scale: the default hint threshold below.
    efficiency_reference_units_per_kwh: PositiveFloat = 60.0
    # An Active machine below this efficiency score earns a recommendation.
    efficiency_low_score: Annotated[float, Meta(ge=0, le=100)] = 65.0

    def __post_init__(self) -> None:
        # A CRITICAL reading must always come with the recommendation that explains it.
        if self.above_forecast_pct > (self.critical_forecast_ratio - 1) * 100:
            raise ValueError(
                f"above_forecast_pct ({self.above_forecast_pct}) must not exceed the excess "
                f"that critical_forecast_ratio ({self.critical_forecast_ratio}) calls "
                f"critical, {(self.critical_forecast_ratio - 1) * 100:g}%"
            )


HazardType = Literal["FIRE_RISK", "MECHANICAL_HAZARD", "ELECTRICAL_HAZARD"]


class CyberSettings(ConditionedSettings):
    # The run of anomalous records below is the on-delay already; a calmer record in an
    # attack must not end it (deadband) nor clear its alarm (off-delay).
    deadband: Annotated[float, Meta(ge=0, le=1)] = 0.1
    off_delay_s: Seconds = 30.0
    # Threat rises with the run of anomalous records of one machine: one odd reading is
    # often a glitch, three in a row (three minutes at one record a minute) is a pattern,
    # ten is a sustained attack.
    medium_after_anomalies: PositiveInt = 1
    high_after_anomalies: PositiveInt = 3
    critical_after_anomalies: PositiveInt = 10
    level_low: Level = "NORMAL"
    level_medium: Level = "CAUTION"
    level_high: Level = "WARNING"
    level_critical: Level = "CRITICAL"
    # Robust z-score (median/MAD) from which a feature is named as an indicator; 3.5 is
    # the usual outlier cut for modified z-scores (Iglewicz and Hoaglin).
    indicator_zscore: PositiveFloat = 3.5

    def __post_init__(self) -> None:
        runs = (self.medium_after_anomalies, self.high_after_anomalies)
        if not runs[0] < runs[1] < self.critical_after_anomalies:
            raise ValueError(
                "medium_after_anomalies < high_after_anomalies < critical_after_anomalies must "
                f"hold, got {runs[0]} / {runs[1]} / {self.critical_after_anomalies}"
            )
        levels = (self.level_low, self.level_medium, self.level_high, self.level_critical)
        ranks = [LEVELS.index(level) for level in levels]
        if ranks != sorted(ranks):
            raise ValueError(
                "level_low, level_medium, level_high, level_critical must not decrease, got "
                + " / ".join(levels)
            )


# A physical limit: 0 turns it off.
Limit = Annotated[float, Meta(ge=0, le=1_000_000)]


class MachineLimits(Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """One machine's own limits; a limit left out is the plant-wide one."""

    temperature_max_c: Limit | None = None
    vibration_max_hz: Limit | None = None
    power_max_kw: Limit | None = None


class SafetySettings(ConditionedSettings):
    # A physical limit exceeded or a hazard from hazard_score_emergency up alarms at its
    # first reading; a lesser hazard once the next reading confirms it (an on-delay of a
    # second is the next reading at any sampling rate). No smoothing; hazards clear only
    # after ten quiet seconds.
    deadband: Annotated[float, Meta(ge=0, le=1)] = 0.1
    on_delay_s: Seconds = 1.0
    off_delay_s: Seconds = 10.0
    # hazard_score = 1 - P(no hazard). From 0.5 a hazard is likelier than not: alert.
    hazard_score_caution: Probability = 0.3
    hazard_score_warning: Probability = 0.5
    hazard_score_critical: Probability = 0.7
    hazard_score_emergency: Probability = 0.9
    # Hazards that threaten the whole area, not only the machine: at the emergency score
    # they mean evacuation. Others at that score stay CRITICAL (stop the machine).
    evacuate_for: list[HazardType] = field(
        default_factory=lambda: ["FIRE_RISK", "ELECTRICAL_HAZARD"]
    )
    # Physical limits beside the classifier: a reading beyond one raises its hazard at
    # limit_level, whatever the classifier says. The defaults sit above every normal
    # reading of the simulated plants, hot ones included (105.7 C, 4.9 Hz at most); power
    # is off, as machines differ too much in size for one plant-wide figure.
    temperature_max_c: Limit = 115.0  # FIRE_RISK
    vibration_max_hz: Limit = 6.0  # MECHANICAL_HAZARD
    power_max_kw: Limit = 0.0  # ELECTRICAL_HAZARD
    limit_level: Level = "CRITICAL"
    # Machine id -> its own limits, e.g. {"7" = {temperature_max_c = 95}}.
    machine_limits: dict[str, MachineLimits] = field(default_factory=dict)

    def limits_of(self, machine_id: int | None) -> tuple[float, float, float]:
        """(temperature, vibration, power) limits of a machine, 0 where off."""
        own = self.machine_limits.get(str(machine_id)) if machine_id is not None else None
        plant = (self.temperature_max_c, self.vibration_max_hz, self.power_max_kw)
        if own is None:
            return plant
        mine = (own.temperature_max_c, own.vibration_max_hz, own.power_max_kw)
        t, v, w = (p if m is None else m for m, p in zip(mine, plant, strict=True))
        return t, v, w

    def __post_init__(self) -> None:
        bad = [key for key in self.machine_limits if not key.strip().isdigit()]
        if bad:
            raise ValueError(
                f'machine_limits: {bad[0]!r} is not a machine id (a whole number such as "7")'
            )
        if self.limit_level == "NORMAL":
            raise ValueError("limit_level must be CAUTION or above: a limit exceeded is news")
        cuts = (
            self.hazard_score_caution,
            self.hazard_score_warning,
            self.hazard_score_critical,
            self.hazard_score_emergency,
        )
        if not cuts[0] < cuts[1] < cuts[2] < cuts[3]:
            raise ValueError(
                "hazard_score_caution < _warning < _critical < _emergency must hold, got "
                + " / ".join(map(str, cuts))
            )


PpeItem = Literal["helmet", "boots", "pants", "shirt"]


class PpeSettings(AgentSettings):
    # The frame window below already smooths; the off-delay keeps a worker who turns
    # away for a moment from clearing and re-raising the violation.
    off_delay_s: Seconds = 5.0
    # Empty: the CNN shipped in artifacts/. Otherwise an operator's own .tflite and its
    # labels file; both or neither.
    model_path: str = ""
    labels_path: str = ""
    # A frame shows an item when the model's probability for it reaches this.
    threshold: Probability = 0.5
    # A frame shows a worker when the model's person probability reaches this; below it no
    # item can be missing (an empty gate, a cup on a desk). Ignored for a model without a
    # person output.
    person_threshold: Probability = 0.5
    # An item counts as worn when seen in at least min_worn_frames of a camera's last
    # window_frames frames: a head turned away for a frame or two is not a violation.
    window_frames: Annotated[int, Meta(ge=1, le=100)] = 5
    min_worn_frames: Annotated[int, Meta(ge=1, le=100)] = 3
    # Once flagged missing, an item counts as worn again only when seen in this many of the
    # last window_frames frames. One more than min_worn_frames: a helmet the model sees in
    # every other frame is then one violation, not a new alert every second frame.
    clear_worn_frames: Annotated[int, Meta(ge=1, le=100)] = 4
    # Hard hat and safety boots guard against falling objects, crushing and punctures,
    # injuries that maim at once: a worker without them is stopped now (CRITICAL). Without
    # work trousers or a shirt the skin is exposed to burns and cuts: a supervisor sees
    # to it within the shift (WARNING).
    critical_items: list[PpeItem] = field(default_factory=lambda: ["helmet", "boots"])
    critical_level: Level = "CRITICAL"
    missing_level: Level = "WARNING"
    max_image_bytes: Annotated[int, Meta(ge=1024, le=100_000_000)] = 8_000_000
    # Checked from the image header before decoding: a small PNG can unpack to gigabytes.
    max_image_pixels: Annotated[int, Meta(ge=4096, le=50_000_000)] = 20_000_000
    # Frames in one POST /api/ppe/predict array, counted before any is decoded. Measured:
    # 10,000 small frames (9.6 MB) in one request took the process from 0.7 to 3.7 GB.
    max_frames_per_request: Annotated[int, Meta(ge=1, le=100_000)] = 1_000
    camera_machines: dict[str, Annotated[int, Meta(ge=1, le=1_000_000)]] = field(
        default_factory=dict
    )

    def __post_init__(self) -> None:
        if not self.min_worn_frames <= self.clear_worn_frames <= self.window_frames:
            raise ValueError(
                "min_worn_frames <= clear_worn_frames <= window_frames must hold, got "
                f"{self.min_worn_frames} / {self.clear_worn_frames} / {self.window_frames}"
            )
        if bool(self.model_path) != bool(self.labels_path):
            raise ValueError("model_path and labels_path go together: set both or neither")
        if LEVELS.index(self.critical_level) < LEVELS.index(self.missing_level):
            raise ValueError(
                f"critical_level {self.critical_level} must not be below missing_level "
                f"{self.missing_level}"
            )
        machines = list(self.camera_machines.values())
        if len(machines) != len(set(machines)):
            # Alerts are raised per subject (the machine when there is one): two cameras on
            # one machine would reset each other's level and re-alert on every frame.
            raise ValueError(f"camera_machines maps two cameras to one machine: {machines}")


# One field per entry of agents/registry.py, named after the agent's slug. Written out,
# not generated from the registry, so that a type checker knows settings.agents.pm is
# PmSettings; test_registry.py keeps the two in step.
class AgentsSettings(Section):
    pm: PmSettings = field(default_factory=PmSettings)
    energy: EnergySettings = field(default_factory=EnergySettings)
    cyber: CyberSettings = field(default_factory=CyberSettings)
    safety: SafetySettings = field(default_factory=SafetySettings)
    ppe: PpeSettings = field(default_factory=PpeSettings)
