"""Page cursors: opaque, bound to their scope and prefix, and refused clearly when not ours."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from state_tasks.core.batch import decode_cursor, encode_cursor
from state_tasks.core.errors import ValidationError

#: The signing key is public (it is in the package), so a forger can sign any body.
PUBLIC_KEY = b"state_tasks.page-cursor.v1"


def signed(body: bytes) -> str:
    mac = hmac.new(PUBLIC_KEY, body, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(mac + body).decode().rstrip("=")


def test_a_cursor_continues_after_the_name_it_was_made_for() -> None:
    cursor = encode_cursor("list", "users", "u", "u17")
    assert decode_cursor("list", "users", "u", cursor) == "u17"


@pytest.mark.parametrize(
    "body",
    [
        b"[1]",
        b"{}",
        b"not json",
        b'{"b": 1, "a": "k"}',
        b'{"b": "x", "a": 2}',
        b"\xff",
        # a position no name can hold: a lone surrogate (on Redis it was an ADAPTER_ERROR)
        b'{"b": "x", "a": "k\\ud800"}',
    ],
)
def test_a_signed_cursor_of_the_wrong_shape_is_a_validation_error(body: bytes) -> None:
    with pytest.raises(ValidationError, match="malformed"):
        decode_cursor("list", "users", "", signed(body))


def test_the_signing_key_is_the_one_the_package_uses() -> None:
    # (so the test above really forges a valid signature)
    assert signed(b'{"b": "x", "a": "k"}') != encode_cursor("list", "s", "", "k")
    with pytest.raises(ValidationError, match="another scope"):
        decode_cursor("list", "users", "", signed(b'{"b": "x", "a": "k"}'))
