"""Random and isolation forests served from numpy arrays, all rows and trees at once.

Training compiles scikit-learn forests (factory_mas.training.forests) into `Trees`, plain
node arrays in scikit-learn's own numbering, and saves them as .npz; serving reads them
back with numpy alone, so neither scikit-learn nor a pickle is needed to score.

Evaluation: scikit-learn walks a forest tree by tree, with fixed costs per call and per
tree. Here one numpy step advances every (tree, row) pair one level. Every tree is padded
to a complete binary tree and laid out level by level (`_Padded`), so a row's next slot is
computed (2p or 2p + 1), not looked up; and a level steps only the trees deeper than it,
which spares the hazard classifier (trees 4 to 14 levels deep) about half of its steps.

Results equal scikit-learn's bit for bit: the same leaves (see `_floor_float32`), and the
per-tree contributions added in tree order, as scikit-learn adds them. tests/ml/test_forest.py
holds them to that.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

import numpy as np

from ..errors import ArtifactError

# Written into every .npz; a reader refuses any other so a layout change fails loudly.
FORMAT = 1
# (tree, row) pairs per chunk of rows, so the working arrays stay in the CPU cache. On the
# agents' features 20-40k pairs scored up to 15 % faster per row than 10k, and about 30 %
# faster than 100k (cyber's 100 trees by 1024 rows).
_CHUNK_PAIRS = 1 << 15
# Padding to complete trees costs 2**depth slots per tree; this caps it (about 25 MB) so a
# deep or malformed forest is refused instead of exhausting memory. Ours use under 10 %.
MAX_SLOTS = 1 << 20


@dataclass(frozen=True, eq=False)
class Trees:
    """A forest's trees in scikit-learn's node numbering, concatenated tree after tree.

    `left` and `right` are tree-local child indices, -1 at a leaf; `feature` is the input
    column a node tests (-1 at a leaf), `threshold` the value: a row goes right when its
    feature, rounded to float32, exceeds it.
    """

    node_counts: np.ndarray
    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    n_features: int

    def __post_init__(self) -> None:
        nodes = len(self.left)
        counts = self.node_counts
        if counts.ndim != 1 or len(counts) == 0 or (counts < 1).any() or counts.sum() != nodes:
            raise ValueError("node_counts do not add up to the node arrays")
        if self.n_features < 1:
            raise ValueError("a forest needs at least one input column")
        if any(a.shape != (nodes,) for a in (self.right, self.feature, self.threshold)):
            raise ValueError("the node arrays differ in length")
        leaf = self.left == -1
        if not np.array_equal(leaf, self.right == -1):
            raise ValueError("a node has one child")
        local_end = np.repeat(counts, counts)
        inner = ~leaf
        for child in (self.left[inner], self.right[inner]):
            if ((child < 0) | (child >= local_end[inner])).any():
                raise ValueError("a child index points outside its tree")
        if ((self.feature[inner] < 0) | (self.feature[inner] >= self.n_features)).any():
            raise ValueError(f"a node tests a column outside 0..{self.n_features - 1}")
        if not np.isfinite(self.threshold[inner]).all():
            raise ValueError("a threshold is not a finite number")

    @property
    def n_trees(self) -> int:
        return len(self.node_counts)


def _floor_float32(threshold: np.ndarray) -> np.ndarray:
    """The largest float32 at or below each threshold.

    scikit-learn compares the float32 input with float64 thresholds. For a float32 x,
    x > t holds exactly when x > floor32(t), so the comparison can run in float32 (half
    the bytes to gather) and still send every row down scikit-learn's branch.
    """
    with np.errstate(over="ignore"):  # beyond float32: inf, then stepped down to the max
        rounded = threshold.astype(np.float32)
    above = rounded.astype(np.float64) > threshold
    rounded[above] = np.nextafter(rounded[above], np.float32(-np.inf))
    return rounded


def _tree_depths(trees: Trees, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Depth of every tree (a lone leaf is 0); ValueError unless every tree is a tree."""
    starts = np.cumsum(trees.node_counts) - trees.node_counts
    inner = left >= 0
    parents = np.bincount(np.concatenate([starts, left[inner], right[inner]]), minlength=len(left))
    if (parents != 1).any():
        raise ValueError("a node has no parent or several: not a tree")
    tree_of = np.repeat(np.arange(trees.n_trees), trees.node_counts)
    depths = np.zeros(trees.n_trees, np.int64)
    level, seen, frontier = 0, 0, starts
    while len(frontier):
        seen += len(frontier)
        depths[tree_of[frontier]] = level
        below = frontier[inner[frontier]]
        frontier = np.concatenate([left[below], right[below]])
        level += 1
    if seen != len(left):
        raise ValueError("some nodes cannot be reached from a root: not a tree")
    return depths


