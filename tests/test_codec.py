"""Values to frames and back: raw strings and bytes, pickles with out-of-band buffers,
cloudpickle for what pickle refuses, and clear errors for what cannot travel."""

from __future__ import annotations

import bz2
import pickle
import sys
import threading

import cloudpickle
import numpy as np
import pytest

from workbench import codec
from workbench.codec import (
    Undecodable, decode, decode_tolerant, encode, encode_portable, from_pickle, raw_bytes,
)
from workbench.config import OUT_OF_BAND_THRESHOLD
from workbench.errors import NwsPicklingException, NwsUnpicklingException
from workbench.protocol import DESCRIPTOR, Kind


def roundtrip(value):
    return decode([bytes(frame) if i == 0 else frame for i, frame in enumerate(encode(value))])


@pytest.mark.parametrize("value", [b"", b"\x00" * 10, "", "héllo", 0, -7, 2**100, 1.5, None,
                                   [1, "a", b"b"], {"k": (1, 2)}, {1, 2}])
def test_values_roundtrip(value):
    assert roundtrip(value) == value
    assert type(roundtrip(value)) is type(value)


def test_text_and_bytes_are_raw_payloads():
    frames = encode("héllo")
    assert DESCRIPTOR.unpack_from(frames[0])[0] == Kind.TEXT
    assert raw_bytes(frames) == "héllo".encode()
    assert raw_bytes(encode(b"\x01\x02")) == b"\x01\x02"


def test_large_bytes_are_detached_not_copied():
    data = b"x" * (OUT_OF_BAND_THRESHOLD * 2)
    frames = encode(data)
    assert len(frames) == 2 and frames[1] is data
    assert roundtrip(data) == data


def test_large_arrays_travel_out_of_band_and_small_ones_in_band():
    big = np.arange(100_000, dtype=np.float64)
    frames = encode(big)
    assert len(frames) == 2
    assert memoryview(frames[1]).nbytes == big.nbytes
    assert len(frames[0]) < 1000  # the pickle holds only metadata
    back = roundtrip(big)
    assert np.array_equal(back, big)
    assert len(encode(np.arange(10))) == 1


def test_closures_use_cloudpickle():
    factor = 3
    frames = encode(lambda x: x * factor)
    assert DESCRIPTOR.unpack_from(frames[0])[0] == Kind.CLOUDPICKLE
    assert decode(frames)(2) == 6


def test_unpicklable_values_raise_a_clear_error():
    with pytest.raises(NwsPicklingException, match="lock"):
        encode(threading.Lock())


def test_corrupt_values_keep_their_bytes():
    frames = encode({"a": 1})
    broken = [frames[0][:-3]]
    with pytest.raises(NwsUnpicklingException) as caught:
        decode(broken)
    assert caught.value.raw == broken[0][4:]
    with pytest.raises(NwsUnpicklingException):
        decode([b"\x09\x00\x00\x00data"])  # an unknown kind
    with pytest.raises(NwsUnpicklingException):
        decode([DESCRIPTOR.pack(Kind.BYTES, 0, 2) + b"x"])  # frames missing


# ---------------------------------------------------------------- faces that frame values


def test_a_face_s_payloads_are_what_encode_makes_and_its_pickler_for_the_rest():
    def dumps(value):
        return pickle.dumps(value, protocol=2)

    for value in (b"raw", "tëxt", 42):
        frames = codec.inline(codec.payload(value, dumps))
        assert frames == encode(value) and decode(frames) == value
        assert codec.plain_frame(value) == frames[0]  # the same frame, in one step
    for value in (True, 1.5, None, [1], bytearray(b"x")):
        assert codec.plain_frame(value) is None
    flag = codec.payload(True, dumps)  # a bool is an int subclass: pickled, stays a bool
    assert flag.kind == Kind.PICKLE and flag.data == dumps(True)
    assert decode(codec.inline(flag)) is True
    assert not codec.payload(7, dumps).compressible and codec.payload("7", dumps).compressible


def test_inline_keeps_large_payloads_in_one_frame_and_marks_compression():
    big = codec.payload(b"x" * (2 * OUT_OF_BAND_THRESHOLD), pickle.dumps)
    assert len(codec.inline(big)) == 1
    packed = big._replace(data=bz2.compress(big.data))
    frames = codec.inline(packed, compressed=True)
    assert DESCRIPTOR.unpack_from(frames[0])[1] & codec.COMPRESSED
    assert decode(frames, decompress=bz2.decompress) == big.data


def test_a_pickle_made_elsewhere_is_framed_like_encode_s():
    small, large = pickle.dumps([1, 2], protocol=4), pickle.dumps("y" * OUT_OF_BAND_THRESHOLD)
    assert codec.kind_of(codec.from_pickle(small)) == Kind.PICKLE
    assert len(codec.from_pickle(small)) == 1 and len(codec.from_pickle(large)) == 2
    assert decode(codec.from_pickle(large)) == "y" * OUT_OF_BAND_THRESHOLD


