"""Profiles written by an earlier build load in this one.

``tests/data/profile-schema1.msgpack`` is a profile as the schema-1 build wrote it to RocksDB
and the changelog (a user with attributes, a click with an item vector, two purchases, a good
and a bad review with text encodings, a follow), and ``profile-schema1.json`` what it decoded
to then. Both are frozen: never regenerate them. A change of the profile schema bumps
``state.codec.SCHEMA_VERSION``, teaches ``loads`` to migrate schema 1, adds a golden file of
the new schema, and keeps this test: a worker upgraded over a RocksDB or a changelog full of
old records must read every one of them (or refuse to start, never guess).
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from state.codec import SCHEMA_VERSION, SchemaVersionError, dumps, loads

DATA = Path(__file__).resolve().parent.parent / "data"


def test_a_schema1_profile_loads_as_it_did_when_written() -> None:
    raw = (DATA / "profile-schema1.msgpack").read_bytes()
    assert raw[0] == 1
    profile = loads(raw)
    want = msgspec.json.decode((DATA / "profile-schema1.json").read_bytes())
    # Fields added since, with defaults (a compatible change, no new schema): at their defaults.
    added_since = {"applied_index": {}}
    assert msgspec.to_builtins(profile) == want | added_since
    assert profile.version == 7 and profile.interest is not None


def test_a_schema1_profile_is_rewritten_in_the_current_schema() -> None:
    profile = loads((DATA / "profile-schema1.msgpack").read_bytes())
    again = dumps(profile)
    assert again[0] == SCHEMA_VERSION
    assert msgspec.to_builtins(loads(again)) == msgspec.to_builtins(profile)


def test_a_profile_from_a_newer_schema_is_refused_not_guessed() -> None:
    raw = (DATA / "profile-schema1.msgpack").read_bytes()
    with pytest.raises(SchemaVersionError, match=f"this build reads {SCHEMA_VERSION}"):
        loads(bytes((SCHEMA_VERSION + 1,)) + raw[1:])
