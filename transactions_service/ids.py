"""Identifiers and clocks used by the ledger."""

from __future__ import annotations

import os
import time
import uuid
from datetime import datetime, timezone


def uuid7() -> uuid.UUID:
    """A time-ordered UUID (RFC 9562, version 7).

    New rows land at the right-hand edge of the primary-key index instead of
    at random pages, which keeps inserts cheap as the table grows.
    """
    unix_ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (unix_ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76  # version
    value |= ((rand >> 68) & 0xFFF) << 64
    value |= 0b10 << 62  # variant
    value |= rand & 0x3FFF_FFFF_FFFF_FFFF
    return uuid.UUID(int=value)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def rfc3339(moment: datetime) -> str:
    """UTC timestamp with microseconds and a ``Z`` suffix."""
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
