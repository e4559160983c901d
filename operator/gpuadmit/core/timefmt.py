"""RFC 3339 timestamps <-> seconds since the epoch, the way Kubernetes writes them.

The core counts time in epoch seconds (floats); Kubernetes objects carry
RFC 3339 strings such as ``2026-11-26T10:00:00Z``. Parsing caches nothing here: a
caller that reads many objects keeps ``core.workload.ParseCache``, which remembers
the timestamps a cluster dump repeats. Formatting remembers the last few seconds it wrote.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime


def _parse_text(text: str) -> float:
    moment = datetime.fromisoformat(text.strip())
    if moment.tzinfo is None:  # Kubernetes always writes UTC; a bare time is read as UTC too
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_rfc3339(value: object) -> float:
    """Epoch seconds of an RFC 3339 string (``Z`` or an offset; fractions allowed).

    Raises ``ValueError`` on anything else, including non-strings, so callers can
    name the offending field.
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected an RFC 3339 timestamp string, got {value!r}")
    try:
        return _parse_text(value)
    except ValueError:
        raise ValueError(f"not an RFC 3339 timestamp: {value!r}") from None


def parse_rfc3339_or_none(value: object) -> float | None:
    """Like ``parse_rfc3339`` but ``None`` for anything that is not a valid timestamp."""
    if not isinstance(value, str):
        return None
    try:
        return _parse_text(value)
    except ValueError:
        return None


def format_rfc3339(epoch_seconds: float) -> str:
    """``2026-11-26T10:00:00Z``: whole seconds in UTC, as Kubernetes writes ``metav1.Time``."""
    return _format_whole_second(int(epoch_seconds))


@functools.lru_cache(maxsize=64)
def _format_whole_second(seconds: int) -> str:
    """A burst writes thousands of statuses stamped with the same few seconds (three stamps each)."""
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
