"""MovieLens-100k replay shared by the integration, chaos and rebalance tests."""

from __future__ import annotations

import math
from pathlib import Path

from scoring.messages import decode as decode_recs
from state.events import Event, Item
from state.profile import Profile
from stream_app.inspect import all_profiles, scan
from stream_app.producer import publish
from stream_app.settings import Settings
from stream_app.sources import read_events
from tests.truth import Expected, movielens_truth

FOLDER = "movielens-100k"


def split_catalog(data_dir: Path) -> tuple[list[Event], list[Event]]:
    events = list(read_events("movielens", data_dir / FOLDER))
    catalog: list[Event] = [e for e in events if isinstance(e, Item)]
    rest: list[Event] = [e for e in events if not isinstance(e, Item)]
    return catalog, rest


def publish_catalog(settings: Settings, catalog: list[Event]) -> None:
    publish(settings, catalog)


def input_topics(settings: Settings) -> list[str]:
    return [settings.topic("purchase"), settings.topic("user")]


def check_against_truth(
    settings: Settings, data_dir: Path, *, users: list[str] | None = None
) -> dict[str, Profile]:
    """Every (or every listed) user's profile equals the independent recomputation."""
    truth: dict[str, Expected] = movielens_truth(data_dir / FOLDER, settings.half_life_days)
    profiles = all_profiles(settings)
    assert set(profiles) == set(truth), (len(profiles), len(truth))
    for user in users or sorted(truth):
        p, t = profiles[user], truth[user]
        assert p.counts == {"purchase": t.purchases, "user": 1}, (user, p.counts, t.purchases)
        assert set(p.purchased) == t.items, user
        assert p.version == t.purchases + 1, user
        assert p.affinity_ref_ts == t.ref_ts, user
        assert set(p.affinity) == set(t.affinity), user
        for g, v in t.affinity.items():
            assert math.isclose(p.affinity[g], v, rel_tol=1e-9, abs_tol=1e-12), (user, g, p.affinity[g], v)
    return profiles


def check_recommendations(settings: Settings, profiles: dict[str, Profile], users: list[str]) -> None:
    """Each user has a message; the latest reflects the final profile and skips purchases."""
    latest: dict[str, bytes] = {}
    for key, value, _, _, _ in scan(settings, settings.recommendations_topic):
        if key is not None and value is not None:
            latest[key.decode()] = value
    for user in users:
        assert user in latest, f"no recommendations for {user}"
        msg = decode_recs(latest[user])
        assert msg.profile_version == profiles[user].version, (user, msg.profile_version)
        assert msg.items, user
        assert not {s.item_id for s in msg.items} & set(profiles[user].purchased), user
        assert len(msg.items) <= settings.top_k
