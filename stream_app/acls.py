"""The ACLs a Persona principal needs, for ``persona acls`` and the security tests.

One principal serves the worker (its Faust consumer and producer, the catalog, vector and
scoring-delta replicas), the producer CLI and the operators' commands (``tail``, ``inspect``,
``status``, ``erase``, ``dlq``) and the trainer; a deployment may split them, granting each
the rows it uses. Everything is a *prefixed* grant, so a new topic of the same deployment
needs no new ACL:

- topics ``{topic_prefix}``*: the input, dead-letter, recommendations, encoded-review,
  item-vector, scoring-delta and control topics: read, write, create (Persona declares its
  topics), describe and describe-configs;
- topics ``{app_id}-``*: the profile table's changelog and Faust's internal topics, the same;
- consumer groups ``{app_id}``* (the worker group) and ``persona-``* (the commands' throwaway
  groups, which never commit): read and describe;
- the cluster: idempotent-write (every producer is idempotent) and describe-configs;
- delete on the scoring-deltas topic only (a literal grant): ``persona shared snapshot
  --truncate`` deletes the deltas a snapshot covers. A deployment that never truncates may drop it;
- write and describe on one transactional id (literal): ``persona shared snapshot`` writes each
  snapshot in a transaction, which also fences a concurrent run (``stream_app.snapshot_job.write``).

Nothing else: no other delete, no alter or cluster-action, and no topic outside the two prefixes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stream_app.settings import Settings

_TOPIC_OPS = ("READ", "WRITE", "CREATE", "DESCRIBE", "DESCRIBE_CONFIGS")
_GROUP_OPS = ("READ", "DESCRIBE")
_CLUSTER_OPS = ("IDEMPOTENT_WRITE", "DESCRIBE_CONFIGS")
#: The group-id prefix of the commands' consumers (inspect, tail, status, erase, dlq).
TOOL_GROUP_PREFIX = "persona-"


@dataclass(frozen=True)
class Grant:
    """One allow rule: ``operation`` on resources of ``resource`` named ``name``* (prefixed) or ``name`` (literal)."""

    resource: str  # TOPIC, GROUP, CLUSTER or TRANSACTIONAL_ID
    name: str
    pattern: str  # PREFIXED or LITERAL
    operation: str
    #: ALLOW for every rule Persona needs; DENY to take one back (a deny beats any allow)
    permission: str = "ALLOW"

    def kafka_acls_args(self, principal: str) -> str:
        """The same rule as ``kafka-acls.sh`` arguments."""
        target = {
            "TOPIC": f"--topic '{self.name}'", "GROUP": f"--group '{self.name}'", "CLUSTER": "--cluster",
            "TRANSACTIONAL_ID": f"--transactional-id '{self.name}'",
        }[self.resource]
        pattern = " --resource-pattern-type prefixed" if self.pattern == "PREFIXED" else ""
        op = "".join(word.title() for word in self.operation.split("_"))  # DESCRIBE_CONFIGS -> DescribeConfigs
        return f"--add --{self.permission.lower()}-principal '{principal}' --operation {op} {target}{pattern}"


def grants(settings: Settings) -> list[Grant]:
    """Every rule the principal of ``settings`` needs (module docstring)."""
    rows = [Grant("TOPIC", prefix, "PREFIXED", op) for prefix in (settings.topic_prefix, f"{settings.app_id}-") for op in _TOPIC_OPS]
    groups = sorted({settings.app_id, TOOL_GROUP_PREFIX})
    rows += [Grant("GROUP", g, "PREFIXED", op) for g in groups for op in _GROUP_OPS]
    rows += [Grant("CLUSTER", "kafka-cluster", "LITERAL", op) for op in _CLUSTER_OPS]
    rows.append(Grant("TOPIC", settings.scoring_deltas_topic, "LITERAL", "DELETE"))
    rows += [Grant("TRANSACTIONAL_ID", settings.snapshot_transactional_id, "LITERAL", op) for op in ("WRITE", "DESCRIBE")]
    return rows


def _bindings(principal: str, rows: list[Grant], *, as_filter: bool = False) -> list[Any]:
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AclBinding,
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    make = AclBindingFilter if as_filter else AclBinding
    return [
        # confluent-kafka calls the cluster resource BROKER (named "kafka-cluster", as in Kafka).
        make(
            ResourceType["BROKER" if r.resource == "CLUSTER" else r.resource], r.name, ResourcePatternType[r.pattern],
            principal, "*", AclOperation[r.operation], AclPermissionType[r.permission],
        )
        for r in rows
    ]


def create(admin_conf: dict[str, Any], principal: str, rows: list[Grant]) -> None:
    """Create ``rows`` for ``principal`` through the Admin API (an admin's ``admin_conf``)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(admin_conf)
    for fut in admin.create_acls(_bindings(principal, rows)).values():
        fut.result(timeout=30)


def delete(admin_conf: dict[str, Any], principal: str, rows: list[Grant]) -> None:
    """Delete ``rows`` of ``principal`` (exactly these rules) through the Admin API."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(admin_conf)
    for fut in admin.delete_acls(_bindings(principal, rows, as_filter=True)).values():
        fut.result(timeout=30)
