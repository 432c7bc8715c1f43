"""Pure-core and in-memory-shell tests (no broker)."""
