"""The RabbitMQ backend: a topology as RabbitMQ definitions, read back, planned and applied.

    url.py         amqp://user:pass@host[:port]/vhost -> Target
    mapping.py     Topology -> Definitions (pure), what cannot map, capabilities
    live.py        the broker's definitions over the management API (port 15672)
    reverse.py     Definitions -> the Topology they express (for `plan --against`)
    plan.py        the plan against a live broker, with RabbitMQ's own limits marked
    apply.py       declare idempotently with pika, refuse unsafe changes, prune
    runtime.py     the engine contract over pika (RabbitBackend): runner run --backend

docs/rabbitmq.md has the mapping table.
"""
