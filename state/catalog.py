"""The item catalog as every worker sees it: a replica of the compacted items topic."""

from __future__ import annotations

import msgspec

from state.events import Item, item_text


class CatalogEntry(msgspec.Struct, frozen=True):
    item_id: str
    title: str
    categories: tuple[str, ...]
    price: float | None
    ts: float
    #: what the encoder sees of the item (``state.events.item_text``); "" = no vector
    text: str = ""


class Catalog:
    """Latest catalog entry per item; later event time wins, ties go to the later record."""

    def __init__(self) -> None:
        self._items: dict[str, CatalogEntry] = {}
        self._by_category: dict[str, set[str]] = {}
        self._ids: frozenset[str] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._items

    def get(self, item_id: str) -> CatalogEntry | None:
        return self._items.get(item_id)

    def categories(self, item_id: str) -> tuple[str, ...]:
        entry = self._items.get(item_id)
        return entry.categories if entry is not None else ()

    def ids(self) -> frozenset[str]:
        """Every item id; one shared frozenset until an item is added (a cold-start ranking
        asks on every message, and copying a large catalog each time was a hot spot)."""
        ids = self._ids
        if ids is None:
            ids = self._ids = frozenset(self._items)
        return ids

    def items_in(self, category: str) -> set[str]:
        return self._by_category.get(category, set())

    def upsert(self, item: Item) -> bool:
        """Apply a catalog event; returns whether it changed the catalog."""
        old = self._items.get(item.item_id)
        if old is not None and old.ts > item.ts:
            return False
        entry = CatalogEntry(
            item_id=item.item_id,
            title=item.title,
            categories=tuple(dict.fromkeys(item.categories)),
            price=item.price,
            ts=item.ts,
            text=item_text(item.title, item.categories, item.text),
        )
        if old is not None:
            for c in old.categories:
                self._by_category.get(c, set()).discard(item.item_id)
        self._items[item.item_id] = entry
        if old is None:
            self._ids = None
        for c in entry.categories:
            self._by_category.setdefault(c, set()).add(item.item_id)
        return True
