"""The PPE renderer: seeded, labelled per item and for the person, with empty scenes."""

from __future__ import annotations

import numpy as np

from factory_mas.sim.ppe_images import ITEMS, LABELS, SCALES, _worker, render_set


def test_the_same_seed_gives_the_same_frames_and_labels() -> None:
    a, la = render_set(12, seed=8, size=32, empty_share=0.5, scales=SCALES)
    b, lb = render_set(12, seed=8, size=32, empty_share=0.5, scales=SCALES)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert a.shape == (12, 32, 32, 3) and a.dtype == np.uint8
    assert la.shape == (12, len(LABELS)) and LABELS[-1] == "person"


def test_empty_scenes_have_no_person_and_unknown_items() -> None:
    _, labels = render_set(40, seed=2, size=32, empty_share=0.5)
    person = labels[:, LABELS.index("person")]
    empty = person == 0
    assert 0 < empty.sum() < len(labels)
    assert np.isnan(labels[empty, : len(ITEMS)]).all()
    assert set(np.unique(labels[~empty, : len(ITEMS)])) == {0.0, 1.0}


def test_workers_are_drawn_at_the_scale_asked_for() -> None:
    # The figure's layer before it is pasted: its height follows the scale.
    def height(scale: float) -> int:
        worn = dict.fromkeys(ITEMS, True)
        box = _worker(np.random.default_rng(4), 128, worn, scale).getbbox()
        assert box is not None
        return box[3] - box[1]

    full, small = height(1.0), height(0.3)
    assert 0.2 < small / full < 0.4
