"""Kafka plumbing: client options, topic layout and the embedded test/demo broker."""
