"""The worker group's members, and removing static members that are gone for good.

A static member (``PERSONA_GROUP_INSTANCE_ID``, KIP-345) does not leave its group when it stops:
that is what lets a restarted worker take its partitions back without a rebalance. The price is
paid on a scale-down: the partitions of a removed worker stay with its instance id until its
session times out (``PERSONA_SESSION_TIMEOUT_S``: the group paused 19.8 and 27.4 s in two
``persona bench scale`` runs, against 1.8 and 1.9 s with the removal below). KIP-345's answer is an admin request that removes
members by instance id (Java's ``Admin.removeMembersFromConsumerGroup``): a LeaveGroup request,
version 3 or later, naming the instance ids with an empty member id. Neither confluent-kafka nor
aiokafka exposes it, so :func:`leave` builds it on aiokafka's protocol classes (version 3, the
first with the member list; Kafka serves 0-5).

Removing a member that is still running is harmless but not free: its next heartbeat is refused,
it rejoins as a new member and the group rebalances once (the worker's shared-instance-id check
counts one such refusal as a stall, not as a duplicate id).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Int16, Int32, Schema, String

from state.errors import BrokerError, PersonaError
from stream_app.supervise import group_coordinator

if TYPE_CHECKING:
    from stream_app.settings import Settings

log = logging.getLogger(__name__)

API_KEY = 13  # LeaveGroup
#: An empty member id with an instance id: "the member with this instance id, whatever its member id".
UNKNOWN_MEMBER_ID = ""


class LeaveGroupResponse_v3(Response):  # type: ignore[misc]  # aiokafka ships no type information
    API_KEY: ClassVar[int] = API_KEY
    API_VERSION: ClassVar[int] = 3
    SCHEMA: ClassVar[Schema] = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        ("members", Array(("member_id", String("utf-8")), ("group_instance_id", String("utf-8")), ("error_code", Int16))),
    )


class LeaveGroupRequest_v3(RequestStruct):  # type: ignore[misc]
    API_KEY: ClassVar[int] = API_KEY
    API_VERSION: ClassVar[int] = 3
    RESPONSE_TYPE: ClassVar[type[Response]] = LeaveGroupResponse_v3
    SCHEMA: ClassVar[Schema] = Schema(
        ("group", String("utf-8")),
        ("members", Array(("member_id", String("utf-8")), ("group_instance_id", String("utf-8")))),
    )


RemoveMembersStruct: TypeAlias = LeaveGroupRequest_v3


class RemoveMembersRequest(Request[RemoveMembersStruct]):  # type: ignore[misc]
    """LeaveGroup v3 for static members named by instance id (KIP-345's admin removal), and for
    dynamic members named by member id with a null instance id (what a consumer sends for itself
    as it leaves: :func:`leave_left_behind` sends it for a worker whose consumer did not)."""

    API_KEY = API_KEY

    def __init__(self, group: str, instance_ids: Sequence[str], member_ids: Sequence[str] = ()) -> None:
        self._group = group
        self._members: list[tuple[str, str | None]] = [(UNKNOWN_MEMBER_ID, i) for i in instance_ids]
        self._members += [(m, None) for m in member_ids]

    def build(self, request_struct_class: type[RemoveMembersStruct]) -> RemoveMembersStruct:
        return request_struct_class(self._group, self._members)


@dataclass(frozen=True)
class Removal:
    """One instance id's outcome: ``removed``, or ``absent`` (not a member: its session had ended
    already, or it never was), or ``refused`` with the broker's error."""

    instance_id: str
    outcome: str
    error: str | None = None


@dataclass(frozen=True)
class Member:
    member_id: str
    instance_id: str | None
    client_id: str
    host: str
    partitions: int


@dataclass(frozen=True)
class GroupView:
    group: str
    state: str
    members: list[Member]


def _error_name(code: int) -> str:
    import aiokafka.errors as errors

    error = errors.for_code(code)
    # aiokafka knows codes up to its own protocol versions; a newer one reads as UnknownError.
    return f"Kafka error code {code}" if error is errors.UnknownError and code != -1 else error.__name__


def removals(instance_ids: list[str], error_code: int, members: list[tuple[Any, ...]]) -> list[Removal]:
    """Each requested id's outcome from a LeaveGroup v3 response (pure: tested on its own)."""
    if error_code:
        raise BrokerError(f"the group coordinator refused the removal: {_error_name(error_code)}")
    by_id = {instance_id: code for _member_id, instance_id, code in members}
    return [_outcome(i, by_id.get(i), "no answer for this id") for i in instance_ids]


