"""The worker principal's ACLs: every topic Persona names is covered, nothing more is granted."""

from __future__ import annotations

from stream_app.acls import TOOL_GROUP_PREFIX, Grant, grants
from stream_app.inspect import changelog_topic
from stream_app.settings import Settings
from stream_app.topics import topic_specs


def _covered(settings: Settings, resource: str, name: str, operation: str) -> bool:
    return any(
        g.resource == resource and g.operation == operation and (name.startswith(g.name) if g.pattern == "PREFIXED" else name == g.name)
        for g in grants(settings)
    )


def test_every_topic_and_group_persona_uses_is_granted() -> None:
    settings = Settings(topic_prefix="shop.", app_id="recs-prod")
    topics = [*topic_specs(settings), changelog_topic(settings)]
    assert len(topics) > 20
    for topic in topics:
        for op in ("READ", "WRITE", "CREATE", "DESCRIBE"):
            assert _covered(settings, "TOPIC", topic, op), (topic, op)
    for group in (settings.app_id, f"{TOOL_GROUP_PREFIX}inspect-123", "persona-erase"):
        assert _covered(settings, "GROUP", group, "READ"), group
    assert _covered(settings, "CLUSTER", "kafka-cluster", "IDEMPOTENT_WRITE")


def test_nothing_outside_the_deployment_and_no_destructive_operation_is_granted() -> None:
    settings = Settings(topic_prefix="shop.", app_id="recs-prod")
    assert not _covered(settings, "TOPIC", "billing.payments", "READ")
    assert not _covered(settings, "TOPIC", "__consumer_offsets", "READ")
    rows = grants(settings)
    assert {g.operation for g in rows}.isdisjoint({"ALTER", "ALTER_CONFIGS", "CLUSTER_ACTION", "ALL"})
    # The one delete: the deltas a shared-state snapshot covers (persona shared snapshot --truncate).
    deletes = [g for g in rows if g.operation == "DELETE"]
    assert deletes == [Grant("TOPIC", "shop.scoring.deltas", "LITERAL", "DELETE")]
    assert _covered(settings, "TOPIC", "shop.scoring.deltas", "DELETE")
    assert not _covered(settings, "TOPIC", "shop.purchase", "DELETE")
    assert not _covered(settings, "TOPIC", "recs-prod-profiles-changelog", "DELETE")


def test_kafka_acls_arguments_name_the_rule() -> None:
    rows = {g.kafka_acls_args("User:w") for g in grants(Settings(topic_prefix="shop.", app_id="recs"))}
    assert "--add --allow-principal 'User:w' --operation DescribeConfigs --topic 'shop.' --resource-pattern-type prefixed" in rows
    assert "--add --allow-principal 'User:w' --operation IdempotentWrite --cluster" in rows
