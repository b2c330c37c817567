"""The CURVE parser under hypothesis: the broker's side of the handshake and the sealed frames
after it, fed valid streams in any split, and mangled or random bytes. Whatever arrives, the
parser either does its job or raises ZmtpError (closing that connection): never another
exception, never a message that did not come sealed from the peer."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from workbench.zmtp import ZmtpError, properties
from workbench.zmtp.curve import (
    CLIENT_GREETING, SERVER_GREETING, ClientHandshake, ClientKeys, CurveInbound, KeyPair,
    ServerHandshake,
)

from .test_transport import feed_in_pieces

SERVER = KeyPair.generate()
CLIENT = KeyPair.generate()
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def broker_side(max_message: int = 1 << 20) -> CurveInbound:
    return CurveInbound(max_message, ServerHandshake(SERVER, properties(Socket_Type=b"ROUTER")))


def client_side() -> CurveInbound:
    metadata = properties(Socket_Type=b"DEALER", Identity=b"fuzzed")
    return CurveInbound(1 << 30, ClientHandshake(ClientKeys(SERVER.public, CLIENT), metadata))


def handshake() -> tuple[CurveInbound, CurveInbound, bytes]:
    """A client and a broker side after a complete handshake -> (client, broker, the bytes
    the client sent, for replaying them to a fresh broker side)."""
    client, broker = client_side(), broker_side()
    sent = CLIENT_GREETING + client.handshake.hello()
    broker.feed(sent)
    client.feed(SERVER_GREETING + b"".join(broker.replies))
    broker.replies.clear()
    initiate = b"".join(client.replies)
    client.replies.clear()
    broker.feed(initiate)
    client.feed(b"".join(broker.replies))
    broker.replies.clear()
    assert broker.identity == b"fuzzed" and client.boxes is not None
    return client, broker, sent + initiate


frames = st.lists(st.one_of(st.binary(max_size=300),
                            st.sampled_from([b"", b"x" * 255, b"y" * 256, b"z" * 70_000])),
                  min_size=1, max_size=4)


@FUZZ
@given(messages=st.lists(frames, min_size=1, max_size=4), data=st.data())
def test_sealed_messages_survive_any_split(messages, data):
    client, broker, _ = handshake()
    stream = b"".join(b"".join(bytes(b) for b in client.seal(message)) for message in messages)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8))
    feed_in_pieces(broker, stream, cuts)
    assert [[bytes(f) for f in got] for got, _ in broker.messages] == messages


@FUZZ
@given(position=st.integers(0, 1 << 16), flip=st.integers(1, 255), data=st.data())
def test_a_mangled_handshake_is_refused_with_zmtp_error(position, flip, data):
    _, _, sent = handshake()
    position %= len(sent)
    mangled = bytearray(sent)
    mangled[position] ^= flip
    cuts = data.draw(st.lists(st.integers(0, len(sent)), max_size=4))
    broker = broker_side()
    try:
        feed_in_pieces(broker, bytes(mangled), cuts)
    except ZmtpError:
        return
    # A flip the handshake tolerates (the greeting's filler, HELLO's padding, a frame's MORE
    # bit) completes it with the client's own metadata; a flip of a length leaves it waiting.
    assert broker.boxes is None or broker.identity == b"fuzzed"


@FUZZ
@given(junk=st.binary(min_size=1, max_size=2000), data=st.data())
@example(junk=b"\x04\xc8" + b"\x05HELLO" + bytes(194), data=None)
def test_random_bytes_after_the_greeting_raise_only_zmtp_error(junk, data):
    broker = broker_side()
    cuts = data.draw(st.lists(st.integers(0, len(junk)), max_size=4)) if data else []
    try:
        feed_in_pieces(broker, CLIENT_GREETING + junk, [c + 64 for c in cuts])
    except ZmtpError:
        pass
    assert broker.boxes is None and not broker.messages


@FUZZ
@given(position=st.integers(0, 1 << 16), flip=st.integers(1, 255))
def test_a_mangled_message_is_refused_never_delivered(position, flip):
    client, broker, _ = handshake()
    sealed = bytearray(b"".join(bytes(b) for b in client.seal([b"precious", b"v" * 500])))
    sealed[position % len(sealed)] ^= flip
    try:
        broker.feed(bytes(sealed))
    except ZmtpError:
        return
    # Flips outside the boxes (the frame flags, whose MORE means nothing under CURVE) pass or
    # leave the parser waiting; whatever is delivered is what the client sealed.
    assert all(frames == [b"precious", b"v" * 500] for frames, _ in broker.messages)


def test_a_replayed_handshake_does_not_open_a_second_session():
    _, _, sent = handshake()
    broker = broker_side()
    with pytest.raises(ZmtpError):  # the cookie was made with another broker side's key
        broker.feed(sent)
    assert broker.identity is None


def test_a_message_replayed_or_reordered_is_refused():
    client, broker, _ = handshake()
    first = b"".join(client.seal([b"one"]))
    second = b"".join(client.seal([b"two"]))
    broker.feed(second)
    with pytest.raises(ZmtpError, match="did not grow") as raised:
        broker.feed(first)  # older nonce than the last one seen
    assert raised.value.counter == "curve_nonce"
    assert [frames for frames, _ in broker.messages] == [[b"two"]]
