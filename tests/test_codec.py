"""Values to frames and back: raw strings and bytes, pickles with out-of-band buffers,
cloudpickle for what pickle refuses, and clear errors for what cannot travel."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from workbench.codec import decode, encode, raw_bytes
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
