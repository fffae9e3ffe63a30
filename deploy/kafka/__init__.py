"""Local single-node Apache Kafka (KRaft) for development and integration tests
(:mod:`deploy.kafka.launcher`; ``persona kafka up|down|status``: :mod:`deploy.kafka.cli`).

Nothing is imported here: ``persona`` mounts this package's CLI at every start, the worker's
supervisor included, and the launcher needs confluent-kafka's admin client.
"""