def _outcome(ident: str, code: int | None, unanswered: str) -> Removal:
    """One member's outcome from its error code in a LeaveGroup v3 answer (None: not answered)."""
    if code is None:
        return Removal(ident, "refused", unanswered)
    if code == 0:
        return Removal(ident, "removed")
    if _error_name(code) == "UnknownMemberIdError":
        return Removal(ident, "absent")
    return Removal(ident, "refused", _error_name(code))


async def _send(settings: Settings, request: RemoveMembersRequest, timeout_s: float) -> Any:
    """``request`` to the group's coordinator, retried while the coordinator loads or moves;
    the LeaveGroup v3 response."""
    import aiokafka.errors as errors
    from aiokafka.client import AIOKafkaClient, ConnectionGroup, CoordinationType

    from stream_app import kafka_clients

    client = AIOKafkaClient(**kafka_clients.aiokafka(settings), client_id=f"{settings.app_id}-group-leave")
    deadline = asyncio.get_running_loop().time() + timeout_s
    try:
        try:
            await client.bootstrap()
        except errors.KafkaError as exc:
            raise BrokerError(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc!r}") from exc
        while True:
            try:
                node = await client.coordinator_lookup(CoordinationType.GROUP, settings.app_id)
                response = await client.send(node, request, group=ConnectionGroup.COORDINATION)
                error = errors.for_code(response.error_code)
                if error.retriable and asyncio.get_running_loop().time() < deadline:
                    await asyncio.sleep(0.5)  # the coordinator is loading or moved
                    continue
                return response
            except errors.KafkaError as exc:
                if not getattr(exc, "retriable", False) or asyncio.get_running_loop().time() >= deadline:
                    raise BrokerError(f"cannot remove members from group {settings.app_id!r}: {exc!r}") from exc
                await asyncio.sleep(0.5)
    finally:
        await client.close()


async def _leave(settings: Settings, instance_ids: list[str], timeout_s: float) -> list[Removal]:
    response = await _send(settings, RemoveMembersRequest(settings.app_id, instance_ids), timeout_s)
    return removals(instance_ids, response.error_code, response.members)


def leave(settings: Settings, instance_ids: list[str], timeout_s: float = 30.0) -> list[Removal]:
    """Remove the static members ``instance_ids`` from the worker group (``settings.app_id``) now.

    Idempotent: an id that is not a member is reported ``absent``, not as a failure."""
    from stream_app import kafka_clients

    if not instance_ids:
        raise PersonaError("name at least one group instance id to remove")
    # A refused login or an unreachable broker, said clearly (aiokafka would raise its own).
    kafka_clients.preflight(settings, timeout_s=timeout_s)
    return asyncio.run(_leave(settings, instance_ids, timeout_s))


def member_removal(member_id: str, error_code: int, members: list[tuple[Any, ...]]) -> Removal:
    """A dynamic member's outcome from a LeaveGroup v3 response, named by its member id (pure)."""
    if error_code:
        raise BrokerError(f"the group coordinator refused the removal: {_error_name(error_code)}")
    by_member = {answered: code for answered, _instance_id, code in members}
    return _outcome(member_id, by_member.get(member_id), "no answer for this member")


def member_left_behind(app: Any) -> str | None:
    """The member id under which a stopped Faust ``app``'s group consumer still counts itself
    in the group: None when it left (aiokafka forgets its member id once it has sent the
    leave), never joined, or has no group consumer.

    A worker stopped while its group rebalances (a rolling deploy: the new worker's join is
    under way when the old one gets SIGTERM) can learn of the rebalance from a heartbeat
    during its own shutdown, rejoin, and exit with that join's callbacks waiting on Faust's
    stopped event loop: aiokafka's close waits for them and never reaches its leave. The
    group then holds the partitions it assigned to the gone member until its session times
    out (``PERSONA_SESSION_TIMEOUT_S``: the group paused 28.1 s in one ``persona bench scale``
    run, 30.2 and 30.3 s in two of four stops of an experiment that timed them so). Private
    attributes of faust-streaming 0.15 and aiokafka 0.14, read defensively;
    ``tests/chaos/test_leave_on_stop.py`` fails if they move."""
    coordinator = group_coordinator(getattr(app, "_consumer", None))
    member_id = getattr(coordinator, "member_id", None)
    if not isinstance(member_id, str) or not member_id or getattr(coordinator, "_group_instance_id", None):
        return None
    return member_id


