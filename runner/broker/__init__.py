"""The RabbitMQ side of the embedded engine: routing, queues, dead-lettering."""
