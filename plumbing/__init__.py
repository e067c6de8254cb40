"""Shared plumbing for every Orderflow process.

It knows nothing of orders: settings, AMQP topology, publish and consume with
confirms, the PostgreSQL pool and migrations, the transactional outbox and the
inbox, metrics and health endpoints, and JSON logging.
"""
