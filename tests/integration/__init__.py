"""Tests against a real Kafka-protocol broker (embedded Tansu unless configured)."""
