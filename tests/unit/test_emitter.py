"""The coalescer: leading edge, one trailing emission per burst with the latest trigger, drains."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.emitter import Coalescer, Trigger


def t(event_ts: float) -> Trigger:
    return Trigger(event_ts=event_ts, record_ts=event_ts + 0.5)


def test_leading_edge_emits_at_once() -> None:
    c = Coalescer(1.0)
    assert c.offer("u", 100.0, t(1.0)) is True
    assert c.pending == 0
    assert c.take_due(100.0) == []
    # Another user is independent.
    assert c.offer("v", 100.1, t(1.0)) is True


def test_burst_inside_interval_emits_once_at_the_end_with_the_latest_trigger() -> None:
    c = Coalescer(1.0)
    assert c.offer("u", 100.0, t(1.0))
    for i, now in enumerate([100.1, 100.2, 100.5, 100.9]):
        assert c.offer("u", now, t(2.0 + i)) is False
    assert c.pending == 1
    assert c.take_due(100.95) == []  # interval not over
    due = c.take_due(101.0)
    assert due == [("u", t(5.0))]
    assert c.pending == 0
    assert c.take_due(101.5) == []  # emitted once, not again
    # The trailing emission starts a new interval: a change right after it waits.
    assert c.offer("u", 101.2, t(6.0)) is False
    assert c.take_due(102.0) == [("u", t(6.0))]


def test_pending_keeps_the_newest_event_time() -> None:
    c = Coalescer(1.0)
    c.offer("u", 0.0, t(10.0))
    c.offer("u", 0.1, t(20.0))
    c.offer("u", 0.2, t(15.0))  # an out-of-order, older event arrives last
    assert c.take_all(0.3) == [("u", t(20.0))]


def test_leading_edge_after_quiet_interval_clears_pending() -> None:
    c = Coalescer(1.0)
    c.offer("u", 0.0, t(1.0))
    c.offer("u", 0.5, t(2.0))
    assert c.pending == 1
    # Nobody called take_due; the next change after the interval is a leading edge and
    # its emission reflects the pending change too.
    assert c.offer("u", 1.5, t(3.0)) is True
    assert c.pending == 0
    assert c.take_due(5.0) == []


def test_take_all_drains_everything_and_counts_as_emission() -> None:
    c = Coalescer(10.0)
    for u in ("a", "b", "c"):
        assert c.offer(u, 0.0, t(0.0))
    c.offer("a", 1.0, t(1.0))
    c.offer("b", 2.0, t(2.0))
    c.offer("b", 3.0, t(3.0))
    assert c.pending == 2
    drained = c.take_all(4.0)
    assert sorted(drained) == [("a", t(1.0)), ("b", t(3.0))]
    assert c.pending == 0
    assert c.take_all(4.0) == []
    # A drain is an emission: "a" and "b" start a new interval at 4.0, "c" (not pending) does not.
    assert c.offer("a", 12.0, t(5.0)) is False
    assert c.offer("c", 10.0, t(5.0)) is True
    assert c.offer("b", 14.0, t(6.0)) is True


def test_memory_of_quiet_users_is_dropped() -> None:
    c = Coalescer(1.0)
    for n in range(100):
        c.offer(f"u{n}", 0.0, t(0.0))
    c.offer("busy", 0.0, t(0.0))
    c.offer("busy", 0.5, t(1.0))
    assert len(c._last_emit) == 101
    c.take_due(0.9)  # nobody quiet for a whole interval yet
    assert len(c._last_emit) == 101
    assert c.take_due(1.0) == [("busy", t(1.0))]
    # Everyone else has been quiet for an interval: forgotten. "busy" just emitted: kept.
    assert set(c._last_emit) == {"busy"}
    assert c.take_due(2.0) == []
    assert c._last_emit == {}
    # Forgetting changes nothing observable: the next change is a leading edge.
    assert c.offer("u7", 2.1, t(9.0)) is True


def test_due_users_come_in_the_order_of_their_last_emission() -> None:
    c = Coalescer(1.0)
    for n, u in enumerate(("c", "a", "d", "b")):
        assert c.offer(u, 0.25 * n, t(0.0))  # emitted at 0, 0.25, 0.5, 0.75
    for u in ("b", "a", "c"):  # changes in another order: pending
        assert c.offer(u, 0.875, t(1.0)) is False
    # "c", "a" and "d" emitted at least an interval ago: "c" and "a" due, oldest first, "d"
    # (quiet) forgotten; "b" not due yet.
    assert c.take_due(1.5) == [("c", t(1.0)), ("a", t(1.0))]
    assert list(c._last_emit) == ["b", "c", "a"]
    assert c.take_due(1.75) == [("b", t(1.0))]
    assert list(c._last_emit) == ["c", "a", "b"]
    # A leading-edge emission is the newest: it moves the user to the end.
    assert c.offer("c", 2.5, t(2.0)) is True
    assert list(c._last_emit) == ["a", "b", "c"]


def test_zero_interval_always_emits() -> None:
    c = Coalescer(0.0)
    assert all(c.offer("u", 5.0, t(float(i))) for i in range(5))
    assert all(c.offer("u", 5.0, t(float(i)), catch_up=True) for i in range(5))  # every change, backlog or not
    assert c.pending == 0


def test_a_catch_up_change_waits_for_the_end_of_an_interval_that_starts_with_it() -> None:
    c = Coalescer(1.0)
    assert c.offer("u", 100.0, t(1.0), catch_up=True) is False  # no leading edge
    for i, now in enumerate([100.2, 100.6]):
        assert c.offer("u", now, t(2.0 + i), catch_up=True) is False
    assert c.take_due(100.99) == []
    assert c.take_due(101.0) == [("u", t(3.0))]  # one list for the three changes, the newest trigger
    assert c.pending == 0
    # A fresh change after that emission's interval is a leading edge again.
    assert c.offer("u", 102.0, t(4.0)) is True


def test_a_catch_up_change_inside_a_running_interval_keeps_its_end() -> None:
    c = Coalescer(1.0)
    assert c.offer("u", 100.0, t(1.0)) is True
    assert c.offer("u", 100.5, t(2.0), catch_up=True) is False
    assert c.take_due(101.0) == [("u", t(2.0))]  # the interval of the emission at 100.0, not 100.5's
    # An overdue pending user (no tick since its interval ended) is not put off by a catch-up change.
    assert c.offer("u", 101.5, t(3.0)) is False
    assert c.offer("u", 102.2, t(4.0), catch_up=True) is False
    assert c.take_due(102.2) == [("u", t(4.0))]


@settings(max_examples=200, deadline=None)
@given(
    interval=st.floats(min_value=0.1, max_value=5.0),
    gaps=st.lists(
        st.tuples(st.sampled_from("abc"), st.floats(min_value=0.0, max_value=3.0), st.booleans()), max_size=40
    ),
)
def test_rate_limit_and_no_lost_final_state(interval: float, gaps: list[tuple[str, float, bool]]) -> None:
    """Per user: emissions are at least ``interval`` apart, and after a final drain every user's
    last emission carries its newest trigger, whichever changes came as catch-up."""
    c = Coalescer(interval)
    now = 0.0
    emitted: dict[str, list[tuple[float, Trigger]]] = {}
    newest: dict[str, Trigger] = {}
    for n, (user, gap, catch_up) in enumerate(gaps):
        now += gap
        trig = t(float(n))
        newest[user] = trig
        for u, tr in c.take_due(now):
            emitted.setdefault(u, []).append((now, tr))
        # Every pending user whose interval ended went in this call: none waits for a later one.
        assert not [u for u in c._pending if now - c._last_emit[u] >= interval]
        if c.offer(user, now, trig, catch_up=catch_up):
            assert not catch_up  # a catch-up change never goes out at once
            emitted.setdefault(user, []).append((now, trig))
    end = now + 2 * interval  # (now + interval) - now may round below interval
    for u, tr in c.take_due(end):
        emitted.setdefault(u, []).append((end, tr))
    assert c.pending == 0
    for user, trig in newest.items():
        times = [when for when, _ in emitted[user]]
        assert all(b - a >= interval for a, b in pairwise(times)), times
        assert emitted[user][-1][1] == trig