def leave_left_behind(app: Any, settings: Settings, timeout_s: float = 5.0) -> Removal | None:
    """After the worker stopped: when its consumer did not leave the group (:func:`member_left_behind`),
    leave for it, so its partitions move now and not at the session's end. A static member is
    left alone (staying through a restart is what it is for; ``persona group leave`` removes
    one for good). Best effort and bounded by ``timeout_s``: it never raises, and says what it did."""
    if settings.group_instance_id:
        return None
    member_id = member_left_behind(app)
    if member_id is None:
        return None
    request = RemoveMembersRequest(settings.app_id, [], [member_id])
    try:
        response = asyncio.run(asyncio.wait_for(_send(settings, request, timeout_s), timeout_s))
        removal = member_removal(member_id, response.error_code, response.members)
    except Exception as exc:  # noqa: BLE001  the process is exiting: say it, never raise from here
        log.warning("the worker's consumer did not leave group %r as it stopped, and leaving for it failed "
                    "(%r): its partitions wait for its session to time out", settings.app_id, exc)
        return Removal(member_id, "refused", repr(exc))
    log.warning("the worker's consumer did not leave group %r as it stopped (a rebalance raced its shutdown): "
                "member %s %s, so its partitions move now, not after the %.0f s session timeout%s",
                settings.app_id, member_id, removal.outcome, settings.session_timeout_s,
                f" ({removal.error})" if removal.error else "")
    return removal


def leave_on_exit(app: Any, settings: Settings, *, stopped: bool) -> None:
    """The worker's group membership as its process ends: a member left behind by a stop that
    raced a rebalance leaves (:func:`leave_left_behind`); after a stop the worker was asked for
    (``stopped``: not a restart, not a crash), a static member whose pod was scaled away leaves
    too (``stream_app.scale_down``). Best effort: it never raises."""
    from stream_app.scale_down import leave_if_scaled_away

    leave_left_behind(app, settings)
    if stopped:
        leave_if_scaled_away(settings)


#: Test failpoint (unset in production): "1" makes the worker's consumer close without leaving.
NO_LEAVE_ENV = "PERSONA_FAILPOINT_NO_LEAVE"


def no_leave_failpoint() -> None:
    """With ``PERSONA_FAILPOINT_NO_LEAVE=1``, aiokafka's consumer closes without its LeaveGroup and
    keeps its member id: what a stop that races a rebalance leaves behind (:func:`member_left_behind`),
    made certain for a test (the race itself depends on where a heartbeat falls in the shutdown)."""
    if os.environ.get(NO_LEAVE_ENV) != "1":
        return
    from aiokafka.consumer.group_coordinator import GroupCoordinator

    async def stay(self: GroupCoordinator) -> None:
        log.warning("failpoint %s: the consumer does not leave its group", NO_LEAVE_ENV)

    GroupCoordinator._maybe_leave_group = stay


def describe(settings: Settings, timeout_s: float = 10.0, admin: Any = None) -> GroupView:
    """The worker group as the coordinator sees it (a member whose session has not ended yet is
    still listed, whether its process runs or not). ``admin``: a connected ``AdminClient`` (from
    ``kafka_clients.preflight``) to reuse; without one, the connection is checked first."""
    from confluent_kafka import KafkaException

    from stream_app import kafka_clients

    if admin is None:
        admin = kafka_clients.preflight(settings, timeout_s=timeout_s)
    try:
        g = admin.describe_consumer_groups([settings.app_id])[settings.app_id].result(timeout=timeout_s)
    except KafkaException as exc:
        raise BrokerError(f"cannot describe group {settings.app_id!r}: {exc}") from exc
    members = [
        Member(
            member_id=m.member_id,
            instance_id=m.group_instance_id,
            client_id=m.client_id,
            host=m.host,
            partitions=len(m.assignment.topic_partitions) if m.assignment is not None else 0,
        )
        for m in g.members
    ]
    members.sort(key=lambda m: (m.instance_id or "", m.member_id))
    return GroupView(group=settings.app_id, state=str(g.state).rsplit(".", 1)[-1], members=members)
