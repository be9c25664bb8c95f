"""Scenarios cut from the simulated plant that several test modules replay."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from factory_mas.sim.synthetic import FactorySimulator, Frame


def one_machine(columns: dict[str, np.ndarray], rows: np.ndarray) -> list[dict]:
    return Frame({name: values[rows] for name, values in columns.items()}).records()


@dataclass(frozen=True)
class Episode:
    """One machine's records in time order: a few calm minutes, an attack, calm again."""

    records: list[dict]
    attack: list[bool]
    lead: int

    @property
    def attack_rows(self) -> int:
        return sum(self.attack)


def attack_episode() -> Episode:
    """The shortest simulated attack long enough to reach CRITICAL, with calm around it."""
    # The tail outlasts the off-delay: two calm records after the first back at NORMAL.
    lead, tail, shortest = 3, 4, 12
    cols = FactorySimulator(seed=21, machines=50, step_minutes=1.0).run(1500).columns
    found = []  # (length, machine, first row of the attack)
    for machine in range(1, 51):
        attacked = cols["cyber_attack"][cols["machine_id"] == machine].tolist()
        first = None
        for i, now in enumerate(attacked):
            if now and first is None:
                first = i
            elif not now and first is not None:
                calm = not any(attacked[max(0, first - lead) : first] + attacked[i : i + tail])
                if calm and first >= lead and i - first >= shortest:
                    found.append((i - first, machine, first))
                first = None
    assert found, "the simulated day should hold an attack long enough to escalate"
    length, machine, first = min(found)
    rows = np.flatnonzero(cols["machine_id"] == machine)[first - lead : first + length + tail]
    return Episode(one_machine(cols, rows), cols["cyber_attack"][rows].tolist(), lead)