@dataclass(frozen=True, eq=False)
class _Padded:
    """Trees padded to complete binary trees, laid out level by level, deepest first.

    `levels[k]` holds, for every slot of level k, its node's column and threshold; the
    trees deeper than k fill the first `len / 2**k` of them, tree after tree. A row at slot
    p of level k goes on to slot 2p (left) or 2p + 1 (right) of level k + 1. A leaf passes
    itself on to both slots below it with threshold +inf, so its rows always go left and
    arrive, at their tree's last level, at a slot that holds the leaf.
    """

    levels: list[tuple[np.ndarray, np.ndarray]]
    # Leaf value of the slot p where tree t ends: bottom_values[p + bottom_offset[t]].
    bottom_values: np.ndarray
    bottom_offset: np.ndarray | None  # None: all zero
    # Tree order from the deepest-first order; None: the same.
    restore: np.ndarray | None


def _pad(trees: Trees, leaf_values: np.ndarray) -> _Padded:
    roots = np.cumsum(trees.node_counts) - trees.node_counts
    tree_start = np.repeat(roots, trees.node_counts)
    inner = trees.left >= 0
    left = np.where(inner, trees.left + tree_start, -1)
    right = np.where(inner, trees.right + tree_start, -1)
    depths = _tree_depths(trees, left, right)
    slots = sum(2 ** (int(d) + 1) - 1 for d in depths)  # Python ints: no overflow
    if slots > MAX_SLOTS:
        raise ValueError(
            f"trees up to {depths.max()} levels deep pad to {slots} nodes, more than "
            f"{MAX_SLOTS}; train shallower trees (max_depth)"
        )
    # Deepest first, so the trees a level steps are always a prefix of the rows.
    order = np.argsort(-depths, kind="stable")
    depths = depths[order]
    threshold = _floor_float32(trees.threshold)
    levels: list[tuple[np.ndarray, np.ndarray]] = []
    bottoms: list[np.ndarray] = []
    offset = np.zeros((trees.n_trees, 1), np.intp)
    node = roots[order]
    for level in range(int(depths[0]) + 1):
        # Trees [deeper, stepped) end at this level: their slots' leaf values go after
        # those of the shallower trees, which ended at the levels above.
        stepped, deeper = len(node) >> level, int((depths > level).sum())
        if deeper < stepped:
            offset[deeper:stepped] = sum(map(len, bottoms)) - (deeper << level)
            bottoms.append(node[deeper << level :])
            node = node[: deeper << level]
        if not deeper:
            break
        leaf = ~inner[node]
        column = np.where(leaf, 0, trees.feature[node]).astype(np.intp)
        levels.append((column, np.where(leaf, np.float32(np.inf), threshold[node])))
        children = np.empty(2 * len(node), np.intp)
        children[0::2] = np.where(leaf, node, left[node])
        children[1::2] = np.where(leaf, node, right[node])
        node = children
    return _Padded(
        levels=levels,
        bottom_values=leaf_values[np.concatenate(bottoms)],
        bottom_offset=offset if offset.any() else None,
        restore=None if (order == np.arange(len(order))).all() else np.argsort(order),
    )


