"""Exponential decay driven by event time.

A decayed sum ``S(T) = sum_i w_i * 2 ** (-(T - t_i) / h)`` is kept as its value at a
reference time ``T_ref`` (the latest event time seen). Moving the reference forward
multiplies by one factor; an event older than the reference adds its weight already
decayed to ``T_ref``. Both are exact, so the result does not depend on arrival order
(only on the set of events), which is what lets replays and out-of-order delivery
converge to the same profile. Wall-clock time never enters: replaying 1998 data gives
1998 answers.
"""

from __future__ import annotations

import math

SECONDS_PER_DAY = 86_400.0
_LN2 = math.log(2.0)


def factor(dt_s: float, half_life_s: float) -> float:
    """The multiplier that ages a decayed value by ``dt_s`` seconds (``dt_s >= 0``)."""
    return math.exp(-_LN2 * dt_s / half_life_s)


def weight_at(weight: float, event_ts: float, ref_ts: float, half_life_s: float) -> float:
    """``weight`` of an event at ``event_ts`` seen from ``ref_ts`` (either side)."""
    return weight * math.exp(-_LN2 * (ref_ts - event_ts) / half_life_s)


def closed_form(events: list[tuple[float, float]], at_ts: float, half_life_s: float) -> float:
    """Reference implementation: the decayed sum of ``(ts, weight)`` pairs at ``at_ts``."""
    return math.fsum(w * math.exp(-_LN2 * (at_ts - t) / half_life_s) for t, w in events)
