"""Model cards: each model's held-out metric beside a trivial baseline, on named data.

A model that a moving average, "same as last time" or one threshold on one reading can
match is not worth its complexity, and a plant engineer deserves to know. Every trainer
puts a card in its manifest entry; `train` prints it and refuses to replace a model whose
gating comparisons do not beat their baselines (unless told to).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Comparison:
    metric: str  # "forecast_mae_kw", "f1", "rul_mae_hours", "false_alarm_rate", ...
    model: float
    baseline: str  # "persistence", "latency > 32 ms", "logistic regression", ...
    baseline_value: float
    lower_is_better: bool
    data: str  # "held-out machines 41..50", "shifted plant: big machines 15-40 kW", ...
    # Whether it decides `beats_baseline`: a shifted-plant figure informs, it does not gate.
    gate: bool = True

    @property
    def beats(self) -> bool:
        """Strictly better than the baseline: a tie does not earn a model its keep."""
        if self.lower_is_better:
            return self.model < self.baseline_value
        return self.model > self.baseline_value


def _rounded(value: float) -> float:
    return float(f"{value:.4g}")


def card(comparisons: Sequence[Comparison], **facts: Any) -> dict[str, Any]:
    """The card as the manifest keeps it: the comparisons, whether the model beats its
    baselines where it counts, and any facts (rows, how the split was made)."""
    rows = [
        {
            **asdict(c),
            "model": _rounded(c.model),
            "baseline_value": _rounded(c.baseline_value),
            "beats": c.beats,
        }
        for c in comparisons
    ]
    gating = [r for r in rows if r["gate"]]
    return {
        "comparisons": rows,
        "beats_baseline": bool(gating) and all(r["beats"] for r in gating),
        **facts,
    }


def beats_baseline(entry_card: Mapping[str, Any] | None) -> bool:
    """Whether a card's gating comparisons all beat their baselines (no card: no)."""
    return entry_card is not None and bool(entry_card.get("beats_baseline"))


def card_lines(agent_id: str, entry_card: Mapping[str, Any] | None) -> list[str]:
    """What `train` prints: one line per comparison, then the verdict."""
    if not entry_card:
        return [f"{agent_id}: no model card"]
    lines = []
    for r in entry_card.get("comparisons", []):
        better = "lower" if r["lower_is_better"] else "higher"
        mark = "better" if r["beats"] else "NOT better"
        gate = "" if r["gate"] else " (for information)"
        lines.append(
            f"{agent_id}: {r['metric']} {r['model']:g} vs {r['baseline']} "
            f"{r['baseline_value']:g} ({better} is better: {mark}) on {r['data']}{gate}"
        )
    verdict = "beats" if beats_baseline(entry_card) else "does NOT beat"
    lines.append(f"{agent_id}: the model {verdict} its baselines")
    return lines
