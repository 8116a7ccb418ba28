"""How the console hands a value to the page: as JSON text, cut to a preview when long.

Values travel as JSON *text* (the page parses it keeping the digits of integers beyond
2**53). One over :data:`PREVIEW_MAX_CHARS` characters comes as the start of its text with
its whole size, ``truncated: true``; the page says so ("…, N bytes") and loads the whole
value when it is opened. The keys of a scope and the rows of the live feed both use this.
"""

from __future__ import annotations

import json
from typing import Any

#: A value longer than this (as compact JSON) is sent as a preview and loaded when opened.
PREVIEW_MAX_CHARS = 4096


def dump(value: Any, indent: int | None = None) -> str:
    """``value`` as JSON text (non-ASCII kept); a placeholder if it is nested too deeply."""
    try:
        return json.dumps(value, ensure_ascii=False, indent=indent)
    except RecursionError:
        return json.dumps("<nested too deeply to show>")


def size_of(text: str) -> int:
    """The size in bytes of a JSON text as UTF-8 (a lone surrogate counts its 3 bytes)."""
    return len(text.encode("utf-8", "surrogatepass"))


def view(value: Any, max_chars: int = PREVIEW_MAX_CHARS) -> dict[str, Any]:
    """``{"json", "size"}``, or for a long value ``{"preview", "size", "truncated": True}``:
    ``preview`` is the first ``max_chars`` characters of its JSON text, ``size`` the whole
    text's bytes."""
    text = dump(value)
    if len(text) <= max_chars:
        return {"json": text, "size": size_of(text)}
    return {"preview": text[:max_chars], "size": size_of(text), "truncated": True}
