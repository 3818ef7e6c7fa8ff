"""Engines served by real distributed brokers (RabbitMQ first)."""
