"""The snapshot job's checks of a snapshot against the deltas topic (pure: offsets only)."""

from __future__ import annotations

import pytest

from scoring.shared import SnapshotError
from stream_app.snapshots import Manifest, beyond_end, check_covers


def _manifest(positions: dict[int, int]) -> Manifest:
    return Manifest(id="x", sha256="0" * 64, size=1, chunks=1, topic="p.scoring.deltas", positions=positions, deltas=1)


def test_a_snapshot_fits_a_topic_that_reached_its_offsets() -> None:
    bounds = {0: (0, 10), 1: (4, 7)}
    assert beyond_end(_manifest({0: 10, 1: 5}), bounds) is None
    assert beyond_end(_manifest({0: 0, 1: 7}), bounds) is None


def test_a_snapshot_past_the_topics_end_belongs_to_a_topic_created_before_this_one() -> None:
    why = beyond_end(_manifest({0: 11, 1: 5}), {0: (0, 10), 1: (0, 7)})
    assert why is not None and "partition 0: 11, the topic ends at 10" in why and "created again" in why
    why = beyond_end(_manifest({0: 3, 2: 1}), {0: (0, 10), 1: (0, 7)})
    assert why is not None and "partition 2: 1, the topic ends at None" in why


def test_deleted_deltas_a_state_still_needs_are_named() -> None:
    check_covers("t", {0: (0, 10), 1: (5, 9)}, {0: 0, 1: 5})  # the snapshot covers what was deleted
    check_covers("t", {0: (0, 10)}, {})  # nothing deleted: the whole topic is there
    with pytest.raises(SnapshotError, match=r"partition 1: needs offset 2, the topic starts at 5"):
        check_covers("t", {0: (0, 10), 1: (5, 9)}, {0: 0, 1: 2})
    with pytest.raises(SnapshotError, match=r"partition 0: needs offset 0, the topic starts at 3"):
        check_covers("t", {0: (3, 10)}, {})
