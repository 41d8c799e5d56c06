"""Tokens and frame parsing (pure functions)."""

import json

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imflow.core import tokens
from imflow.core.errors import ImflowError
from imflow.gateway import protocol

SECRET = "s" * 64


def test_token_round_trip_and_expiry() -> None:
    assert tokens.verify(SECRET, tokens.issue(SECRET, "alice", 60)) == "alice"
    with pytest.raises(ImflowError) as expired:
        tokens.verify(SECRET, tokens.issue(SECRET, "alice", 60, now_s=1_000))
    assert expired.value.code == "token_expired"


@pytest.mark.parametrize(
    "token",
    [
        jwt.encode({"sub": "alice", "exp": 4_000_000_000}, SECRET, algorithm="HS384"),
        jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"),  # no expiry
        jwt.encode({"sub": "bad user!", "exp": 4_000_000_000}, SECRET, algorithm="HS256"),
        jwt.encode({"sub": "alice", "exp": 4_000_000_000}, None, algorithm="none"),
        42,
        "x" * 5000,
    ],
    ids=["hs384", "no-exp", "bad-sub", "alg-none", "not-a-string", "huge"],
)
def test_tokens_refused(token) -> None:
    with pytest.raises(ImflowError) as refused:
        tokens.verify(SECRET, token)
    assert refused.value.code == "token_invalid"


def test_issue_refuses_invalid_user() -> None:
    with pytest.raises(ValueError):
        tokens.issue(SECRET, "no spaces", 60)


def test_parse_send_needs_exactly_one_target() -> None:
    frame = protocol.parse('{"op": "send", "cmid": "1", "to": "bob", "body": {"text": "hi"}, "ref": 7}')
    assert isinstance(frame, protocol.Send) and frame.ref == 7
    with pytest.raises(ImflowError) as both:
        protocol.parse('{"op": "send", "cmid": "1", "to": "bob", "conversation": "p:a:bob", "body": {"text": "hi"}}')
    assert both.value.code == "bad_frame" and "exactly one" in both.value.message


def test_ref_of_only_echoes_safe_refs() -> None:
    assert protocol.ref_of('{"ref": "abc", "op": 1}') == "abc"
    assert protocol.ref_of('{"ref": true}') is None
    assert protocol.ref_of('{"ref": "' + "x" * 100 + '"}') is None
    assert protocol.ref_of("[1]") is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
frame_like = st.fixed_dictionaries(
    {"op": st.sampled_from([*protocol.OPS, "x.y", "", "nope"])},
    optional={"ref": json_values, "cmid": json_values, "to": json_values, "body": json_values, "mids": json_values,
              "conversation": json_values, "seq": json_values, "limit": json_values, "token": json_values},
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])  # no clock in the verdict
@given(st.one_of(json_values, frame_like).map(lambda v: json.dumps(v).encode()) | st.binary(max_size=200))
def test_no_input_escapes_parse_as_anything_but_a_coded_error(data: bytes) -> None:
    """Whatever bytes a client sends, parsing gives a frame or an ImflowError with a known code."""
    try:
        frame = protocol.parse(data, frozenset({"x.y"}))
    except ImflowError as error:
        assert error.code in {"bad_json", "bad_frame", "unknown_op"}
        assert error.message
    else:
        assert isinstance(frame, protocol.ClientFrame)


def test_plugin_error_codes_keep_their_namespace() -> None:
    from imflow.core.plugin_types import plugin_error_code

    assert plugin_error_code("red_packet.expired") == "red_packet.expired"
    for bad in ("forbidden", "not_found", "Red.Packet", "shout.", ""):
        assert plugin_error_code(bad) == "plugin.error"
