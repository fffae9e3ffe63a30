"""Reason texts for a ranked list: the dimension that contributed most to each item, and its
evidence (the user's item it co-occurs with, their leading category, the people they follow,
...). Split from :mod:`scoring.ranker` so that the ranker holds the scoring and this module
the wording; the ranker builds one :class:`Evidence` per ranking from what its generators saw.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from scoring.shared import SharedState
from state.catalog import Catalog
from state.profile import Profile

#: The dimensions that raise a score, in the order of a candidate's feature tuple (the
#: ranker's ``FEATURES`` less ``negative``, which only lowers one and never gives a reason).
POSITIVE = ("cooc", "category", "trending", "content", "social", "segment")


class Evidence:
    """Reason texts: the dimension that contributed most to an item, and its evidence."""

    def __init__(
        self,
        profile: Profile,
        recent: list[str],
        shared: SharedState,
        catalog: Catalog,
        affinity: dict[str, float],
        total: float,
        social: dict[str, tuple[float, int]],
        segment: dict[str, tuple[float, str]],
        query: np.ndarray | None,
    ) -> None:
        self.profile, self.recent, self.shared, self.catalog = profile, recent, shared, catalog
        self.affinity, self.total, self.social, self.segment, self.query = affinity, total, social, segment, query
        self._chosen: dict[str, int] = {}
        self._anchors: list[str] = []
        self._sims: npt.NDArray[np.float64] | None = None

    def prepare(self, chosen: list[str]) -> None:
        """The items whose reasons will be asked for: their text similarities with the user's
        latest items are computed lazily, as one product, the first time a reason needs one."""
        self._chosen = {item: j for j, item in enumerate(chosen)}
        self._sims = None

    def _title(self, item: str) -> str:
        entry = self.catalog.get(item)
        return entry.title if entry is not None and entry.title else item

    def reasons(self, item: str, contributions: tuple[float, ...]) -> list[str]:
        """Reason texts for the dimensions that raised the item's score, largest first."""
        parts = sorted(zip(POSITIVE, contributions, strict=True), key=lambda kv: -kv[1])
        out: list[str] = []
        for name, value in parts:
            if value <= 0.0:
                continue
            text = getattr(self, f"_{name}")(item)
            if text:
                out.append(text)
        return out or ["from the catalog: no activity on it yet"]

    def _cooc(self, item: str) -> str:
        # The evidence: the user's item most similar to this one, among the latest ten
        # (a reason, not a score: cheap beats exhaustive here).
        knn, recent = self.shared.knn, self.recent
        if not recent:
            return ""
        found = knn.anchor(item, recent[-10:]) or knn.anchor(item, recent)
        anchor = found[0] if found is not None else recent[-1]
        return f"people who engaged with {self._title(anchor)} also engaged with this"

    def _category(self, item: str) -> str:
        cats = self.catalog.categories(item)
        if not cats:
            return ""
        lead = max(cats, key=lambda c: (self.affinity.get(c, 0.0), c))
        return f"you engage with {lead} ({self.affinity.get(lead, 0.0) / self.total:.0%} of your recent activity)"

    def _trending(self, item: str) -> str:
        return f"trending now (popularity {self.shared.popularity.value(item):.2f})"

    def _content(self, item: str) -> str:
        content = self.shared.content
        if item not in content:
            return ""
        j = self._chosen.get(item)
        if j is None:  # not prepared: this item alone
            self.prepare([item])
            j = 0
        if self._sims is None:
            anchors = self._anchors = [h for h in dict.fromkeys(self.recent[-10:]) if h in content]
            self._sims = content.pairwise(list(self._chosen), anchors, version=content.version or "")
        if self._anchors:
            row = self._sims[j]
            sim, anchor = max(zip(row.tolist(), self._anchors, strict=True))
            return f"close in text to {self._title(anchor)}, which you engaged with (similarity {sim:.2f})"
        return "close to what you wrote and engaged with (text similarity)"

    def _social(self, item: str) -> str:
        n = self.social[item][1] if item in self.social else 0
        return f"liked by {n} {'person' if n == 1 else 'people'} you follow" if n else ""

    def _segment(self, item: str) -> str:
        if item not in self.segment:
            return ""
        return f"popular with {self.shared.segments.describe(self.segment[item][1])}"
