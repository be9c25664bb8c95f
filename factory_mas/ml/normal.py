"""Each machine's own normal: a robust location and spread per reading, learnt online.

A plant's machines differ in their normal levels (a furnace runs at 75 C, a press at 50 C;
one line draws 30 kW, a pump 1 kW), so a model judging raw readings against the whole
plant keeps the hot and the big ones in alarm. Models here judge a reading against its own
machine's normal instead: its z-score, (reading - location) / spread.

The normal is seeded from training (the machines seen there, and a plant-wide prior for
any other) and keeps learning while serving, so a new machine adapts within `warmup`
readings. Each step is clipped to a few spreads: a fault, however large, drags the normal
no faster than a slightly high reading would, and callers pass `learn=False` for readings
they flag, so an anomaly is not learnt as normal.

Keys are a machine id, or a tuple of ints such as (machine, mode code) where the normal
depends on the mode; `arrays()` saves them beside a model as float arrays.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import msgspec
import numpy as np

# 1.4826 * MAD estimates the standard deviation of normally distributed data.
MAD_TO_SD = 1.4826
# sqrt(pi / 2) * mean absolute deviation estimates it too: the online form.
MEAN_AD_TO_SD = math.sqrt(math.pi / 2)


def robust_location_spread(
    x: np.ndarray, floor: float | np.ndarray = 1e-6
) -> tuple[np.ndarray, np.ndarray]:
    """Column-wise median and 1.4826 * MAD of `x` (n, k), the spread at least `floor`: a
    reading that never varied would make every change infinitely far from normal."""
    x = np.asarray(x, np.float64)
    median = np.median(x, axis=0)
    spread = MAD_TO_SD * np.median(np.abs(x - median), axis=0)
    return median, np.maximum(spread, floor)


class Normal(msgspec.Struct, array_like=True):
    """One key's learned normal over the channels, and how many readings taught it."""

    loc: list[float]
    spread: list[float]
    n: int = 0


def _key_of(saved: Any) -> Hashable:
    # A checkpoint stores tuple keys as JSON lists.
    return tuple(saved) if isinstance(saved, list) else saved


