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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Int16, Int32, Schema, String

from state.errors import BrokerError, PersonaError

if TYPE_CHECKING:
    from stream_app.settings import Settings

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
    """LeaveGroup v3 for static members named by instance id (KIP-345's admin removal)."""

    API_KEY = API_KEY

    def __init__(self, group: str, instance_ids: list[str]) -> None:
        self._group = group
        self._instance_ids = instance_ids

    def build(self, request_struct_class: type[RemoveMembersStruct]) -> RemoveMembersStruct:
        return request_struct_class(self._group, [(UNKNOWN_MEMBER_ID, i) for i in self._instance_ids])


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
    out: list[Removal] = []
    for i in instance_ids:
        code = by_id.get(i)
        if code is None:
            out.append(Removal(i, "refused", "no answer for this id"))
        elif code == 0:
            out.append(Removal(i, "removed"))
        elif _error_name(code) == "UnknownMemberIdError":
            out.append(Removal(i, "absent"))
        else:
            out.append(Removal(i, "refused", _error_name(code)))
    return out


async def _leave(settings: Settings, instance_ids: list[str], timeout_s: float) -> list[Removal]:
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
                response = await client.send(
                    node, RemoveMembersRequest(settings.app_id, instance_ids), group=ConnectionGroup.COORDINATION
                )
                error = errors.for_code(response.error_code)
                if error.retriable and asyncio.get_running_loop().time() < deadline:
                    await asyncio.sleep(0.5)  # the coordinator is loading or moved
                    continue
                return removals(instance_ids, response.error_code, response.members)
            except errors.KafkaError as exc:
                if not getattr(exc, "retriable", False) or asyncio.get_running_loop().time() >= deadline:
                    raise BrokerError(f"cannot remove members from group {settings.app_id!r}: {exc!r}") from exc
                await asyncio.sleep(0.5)
    finally:
        await client.close()


def leave(settings: Settings, instance_ids: list[str], timeout_s: float = 30.0) -> list[Removal]:
    """Remove the static members ``instance_ids`` from the worker group (``settings.app_id``) now.

    Idempotent: an id that is not a member is reported ``absent``, not as a failure."""
    from stream_app import kafka_clients

    if not instance_ids:
        raise PersonaError("name at least one group instance id to remove")
    # A refused login or an unreachable broker, said clearly (aiokafka would raise its own).
    kafka_clients.preflight(settings, timeout_s=timeout_s)
    return asyncio.run(_leave(settings, instance_ids, timeout_s))


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
