"""The kcat shim's one rewrite: an ApiVersions v3 response without tagged fields.

The frame below is the shape Tansu answers (its tail as captured from Tansu 0.6.0):
every top-level tagged field written, defaults included. librdkafka 2.0.2 skips a
tagged field one byte short, so after the 8-byte ``FinalizedFeaturesEpoch`` Debian's
kcat read a length of 216172782113783806 bytes and dropped the connection.
"""

from __future__ import annotations

import struct

from tests.support.kcat_shim import untagged_api_versions

CORRELATION_AND_ERROR = struct.pack(">ih", 7, 0)
ENTRIES = [(0, 0, 11), (18, 0, 4)]  # Produce 0..11, ApiVersions 0..4
THROTTLE = struct.pack(">i", 0)
TANSU_TAGS = bytes.fromhex("04" + "000101" + "0108ffffffffffffffff" + "020101" + "030100")


def _entries(entry_tags: bytes) -> bytes:
    body = bytes([len(ENTRIES) + 1])  # compact array: length + 1
    for key, low, high in ENTRIES:
        body += struct.pack(">hhh", key, low, high) + entry_tags
    return body


def test_api_versions_tagged_fields_are_dropped_and_nothing_else_changes() -> None:
    tansu = CORRELATION_AND_ERROR + _entries(b"\x00") + THROTTLE + TANSU_TAGS
    assert untagged_api_versions(tansu) == (
        CORRELATION_AND_ERROR + _entries(b"\x00") + THROTTLE + b"\x00"
    )


def test_api_versions_entry_tags_are_dropped_too() -> None:
    """A tagged field on an entry (none today) would trip the same librdkafka bug."""
    tagged = CORRELATION_AND_ERROR + _entries(bytes.fromhex("01" + "0002abcd")) + THROTTLE
    assert untagged_api_versions(tagged + b"\x00") == (
        CORRELATION_AND_ERROR + _entries(b"\x00") + THROTTLE + b"\x00"
    )