class CompiledForest:
    """A forest ready to score; subclasses say what the leaves hold and what it answers."""

    kind = ""

    def __init__(self, trees: Trees, leaf_values: np.ndarray) -> None:
        if leaf_values.shape[:1] != trees.left.shape or not np.isfinite(leaf_values).all():
            raise ValueError("the leaf values do not match the nodes or are not finite")
        # Kept as given for write_forest; scoring reads only the padded copy.
        self.trees = trees
        self.leaf_values = leaf_values
        self.n_trees = trees.n_trees
        self.n_features = trees.n_features
        self._padded = _pad(trees, leaf_values)

    def summed(self, x: np.ndarray) -> np.ndarray:
        """Per row, the sum over the trees of the leaf each tree sends it to, added in
        tree order: shape (rows,) or (rows, outputs)."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected rows of {self.n_features} features, got shape {x.shape}")
        # scikit-learn compares float32 inputs; round the same way before anything else.
        with np.errstate(over="ignore"):  # out of float32 range: inf, refused below
            x32 = np.ascontiguousarray(x, np.float32)
        # scikit-learn routes NaN by rules learnt in training and refuses what float32
        # cannot hold; validated telemetry has neither, so one here is a bug upstream.
        if not np.isfinite(x32).all():
            raise ValueError("features must be finite numbers within float32 range")
        chunk = max(1, _CHUNK_PAIRS // self.n_trees)
        if len(x32) <= chunk:
            return sum_in_tree_order(self._per_tree(x32))
        return np.concatenate(
            [
                sum_in_tree_order(self._per_tree(x32[i : i + chunk]))
                for i in range(0, len(x32), chunk)
            ]
        )

    def _per_tree(self, x32: np.ndarray) -> np.ndarray:
        """The leaf values each tree gives each row: shape (trees, rows, ...)."""
        rows = len(x32)
        flat = x32.ravel()
        # Where row r starts in `flat`, for every (tree, row) pair: a full array, because
        # numpy adds two same-shaped arrays about twice as fast as it broadcasts one.
        row_start = np.repeat(
            np.arange(0, rows * self.n_features, self.n_features)[None, :], self.n_trees, axis=0
        )
        slot = np.repeat(np.arange(self.n_trees)[:, None], rows, axis=1)
        column = np.empty_like(slot)
        value = np.empty(slot.shape, np.float32)
        limit = np.empty_like(value)
        right = np.empty(slot.shape, bool)
        padded = self._padded
        # Preallocated outputs and mode="clip": with the default mode="raise" numpy copies
        # through a buffer, and every index is in range by construction.
        for level, (feature, threshold) in enumerate(padded.levels):
            n = len(feature) >> level  # the trees deeper than this level
            s, c, v, t, r = slot[:n], column[:n], value[:n], limit[:n], right[:n]
            np.take(feature, s, out=c, mode="clip")
            np.add(c, row_start[:n], out=c)
            np.take(flat, c, out=v, mode="clip")
            np.take(threshold, s, out=t, mode="clip")
            np.greater(v, t, out=r)
            np.add(s, s, out=s)
            np.add(s, r, out=s)
        if padded.bottom_offset is not None:
            slot += padded.bottom_offset
        if padded.restore is not None:
            slot = slot[padded.restore]
        return padded.bottom_values.take(slot, axis=0)

    @classmethod
    def from_arrays(cls, trees: Trees, arrays: Mapping[str, np.ndarray]) -> Self:
        """The forest `arrays()` describes, around `trees` read from the same arrays."""
        raise NotImplementedError

    def arrays(self) -> dict[str, np.ndarray]:
        """What `write_forest` writes besides the format and the kind."""
        t = self.trees
        return {
            "n_features": np.asarray(t.n_features, np.int64),
            "node_counts": t.node_counts.astype(np.int64),
            "left": t.left.astype(np.int32),
            "right": t.right.astype(np.int32),
            "feature": t.feature.astype(np.int32),
            "threshold": t.threshold.astype(np.float64),
            "value": self.leaf_values.astype(np.float64),
        }


def sum_in_tree_order(per_tree: np.ndarray) -> np.ndarray:
    """per_tree[0] + per_tree[1] + ... one tree after another, as scikit-learn adds them.

    numpy adds along an axis that is not the fastest in memory element by element in
    order, but along the fastest one it sums pairwise, which rounds differently: that is
    the case when a tree gives a single number (one row, one output).
    """
    if per_tree[0].size > 1:
        return np.add.reduce(per_tree, axis=0)
    return np.add.accumulate(per_tree, axis=0)[-1]


class ForestClassifier(CompiledForest):
    kind = "classifier"

    def __init__(self, trees: Trees, proba: np.ndarray, classes: Sequence[str]) -> None:
        # The leaves hold class fractions, which scikit-learn averages as they are.
        if proba.ndim != 2 or proba.shape[1] != len(classes):
            raise ValueError(f"the leaves hold {proba.shape[1:]} values for {len(classes)} classes")
        super().__init__(trees, proba)
        self.classes = tuple(str(c) for c in classes)

    @classmethod
    def from_arrays(cls, trees: Trees, arrays: Mapping[str, np.ndarray]) -> Self:
        return cls(trees, arrays["value"].astype(np.float64), arrays["classes"].tolist())

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """One column per class, in `classes` order."""
        return self.summed(x) / self.n_trees

    def arrays(self) -> dict[str, np.ndarray]:
        return {**super().arrays(), "classes": np.asarray(self.classes, np.str_)}


class ForestRegressor(CompiledForest):
    kind = "regressor"

    def __init__(self, trees: Trees, values: np.ndarray) -> None:
        if values.ndim != 1:
            raise ValueError("a regressor's leaves hold one value each")
        super().__init__(trees, values)

    @classmethod
    def from_arrays(cls, trees: Trees, arrays: Mapping[str, np.ndarray]) -> Self:
        return cls(trees, arrays["value"].astype(np.float64))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.summed(x) / self.n_trees


class ForestIsolation(CompiledForest):
    """An isolation forest: a leaf holds its path length plus the expected length of the
    rest of its subtree (Liu et al. 2008), the denominator normalises their sum."""

    kind = "isolation"

    def __init__(self, trees: Trees, path: np.ndarray, denominator: float) -> None:
        if path.ndim != 1:
            raise ValueError("an isolation forest's leaves hold one path length each")
        super().__init__(trees, path)
        self.denominator = float(denominator)

    @classmethod
    def from_arrays(cls, trees: Trees, arrays: Mapping[str, np.ndarray]) -> Self:
        return cls(trees, arrays["value"].astype(np.float64), float(arrays["denominator"]))

    def score_samples(self, x: np.ndarray) -> np.ndarray:
        depths = self.summed(x)
        # As scikit-learn: a forest fitted on one sample has denominator 0 and scores 1.
        scaled = np.divide(
            depths, self.denominator, out=np.ones_like(depths), where=self.denominator != 0
        )
        return -(2**-scaled)

    def arrays(self) -> dict[str, np.ndarray]:
        return {**super().arrays(), "denominator": np.asarray(self.denominator, np.float64)}


Forest = TypeVar("Forest", bound=CompiledForest)


def write_forest(
    path: Path, forest: CompiledForest, extras: Mapping[str, Any] | None = None
) -> None:
    """Write the forest and `extras` (named float arrays trained with it) as one .npz.

    The bytes depend on the arrays only (fixed zip timestamps), so training twice with
    the same seed writes the same file and the same sha256.
    """
    arrays = {"format": np.asarray(FORMAT, np.int64), "kind": np.asarray(forest.kind, np.str_)}
    arrays |= forest.arrays()
    for name, value in (extras or {}).items():
        if name in arrays:
            raise ValueError(f"extra {name!r} would overwrite the forest's own array")
        arrays[name] = np.asarray(value, np.float64)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in sorted(arrays.items()):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w") as fh:
                np.lib.format.write_array(fh, array, allow_pickle=False)
    os.replace(tmp, path)


def read_forest(
    path: Path, kind: type[Forest], extras: Sequence[str] = ()
) -> tuple[Forest, dict[str, np.ndarray]]:
    """The forest in `path` and the named extras; ArtifactError naming the file if it is
    not a readable forest of this format and kind."""
    try:
        # Our own handle: given a path, numpy leaves the file open when the zip is broken.
        with path.open("rb") as fh:
            data = np.load(fh, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ValueError("a single array, not an .npz archive")
            with data:
                arrays = {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise ArtifactError(f"{path} is missing") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise ArtifactError(f"cannot read {path} as a compiled forest (.npz): {exc}") from exc
    found = arrays.get("format", np.asarray(None))
    if found.shape != () or found.dtype.kind not in "iu" or int(found) != FORMAT:
        raise ArtifactError(
            f"{path} is in compiled-forest format {found.tolist()}, this code reads "
            f"format {FORMAT}; {path.name} was written by another release"
        )
    found_kind = str(arrays.get("kind", "unknown"))
    if found_kind != kind.kind:
        raise ArtifactError(f"{path} holds a {found_kind} forest, expected a {kind.kind}")
    missing = [name for name in extras if name not in arrays]
    if missing:
        raise ArtifactError(f"{path} lacks the arrays {missing}")
    try:
        trees = Trees(
            node_counts=arrays["node_counts"].astype(np.int64),
            left=arrays["left"].astype(np.int64),
            right=arrays["right"].astype(np.int64),
            feature=arrays["feature"].astype(np.int64),
            threshold=arrays["threshold"].astype(np.float64),
            n_features=int(arrays["n_features"]),
        )
        forest = kind.from_arrays(trees, arrays)
        named = {name: arrays[name].astype(np.float64) for name in extras}
    except (KeyError, ValueError, TypeError) as exc:
        raise ArtifactError(f"{path} does not hold a valid forest: {exc!r}") from exc
    return forest, named
