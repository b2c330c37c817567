"""Python values <-> (descriptor, payload frames): the one place values are serialized.

``bytes`` and ``str`` travel raw, so any client in any language can read them (NetWorkSpaces'
"direct strings"). Everything else is pickled with protocol 5; buffers of at least
``OUT_OF_BAND_THRESHOLD`` bytes (numpy arrays, bytearrays) leave the pickle stream and travel as
frames of their own, so a large array is never copied into a pickle. Objects plain pickle refuses
(lambdas, closures, classes defined in a notebook) fall back to cloudpickle.
"""

from __future__ import annotations

import pickle
from typing import Any, Sequence

import cloudpickle

from .config import OUT_OF_BAND_THRESHOLD
from .errors import NwsPicklingException, NwsUnpicklingException
from .protocol import Kind, descriptor, parse_descriptor

_RAW_BYTES_1 = descriptor(Kind.BYTES, 1)
_RAW_TEXT_1 = descriptor(Kind.TEXT, 1)


def encode(value: Any) -> list:
    """-> [descriptor, *payload]; payload items are bytes-like and sent without copying."""
    cls = type(value)
    if cls is bytes:
        return [_RAW_BYTES_1, value]
    if cls is str:
        return [_RAW_TEXT_1, value.encode("utf-8")]
    buffers: list = []

    def keep_large_out_of_band(buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        if raw.nbytes < OUT_OF_BAND_THRESHOLD:
            return True  # in band: a frame of its own costs more than copying a small buffer
        buffers.append(raw)
        return False

    try:
        data = pickle.dumps(value, protocol=5, buffer_callback=keep_large_out_of_band)
        kind = Kind.PICKLE
    except (pickle.PicklingError, AttributeError, TypeError):
        buffers.clear()
        try:
            data = cloudpickle.dumps(value, protocol=5, buffer_callback=keep_large_out_of_band)
        except Exception as exc:
            raise NwsPicklingException(
                f"cannot serialize {cls.__name__} value: {exc}"
            ) from exc
        kind = Kind.CLOUDPICKLE
    return [descriptor(kind, 1 + len(buffers)), data, *buffers]


def decode(frames: Sequence) -> Any:
    """[descriptor, *payload] -> the value. Payload frames may be bytes or zmq.Frame objects."""
    try:
        kind, _ = parse_descriptor(bytes(frames[0]))
        payload = frames[1:]
        if kind == Kind.BYTES:
            return _as_bytes(payload)
        if kind == Kind.TEXT:
            return _as_bytes(payload).decode("utf-8")
        if kind == Kind.INT:
            return int(_as_bytes(payload))
        if kind in (Kind.PICKLE, Kind.CLOUDPICKLE):
            return pickle.loads(payload[0], buffers=payload[1:])
    except Exception as exc:
        raise NwsUnpicklingException(
            f"cannot decode value: {type(exc).__name__}: {exc}", raw_bytes(frames)
        ) from exc
    raise NwsUnpicklingException(f"unknown value kind {kind}", raw_bytes(frames))


def raw_bytes(frames: Sequence) -> bytes:
    """The payload of [descriptor, *payload] as one bytes object (for files and iterators)."""
    return _as_bytes(frames[1:])


def _as_bytes(payload: Sequence) -> bytes:
    if len(payload) == 1:
        return bytes(payload[0])
    return b"".join(bytes(frame) for frame in payload)