class Normals:
    """Robust per-key normals of `channels`, with a plant-wide prior for unseen keys."""

    def __init__(
        self,
        channels: Sequence[str],
        prior_loc: Sequence[float] | np.ndarray,
        prior_spread: Sequence[float] | np.ndarray,
        *,
        alpha: float = 0.01,
        warmup: int = 30,
        clip_spreads: float = 3.0,
        min_spread: Sequence[float] | np.ndarray | None = None,
    ) -> None:
        self.channels = tuple(channels)
        k = len(self.channels)
        floor = np.full(k, 1e-6) if min_spread is None else np.asarray(min_spread, np.float64)
        self.min_spread: list[float] = floor.tolist()
        self.prior_loc: list[float] = np.asarray(prior_loc, np.float64).reshape(k).tolist()
        self.prior_spread: list[float] = np.maximum(
            np.asarray(prior_spread, np.float64).reshape(k), floor
        ).tolist()
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.warmup = max(1, int(warmup))
        self.clip_spreads = clip_spreads
        self.known: dict[Hashable, Normal] = {}

    @classmethod
    def fitted(
        cls,
        channels: Sequence[str],
        keys: Sequence[Hashable],
        x: np.ndarray,
        **kw: Any,
    ) -> Normals:
        """Normals learnt from training rows: each key with at least `warmup` rows gets its
        own median and spread; the prior is the median of those keys' (all rows' when no
        key has enough)."""
        x = np.asarray(x, np.float64)
        rows: dict[Hashable, list[int]] = {}
        for i, key in enumerate(keys):
            rows.setdefault(key, []).append(i)
        floor = kw.get("min_spread")
        floor_arr = 1e-6 if floor is None else np.asarray(floor, np.float64)
        warmup = max(1, int(kw.get("warmup", 30)))
        fits = {
            key: (*robust_location_spread(x[idx], floor_arr), len(idx))
            for key, idx in rows.items()
            if len(idx) >= warmup
        }
        if fits:
            prior_loc = np.median([f[0] for f in fits.values()], axis=0)
            prior_spread = np.median([f[1] for f in fits.values()], axis=0)
        else:
            prior_loc, prior_spread = robust_location_spread(x, floor_arr)
        normals = cls(channels, prior_loc, prior_spread, **kw)
        for key, (loc, spread, n) in fits.items():
            normals.known[key] = Normal(loc.tolist(), spread.tolist(), n)
        return normals

    def normal_of(self, key: Hashable) -> Normal:
        """The key's normal, started from the prior (with no readings) if it is new."""
        m = self.known.get(key)
        if m is None:
            m = self.known[key] = Normal(list(self.prior_loc), list(self.prior_spread), 0)
        return m

    def warmed(self, key: Hashable) -> bool:
        m = self.known.get(key)
        return m is not None and m.n >= self.warmup

    def zscores(
        self,
        keys: Sequence[Hashable],
        x: np.ndarray,
        learn: Sequence[bool] | bool = True,
    ) -> np.ndarray:
        """(n, k) z-scores of the rows, in order: each against its key's normal before the
        row; then, where `learn`, the row updates that normal. A batch thus scores exactly
        as its rows one by one would."""
        values = np.asarray(x, np.float64).tolist()
        flags = [learn] * len(values) if isinstance(learn, bool) else list(learn)
        out = np.empty((len(values), len(self.channels)))
        for i, (key, row, teach) in enumerate(zip(keys, values, flags, strict=True)):
            m = self.normal_of(key)
            out[i] = [(v - c) / s for v, c, s in zip(row, m.loc, m.spread, strict=True)]
            if teach:
                self.learn(m, row)
        return out

    def learn(self, m: Normal, row: Sequence[float]) -> None:
        """One more normal reading into `m`: the first sets the location; later ones move
        it by a step clipped to `clip_spreads` spreads, at a weight of 1/n until warmed up
        (a running mean) and `alpha` after. The spread starts from the prior, which counts
        as a third of the warm-up's readings, and follows the clipped absolute deviation."""
        m.n += 1
        if m.n == 1:
            m.loc = [float(v) for v in row]
            return
        a = max(self.alpha, 1.0 / m.n)
        a_spread = max(self.alpha, 1.0 / (m.n + self.warmup / 3))
        c = self.clip_spreads
        for j, v in enumerate(row):
            loc, spread = m.loc[j], m.spread[j]
            d = v - loc
            reach = c * spread
            m.loc[j] = loc + a * min(max(d, -reach), reach)
            deviation = min(abs(d) * MEAN_AD_TO_SD, reach)
            m.spread[j] = max(spread + a_spread * (deviation - spread), self.min_spread[j])

    # -- saving ----------------------------------------------------------------------------

    def state(self) -> list[tuple[Any, Normal]]:
        """For a checkpoint: every key's normal."""
        return list(self.known.items())

    def restore(self, saved: Sequence[tuple[Any, Normal]] | Sequence[Sequence[Any]]) -> None:
        known: dict[Hashable, Normal] = {}
        for key, normal in saved:
            m = normal if isinstance(normal, Normal) else msgspec.convert(normal, Normal)
            if len(m.loc) == len(m.spread) == len(self.channels):
                known[_key_of(key)] = m
        self.known = known

    def arrays(self, prefix: str = "normal") -> dict[str, np.ndarray]:
        """The prior and the keys' normals as float arrays, to save beside a model (.npz
        extras). Keys must be ints or equal-length tuples of ints."""
        keys = list(self.known)
        width = len(keys[0]) if keys and isinstance(keys[0], tuple) else 1
        key_rows = [list(k) if isinstance(k, tuple) else [k] for k in keys]
        k = len(self.channels)
        return {
            f"{prefix}_prior_loc": np.asarray(self.prior_loc),
            f"{prefix}_prior_spread": np.asarray(self.prior_spread),
            f"{prefix}_min_spread": np.asarray(self.min_spread),
            f"{prefix}_keys": np.asarray(key_rows, np.float64).reshape(len(keys), width),
            f"{prefix}_loc": np.asarray([self.known[key].loc for key in keys]).reshape(-1, k),
            f"{prefix}_spread": np.asarray([self.known[key].spread for key in keys]).reshape(-1, k),
            f"{prefix}_count": np.asarray([self.known[key].n for key in keys], np.float64),
        }

    @staticmethod
    def array_names(prefix: str = "normal") -> tuple[str, ...]:
        """The names `arrays()` writes: what a model's loader asks its .npz for."""
        return tuple(
            f"{prefix}_{name}"
            for name in (
                "prior_loc",
                "prior_spread",
                "min_spread",
                "keys",
                "loc",
                "spread",
                "count",
            )
        )

    @classmethod
    def from_arrays(
        cls,
        channels: Sequence[str],
        arrays: Mapping[str, np.ndarray],
        prefix: str = "normal",
        **kw: Any,
    ) -> Normals:
        """Normals saved by `arrays()`; ValueError when their shapes do not fit `channels`."""
        k = len(channels)
        a = {
            name.removeprefix(f"{prefix}_"): np.asarray(arrays[name])
            for name in cls.array_names(prefix)
        }
        if (
            a["prior_loc"].shape != (k,)
            or a["loc"].shape[1:] != (k,)
            or a["spread"].shape != a["loc"].shape
        ):
            raise ValueError(
                f"saved normals of shape {a['loc'].shape} do not fit the {k} channels "
                f"{list(channels)}"
            )
        normals = cls(channels, a["prior_loc"], a["prior_spread"], min_spread=a["min_spread"], **kw)
        for key_row, loc, spread, n in zip(
            a["keys"], a["loc"], a["spread"], a["count"], strict=True
        ):
            ints = tuple(int(v) for v in key_row)
            key: Hashable = ints[0] if len(ints) == 1 else ints
            normals.known[key] = Normal(loc.tolist(), spread.tolist(), int(n))
        return normals


def prior_only(arrays: Mapping[str, np.ndarray], prefix: str = "normal") -> dict[str, np.ndarray]:
    """Saved normals (`Normals.arrays()`) without any key's own: the plant-wide prior
    alone. A model trained on the simulator ships so, since a simulated machine's id means
    nothing in a plant: carried over, machine 7's normal would judge the plant's machine 7
    (or the demo's, drawn with another seed) against another machine's levels."""
    out = dict(arrays)
    for name in ("keys", "loc", "spread"):
        a = np.asarray(arrays[f"{prefix}_{name}"])
        out[f"{prefix}_{name}"] = a[:0]
    out[f"{prefix}_count"] = np.asarray(arrays[f"{prefix}_count"])[:0]
    return out
