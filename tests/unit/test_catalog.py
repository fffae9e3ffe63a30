"""state.catalog: an entry's text is dropped only for the digest of the vector made from it."""

from __future__ import annotations

from state.catalog import Catalog
from state.events import Item, item_text
from state.interest import text_digest


def _item(item_id: str, ts: float, text: str, title: str = "Title") -> Item:
    return Item(event_id=f"{item_id}@{ts}", ts=ts, item_id=item_id, title=title, text=text, categories=["c"])


def test_drop_text_needs_the_digest_of_the_held_text_and_a_newer_entry_brings_text_back() -> None:
    catalog = Catalog()
    catalog.upsert(_item("a", 1.0, "first"))
    catalog.upsert(Item(event_id="n", ts=1.0, item_id="none", title=""))  # no text at all: no digest
    first = text_digest(item_text("Title", ["c"], "first"))
    entry = catalog.get("a")
    assert entry is not None and entry.digest == first and entry.text == item_text("Title", ["c"], "first")
    assert not catalog.drop_text("a", text_digest("something else"))  # a vector of another text
    assert not catalog.drop_text("none", "")
    assert not catalog.drop_text("missing", first)
    assert catalog.drop_text("a", first) and catalog.dropped == 1
    entry = catalog.get("a")
    assert entry is not None and entry.text == "" and entry.digest == first and entry.title == "Title"
    assert not catalog.drop_text("a", first) and catalog.dropped == 1  # dropped once
    assert catalog.categories("a") == ("c",) and catalog.items_in("c") == {"a"}
    catalog.upsert(_item("a", 0.5, "older"))  # older: ignored, still dropped
    assert catalog.dropped == 1
    catalog.upsert(_item("a", 2.0, "second"))
    entry = catalog.get("a")
    assert entry is not None and entry.text == item_text("Title", ["c"], "second") and catalog.dropped == 0
