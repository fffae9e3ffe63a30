"""`persona bench stream --against REV --against-set name=value`: the compared worker's settings."""

from __future__ import annotations

import pytest

from stream_app.settings import Settings


def test_regression_against_compares_a_changed_default_only_with_its_old_value_given() -> None:
    # bench stream --against passed this run's settings, the new default included, to the older
    # commit's worker too: the window 50 -> 20 change compared 20 with 20. The old value is
    # now given explicitly, parsed and checked against the settings' fields.
    from bench.stream import against_overrides

    assert against_overrides(["cooc_window=50", "PERSONA_RANKER=baseline", "exclude_clicked=true"]) == {
        "cooc_window": 50, "ranker": "baseline", "exclude_clicked": True,
    }
    assert Settings(**against_overrides(["cooc_window=50"])).cooc_window == 50
    assert against_overrides([]) == {}
    with pytest.raises(ValueError, match="not a setting"):
        against_overrides(["cooc_windw=50"])
    with pytest.raises(ValueError, match="name=value"):
        against_overrides(["cooc_window"])
