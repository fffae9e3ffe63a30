"""``persona group leave``'s request and answer on the wire, and the group timeouts Faust gets."""

from __future__ import annotations

import struct
from io import BytesIO
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from state.errors import BrokerError
from stream_app.membership import (
    LeaveGroupRequest_v3,
    LeaveGroupResponse_v3,
    RemoveMembersRequest,
    leave_left_behind,
    member_left_behind,
    member_removal,
    removals,
)
from stream_app.settings import Settings
from stream_app.worker import group_timeouts


def _string(s: str | None) -> bytes:
    """Kafka's (nullable) STRING: int16 length, -1 for null, then UTF-8 bytes."""
    if s is None:
        return struct.pack(">h", -1)
    raw = s.encode()
    return struct.pack(">h", len(raw)) + raw


def test_the_request_names_members_by_instance_id_with_an_empty_member_id() -> None:
    """The layout of Kafka's LeaveGroupRequest.json at version 3, written out by hand."""
    request = RemoveMembersRequest("persona", ["worker-2", "wörker-3"]).prepare({13: (0, 5)})
    assert isinstance(request, LeaveGroupRequest_v3) and request.API_VERSION == 3
    expected = (
        _string("persona")
        + struct.pack(">i", 2)
        + _string("") + _string("worker-2")
        + _string("") + _string("wörker-3")
    )
    assert request.encode() == expected


def test_a_dynamic_member_is_named_by_member_id_with_a_null_instance_id() -> None:
    """What a consumer sends for itself as it leaves (Kafka's LeaveGroupRequest.json, version 3)."""
    request = RemoveMembersRequest("persona", [], ["faust-0.15.3-abc"]).prepare({13: (0, 5)})
    assert request.encode() == _string("persona") + struct.pack(">i", 1) + _string("faust-0.15.3-abc") + _string(None)


def test_a_dynamic_members_outcome_is_read_by_its_member_id() -> None:
    answer = LeaveGroupResponse_v3.decode(BytesIO(_response(0, [("m-1", None, 0), ("m-2", None, 25)])))
    assert member_removal("m-1", answer.error_code, answer.members).outcome == "removed"
    assert member_removal("m-2", answer.error_code, answer.members).outcome == "absent"  # it had left already
    missing = member_removal("m-3", answer.error_code, answer.members)
    assert (missing.outcome, missing.error) == ("refused", "no answer for this member")
    with pytest.raises(BrokerError, match="GroupAuthorizationFailedError"):
        member_removal("m-1", 30, [])


def _app(member_id: Any, instance_id: str | None = None) -> SimpleNamespace:
    """A stopped Faust app as far as member_left_behind looks: app._consumer._thread._consumer._coordinator."""
    coordinator = SimpleNamespace(member_id=member_id, _group_instance_id=instance_id)
    return SimpleNamespace(_consumer=SimpleNamespace(_thread=SimpleNamespace(_consumer=SimpleNamespace(_coordinator=coordinator))))


def test_only_a_dynamic_consumer_that_kept_its_member_id_is_left_behind() -> None:
    assert member_left_behind(_app("faust-1")) == "faust-1"
    assert member_left_behind(_app("")) is None  # aiokafka forgets the id once it has left
    assert member_left_behind(_app("faust-1", instance_id="worker-a")) is None  # static: stays by design
    assert member_left_behind(SimpleNamespace(_consumer=None)) is None  # never started a consumer
    assert member_left_behind(SimpleNamespace()) is None


def test_a_static_worker_is_never_removed_on_its_way_out() -> None:
    # No broker at this address: a request would fail; a static member sends none.
    settings = Settings(bootstrap_servers="127.0.0.1:9", group_instance_id="worker-a")
    assert leave_left_behind(_app("faust-1"), settings, timeout_s=0.5) is None


def test_leaving_for_the_consumer_never_raises_when_the_broker_is_gone() -> None:
    removal = leave_left_behind(_app("faust-1"), Settings(bootstrap_servers="127.0.0.1:9"), timeout_s=1.0)
    assert removal is not None and removal.outcome == "refused" and removal.instance_id == "faust-1"


def test_a_broker_without_version_3_is_refused_rather_than_sent_an_old_leave() -> None:
    # Versions 0-2 name one member by member id: they cannot name a static member.
    with pytest.raises(NotImplementedError):
        RemoveMembersRequest("persona", ["w"]).prepare({13: (0, 2)})


def _response(error: int, members: list[tuple[str, str | None, int]]) -> bytes:
    body = struct.pack(">ih", 0, error) + struct.pack(">i", len(members))
    for member_id, instance_id, code in members:
        body += _string(member_id) + _string(instance_id) + struct.pack(">h", code)
    return body


def test_each_id_gets_its_own_outcome_from_the_answer() -> None:
    # 25 UNKNOWN_MEMBER_ID (gone already), 82 FENCED_INSTANCE_ID: Kafka's error codes.
    raw = _response(0, [("m-1", "a", 0), ("", "b", 25), ("", "c", 82)])
    answer = LeaveGroupResponse_v3.decode(BytesIO(raw))
    got = removals(["a", "b", "c", "d"], answer.error_code, answer.members)
    assert [(r.instance_id, r.outcome) for r in got] == [
        ("a", "removed"), ("b", "absent"), ("c", "refused"), ("d", "refused"),
    ]
    assert got[2].error == "Kafka error code 82"  # newer than aiokafka's table: named by its code
    assert got[3].error == "no answer for this id"


def test_a_refusal_of_the_whole_request_is_an_error_naming_it() -> None:
    raw = _response(30, [])  # GROUP_AUTHORIZATION_FAILED
    answer = LeaveGroupResponse_v3.decode(BytesIO(raw))
    with pytest.raises(BrokerError, match="GroupAuthorizationFailedError"):
        removals(["a"], answer.error_code, answer.members)


def test_regression_a_session_timeout_over_90_s_crashed_the_worker_at_start() -> None:
    """Faust raised ImproperlyConfigured (session longer than its 90 s request timeout) at start."""
    long = group_timeouts(Settings(session_timeout_s=120.0))
    assert long["broker_session_timeout"] == 120.0
    assert long["broker_request_timeout"] >= long["broker_session_timeout"]
    assert long["broker_heartbeat_interval"] == 12.0
    short = group_timeouts(Settings(session_timeout_s=30.0))
    assert short["broker_request_timeout"] == 90.0  # Faust's default, unchanged


def test_a_session_timeout_the_broker_would_refuse_is_refused_by_the_settings() -> None:
    with pytest.raises(ValidationError):
        Settings(session_timeout_s=1801.0)
