"""The item catalog as every worker sees it: a replica of the compacted items topic.

An entry's encoder text is only needed until the item has a vector of the current encoder
version for that very text; a worker then drops it (:meth:`Catalog.drop_text`) and keeps its
digest, to notice a changed text. Text is most of an entry's memory (about 430 characters on
Amazon metadata); the compacted items topic still has it when a new encoder version needs it
again (the worker's catalog replica then reads the topic again).
"""

from __future__ import annotations

import msgspec

from state.events import Item, item_text
from state.interest import text_digest


class CatalogEntry(msgspec.Struct, frozen=True):
    item_id: str
    title: str
    categories: tuple[str, ...]
    price: float | None
    ts: float
    #: what the encoder sees of the item (``state.events.item_text``); "" when it has none, or
    #: once it was encoded and dropped (:meth:`Catalog.drop_text`): ``digest`` tells which
    text: str = ""
    #: ``state.interest.text_digest`` of the encoder text; "" = the item has no text (no vector)
    digest: str = ""


class Catalog:
    """Latest catalog entry per item; later event time wins, ties go to the later record."""

    def __init__(self) -> None:
        self._items: dict[str, CatalogEntry] = {}
        self._by_category: dict[str, set[str]] = {}
        self._ids: frozenset[str] | None = None
        #: entries whose text was dropped (while > 0, a new encoder version needs the topic again)
        self.dropped = 0

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
        text = item_text(item.title, item.categories, item.text)
        entry = CatalogEntry(
            item_id=item.item_id,
            title=item.title,
            categories=tuple(dict.fromkeys(item.categories)),
            price=item.price,
            ts=item.ts,
            text=text,
            digest=text_digest(text) if text else "",
        )
        if old is not None:
            if old.digest and not old.text:
                self.dropped -= 1
            for c in old.categories:
                self._by_category.get(c, set()).discard(item.item_id)
        self._items[item.item_id] = entry
        if old is None:
            self._ids = None
        for c in entry.categories:
            self._by_category.setdefault(c, set()).add(item.item_id)
        return True

    def drop_text(self, item_id: str, digest: str) -> bool:
        """Forget the text of ``item_id`` if it is the one with ``digest`` (a vector of it
        exists); returns whether it was dropped. A changed text (another digest) is kept."""
        entry = self._items.get(item_id)
        if entry is None or not entry.text or entry.digest != digest:
            return False
        self._items[item_id] = msgspec.structs.replace(entry, text="")
        self.dropped += 1
        return True