def test_a_face_s_unpickler_decodes_pickles_and_its_errors_pass_as_they_are():
    seen = []

    def unpickle(data, buffers):
        seen.append(bytes(data))
        return pickle.loads(data, buffers=buffers)

    assert decode(encode({"a": 1}), unpickle=unpickle) == {"a": 1} and seen
    assert decode(encode("text"), unpickle=unpickle) == "text" and len(seen) == 1
    broken = codec.from_pickle(b"not a pickle")
    with pytest.raises(pickle.UnpicklingError):
        decode(broken, unpickle=lambda data, buffers: pickle.loads(data))
    with pytest.raises(NwsUnpicklingException):
        decode(broken)


def test_plain_values_decode_in_place_and_the_rest_is_left_to_the_decoder():
    for value in (b"", b"raw", "tëxt", 42, -7):
        head = b"reply head" + encode(value)[0]
        assert codec.plain_at(head, 10) == value and type(codec.plain_at(head, 10)) is type(value)
        assert codec.decode_at(head, 10, []) == value
    not_plain = [
        encode({"a": 1})[0], codec.compress(encode("z" * 100), 10)[0],
        DESCRIPTOR.pack(Kind.TEXT, 0, 0) + b"\xff", DESCRIPTOR.pack(Kind.INT, 0, 0) + b"x",
        DESCRIPTOR.pack(Kind.BYTES, 0, 1) + b"x", DESCRIPTOR.pack(Kind.BYTES, 0, 0)[:3]]
    for frame in not_plain:
        assert codec.plain_at(frame, 0) is codec.NOT_PLAIN
    assert codec.decode_at(encode({"a": 1})[0], 0, []) == {"a": 1}
    with pytest.raises(NwsUnpicklingException):
        codec.decode_at(DESCRIPTOR.pack(Kind.TEXT, 0, 0) + b"\xff", 0, [])


def test_a_raw_reader_never_unpickles():
    assert codec.decode_raw(encode("tëxt")) == "tëxt"
    assert codec.decode_raw(encode(b"b")) == b"b"
    assert codec.decode_raw(encode(12)) == b"12"
    assert codec.decode_raw(encode({1})) == pickle.dumps({1}, protocol=5)


class Point:
    """Stands for a class a notebook defines: ``__main__.Point``."""

    def __init__(self, x):
        self.x = x


@pytest.fixture
def main_class(monkeypatch):
    """``Point`` as if defined in ``__main__``, where plain pickle names it by reference."""
    monkeypatch.setattr(Point, "__module__", "__main__")
    monkeypatch.setattr(sys.modules["__main__"], "Point", Point, raising=False)
    return Point


def kind(frames) -> int:
    return DESCRIPTOR.unpack_from(frames[0])[0]


def test_portable_values_take_what_main_defines_by_value(main_class):
    assert kind(encode([main_class(1)])) == Kind.PICKLE  # by reference: useless elsewhere
    frames = encode_portable([main_class(1)])
    assert kind(frames) == Kind.CLOUDPICKLE
    [back] = decode(frames)
    assert back.x == 1
    # nothing from __main__: the plain pickle stays, and so do raw kinds
    assert kind(encode_portable([1, (2, "x")])) == Kind.PICKLE
    assert encode_portable("text") == encode("text")
    big = np.arange(100_000, dtype=np.float64)
    assert len(encode_portable(big)) == 2  # out of band still


def test_a_pickle_made_elsewhere_travels_as_a_value():
    data = cloudpickle.dumps((abs, (1,), None))
    frames = from_pickle(data, Kind.CLOUDPICKLE)
    assert kind(frames) == Kind.CLOUDPICKLE and decode(frames) == (abs, (1,), None)
    large = cloudpickle.dumps(b"x" * (OUT_OF_BAND_THRESHOLD * 2))
    assert decode(from_pickle(large, Kind.PICKLE)) == b"x" * (OUT_OF_BAND_THRESHOLD * 2)


def test_decoding_with_what_is_missing_replaced(main_class, monkeypatch):
    frames = encode([main_class(5), 7])
    assert decode_tolerant(frames).missing == []
    monkeypatch.delattr(sys.modules["__main__"], "Point")  # the decoding process lacks it
    with pytest.raises(NwsUnpicklingException):
        decode(frames)
    decoded = decode_tolerant(frames)
    stand_in, seven = decoded.value
    assert seven == 7 and isinstance(stand_in, Undecodable)
    assert repr(stand_in) == "<undecodable __main__.Point>"
    assert decoded.missing and decoded.missing[0].startswith("__main__.Point (AttributeError")
