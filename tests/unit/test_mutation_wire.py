"""The wire module's small validators (participants/sdk/wire.py), pinned down at their
boundaries for ./run mutation; the signatures themselves are tested in test_wire_signatures.py."""

from __future__ import annotations

import time

import pytest

from participants.sdk import wire


@pytest.mark.parametrize(
    ("gid", "valid"),
    [
        ("g", True),
        ("9-a.b_c:d", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("", False),
        (".", False),
        ("-g", False),
        ("g/1", False),
        ("g 1", False),
        ("g\n", False),
    ],
)
def test_valid_gid(gid: str, valid: bool) -> None:
    assert wire.valid_gid(gid) is valid


@pytest.mark.parametrize(
    ("raw", "branch"),
    [
        *[("0", 0), ("7", 7), ("07", 7), ("63", 63), ("64", None), ("99", None), ("100", None)],
        *[("", None), ("-1", None), ("+1", None), ("1.0", None), ("٣", None), (" 1", None)],
    ],
)
def test_parse_branch(raw: str, branch: int | None) -> None:
    assert wire.parse_branch(raw) == branch


@pytest.mark.parametrize(
    ("nonce", "valid"),
    [
        *[("a" * 16, True), ("A-_9" * 16, True), ("a" * 15, False), ("a" * 65, False)],
        *[("a" * 15 + "=", False), ("a" * 15 + "é", False), (b"a" * 16, False), (None, False)],
    ],
)
def test_valid_nonce(nonce: object, valid: bool) -> None:
    assert wire.valid_nonce(nonce) is valid


def test_new_nonces_are_valid_and_fresh() -> None:
    nonces = {wire.new_nonce() for _ in range(20)}
    assert len(nonces) == 20
    assert all(wire.valid_nonce(n) and len(n) == 24 for n in nonces)


def test_signed_headers_use_the_clock_in_whole_seconds() -> None:
    before = int(time.time())
    headers = wire.signed_headers(b"s", "/p", "n", "g", 1, "prepare", b"{}")
    after = int(time.time())
    stamp = headers[wire.H_TIMESTAMP]
    assert set(headers) == {wire.H_TIMESTAMP, wire.H_SIGNATURE}
    assert before <= int(stamp) <= after and stamp == str(int(stamp))
    assert headers[wire.H_SIGNATURE] == wire.sign(
        b"s", "POST", "/p", "n", "g", 1, "prepare", stamp, b"{}"
    )
    # Checked against the clock too when no time is given.
    lowered = {k.lower(): v for k, v in headers.items()}
    assert wire.check_call([b"s"], lowered, "/p", "n", "g", 1, "prepare", b"{}") is None
    assert wire.signed_headers(b"s", "/p", "n", "g", 1, "op", b"", now=12.9)[wire.H_TIMESTAMP] == (
        "12"
    )


def test_check_call_says_why() -> None:
    headers = {
        k.lower(): v
        for k, v in wire.signed_headers(b"s", "/p", "n", "g", 0, "op", b"", now=1000).items()
    }

    def why(**changed: str) -> str | None:
        return wire.check_call(
            [b"s"], {**headers, **changed}, "/p", "n", "g", 0, "op", b"", now=1000
        )

    assert why() is None
    no_signature = {k: v for k, v in headers.items() if k != wire.H_SIGNATURE.lower()}
    assert wire.check_call([b"s"], no_signature, "/p", "n", "g", 0, "op", b"", now=1000) == (
        f"header {wire.H_SIGNATURE} is missing: calls must be signed"
    )
    assert why(**{wire.H_SIGNATURE.lower(): "0" * 63}) == (
        f"header {wire.H_SIGNATURE} must be 64 lower-case hex digits"
    )
    no_timestamp = {k: v for k, v in headers.items() if k != wire.H_TIMESTAMP.lower()}
    assert wire.check_call([b"s"], no_timestamp, "/p", "n", "g", 0, "op", b"", now=1000) == (
        f"header {wire.H_TIMESTAMP} must be the Unix time in whole seconds"
    )
    late = wire.check_call([b"s"], headers, "/p", "n", "g", 0, "op", b"", window_s=10, now=1011)
    assert late == f"header {wire.H_TIMESTAMP} is 11 s away from this server's clock"
    assert wire.check_call([b"s"], headers, "/p", "n", "g", 0, "op", b"", window_s=10, now=990) is (
        None
    )
    assert why(**{wire.H_SIGNATURE.lower(): "0" * 64}) == (
        f"header {wire.H_SIGNATURE} does not verify: wrong secret, or signed for another "
        "participant, path, branch or body"
    )


def test_check_reply_refuses_a_malformed_signature_before_comparing() -> None:
    signature = wire.sign_reply(b"s", b"{}")
    assert wire.check_reply([b"s"], b"{}", signature)
    assert not wire.check_reply([b"s"], b"{}", signature.upper())
    assert not wire.check_reply([b"s"], b"{}", signature[:-1])
    assert not wire.check_reply([], b"{}", signature)
    assert wire.check_reply([b"t", b"s"], b"{}", signature)


@pytest.mark.parametrize(("gid", "branch"), [("g", 0), ("g-1", 63), ("a" * 128, 5)])
def test_xid(gid: str, branch: int) -> None:
    assert wire.xid(gid, branch) == f"txn:{gid}:{branch}"


@pytest.mark.parametrize(("gid", "branch"), [("g", -1), ("g", 64), ("", 0), ("-g", 0)])
def test_xid_refuses_what_would_not_name_a_branch(gid: str, branch: int) -> None:
    with pytest.raises(ValueError, match="invalid gid/branch"):
        wire.xid(gid, branch)
