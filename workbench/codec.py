"""Python values <-> value frames: the one place values are serialized.

``bytes`` and ``str`` travel raw, so any client in any language can read them (NetWorkSpaces'
"direct strings"); so do JSON values stored through the HTTP gateway (``from_json``), which
Python readers decode with ``json``. Everything else is pickled with protocol 5; buffers of at least
``OUT_OF_BAND_THRESHOLD`` bytes (numpy arrays, bytearrays) leave the pickle stream and travel as
frames of their own, so a large array is never copied into a pickle, and arrives writable in the
received frame's memory. Objects plain pickle refuses (lambdas, closures, classes defined in a
notebook) fall back to cloudpickle, which carries the source lines of the code it pickles by
value (``sources``), so a traceback where that code runs shows them.

Frame layout (see ``protocol``): ``[descriptor + data, *extra]``; a large data part is *detached*
into the first extra frame instead, so it is not copied to sit behind the descriptor.

For values that go to another Python process to be used there (a worker pool's tasks),
``encode_portable`` pickles by value what plain pickle would name in ``__main__``, and
``decode_tolerant`` decodes what names classes this process lacks, with placeholders.
"""

from __future__ import annotations

import io
import json
import pickle
import zlib
from typing import Any, Callable, NamedTuple, Sequence

from . import shm, sources
from .config import OUT_OF_BAND_THRESHOLD
from .errors import NwsPicklingException, NwsUnpicklingException
from .protocol import DESCRIPTOR, DESCRIPTOR_SIZE, Kind, ProtocolError

DETACHED = 1  # descriptor flag: the data part is the first extra frame
COMPRESSED = 4  # descriptor flag: the data part is zlib-compressed (whole values only)

_pack = DESCRIPTOR.pack
_BYTES = _pack(Kind.BYTES, 0, 0)
_TEXT = _pack(Kind.TEXT, 0, 0)
_INT = _pack(Kind.INT, 0, 0)


def encode(value: Any) -> list:
    """-> value frames; items are bytes-like and may be sent without copying. An ``int``
    (not a bool) travels as its decimal digits, which the key-value service can increment."""
    cls = type(value)
    if cls is int:
        return [_INT + b"%d" % value]
    if cls is bytes:
        if len(value) < OUT_OF_BAND_THRESHOLD:
            return [_BYTES + value]
        return [_pack(Kind.BYTES, DETACHED, 1), value]
    if cls is str:
        data = value.encode("utf-8")
        if len(data) < OUT_OF_BAND_THRESHOLD:
            return [_TEXT + data]
        return [_pack(Kind.TEXT, DETACHED, 1), data]
    return _pickled(value)


def encode_portable(value: Any) -> list:
    """-> value frames another Python process can decode. Plain pickle names the functions and
    classes of ``__main__`` (a notebook's, a script's) by reference, which another process
    cannot resolve: a pickle that names ``__main__`` is made again with cloudpickle, which
    pickles them by value."""
    frames = encode(value)
    kind, flags, _ = DESCRIPTOR.unpack_from(frames[0])
    if kind == Kind.PICKLE and b"__main__" in (frames[1] if flags & DETACHED else frames[0]):
        return _pickled(value, by_value=True)
    return frames


def _pickled(value: Any, by_value: bool = False) -> list:
    buffers: list = []

    def keep_large_out_of_band(buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        if raw.nbytes < OUT_OF_BAND_THRESHOLD:
            return True  # in band: a frame of its own costs more than copying a small buffer
        buffers.append(raw)
        return False

    data, kind = None, Kind.PICKLE
    if not by_value:
        try:
            data = pickle.dumps(value, protocol=5, buffer_callback=keep_large_out_of_band)
        except (pickle.PicklingError, AttributeError, TypeError):
            buffers.clear()
    if data is None:
        try:
            data = sources.dumps(value, buffer_callback=keep_large_out_of_band)
        except Exception as exc:
            raise NwsPicklingException(
                f"cannot serialize {type(value).__name__} value: {exc}") from exc
        kind = Kind.CLOUDPICKLE
    return _framed(kind, data, buffers)


def _framed(kind: int, data: bytes, buffers: list | tuple = ()) -> list:
    """A payload behind its descriptor, or detached into a frame of its own when large (so
    it is not copied), then its out-of-band buffers."""
    if len(data) < OUT_OF_BAND_THRESHOLD:
        return [_pack(kind, 0, len(buffers)) + data, *buffers]
    return [_pack(kind, DETACHED, len(buffers) + 1), data, *buffers]


def from_json(text: bytes) -> list:
    """JSON text (UTF-8; what an HTTP client sent) -> value frames that every Python reader
    decodes into the object ``json.loads`` makes of it, and that any reader can read as
    text."""
    return _framed(Kind.JSON, text)


def from_pickle(data: bytes, kind: int = Kind.PICKLE) -> list:
    """A pickle made elsewhere (a face that pickles everything with a protocol of its own
    choosing, a worker pool's function spec made with cloudpickle) -> value frames that every
    reader unpickles."""
    return _framed(kind, data)


class Payload(NamedTuple):
    """A value as one payload of its kind, for a face that frames values itself."""

    kind: int
    data: bytes

    @property
    def compressible(self) -> bool:
        """Whether compressing it keeps it readable by the broker: not a decimal integer,
        which the key-value service increments."""
        return self.kind != Kind.INT


def payload(value: Any, dumps: Callable[[Any], bytes]) -> Payload:
    """A value as one payload, for a face with a pickler of its own (memcache's): ``bytes``,
    ``str`` and ``int`` as ``encode`` makes them, anything else through ``dumps``. The exact
    type decides, so a bool (an int subclass) is pickled and stays a bool."""
    cls = type(value)
    if cls is bytes:
        return Payload(Kind.BYTES, value)
    if cls is str:
        return Payload(Kind.TEXT, value.encode("utf-8"))
    if cls is int:
        return Payload(Kind.INT, b"%d" % value)
    return Payload(Kind.PICKLE, dumps(value))


def inline(value: Payload, compressed: bool = False) -> list:
    """A payload behind its descriptor in one frame, however large (the broker appends to and
    increments such values only); ``compressed``: the face compressed the data itself."""
    return [_pack(value.kind, COMPRESSED if compressed else 0, 0) + value.data]


def plain_frame(value: Any) -> bytes | None:
    """A ``bytes``, ``str`` or ``int`` value (exactly those types) as the one frame ``inline``
    makes of its ``payload``, in one step for a face's usual request; None for other values."""
    cls = type(value)
    if cls is bytes:
        return _BYTES + value
    if cls is str:
        return _TEXT + value.encode("utf-8")
    if cls is int:
        return _INT + b"%d" % value
    return None


def compress(frames: list, over: int) -> list:
    """The value compressed with zlib if its payload is longer than ``over`` bytes and
    compressing makes it smaller (as python-memcached's ``min_compress_len``)."""
    kind, flags, nextra = DESCRIPTOR.unpack_from(frames[0])
    if flags & DETACHED and nextra == 1:
        data = frames[1]
    elif not flags and not nextra:
        data = memoryview(frames[0])[DESCRIPTOR_SIZE:]
    else:
        return frames  # out-of-band buffers: compressing means copying them all; keep as is
    if len(data) <= over:
        return frames
    packed = zlib.compress(data)
    if len(packed) >= len(data):
        return frames
    return [_pack(kind, COMPRESSED, 0) + packed]


def kind_of(frames: Sequence) -> int:
    """The kind of a value's payload (``protocol.Kind``), from its descriptor."""
    return DESCRIPTOR.unpack_from(frames[0])[0]


def split(frames: Sequence, decompress: Callable[[bytes], bytes] | None = None
          ) -> tuple[int, Any, Sequence]:
    """value frames -> (kind, data, extra frames); data is a zero-copy view. A value held in
    shared memory is mapped here; a compressed one is decompressed with ``decompress`` (a
    face's own decompressor, given bytes) or zlib."""
    head = memoryview(frames[0])
    if head.nbytes < DESCRIPTOR_SIZE:
        raise ProtocolError("value frame without a descriptor")
    kind, flags, nextra = DESCRIPTOR.unpack_from(head)
    extra = frames[1:]
    if flags & shm.SHARED:
        if len(extra) != 1:
            raise ProtocolError("a shared-memory value has one reference frame")
        extra = shm.attach(extra[0])
    if nextra != len(extra):
        raise ProtocolError(f"value announces {nextra} extra frames, {len(extra)} present")
    if flags & DETACHED:
        if not nextra:
            raise ProtocolError("detached value without its data frame")
        return kind, extra[0], extra[1:]
    if flags & COMPRESSED:
        if decompress is not None:
            return kind, decompress(bytes(head[DESCRIPTOR_SIZE:])), extra
        return kind, zlib.decompress(head[DESCRIPTOR_SIZE:]), extra
    return kind, head[DESCRIPTOR_SIZE:], extra


def decode(frames: Sequence, decompress: Callable[[bytes], bytes] | None = None,
           unpickle: Callable[[Any, Sequence], Any] | None = None) -> Any:
    """value frames -> the value. Frames may be bytes or zmq.Frame objects. A face with
    options of its own passes ``decompress`` (see ``split``) and ``unpickle(data, buffers)``,
    which decodes pickles instead of ``pickle.loads`` and whose errors pass as they are."""
    if decompress is None and unpickle is None and len(frames) == 1 and type(frames[0]) is bytes:
        return decode_at(frames[0], 0, ())  # a small value: the fast path
    try:
        kind, data, extra = split(frames, decompress)
        pickled = kind == Kind.PICKLE or kind == Kind.CLOUDPICKLE
        if unpickle is None or not pickled:
            if kind == Kind.BYTES:
                return _join(data, extra)
            if kind == Kind.TEXT:
                return _join(data, extra).decode("utf-8")
            if kind == Kind.INT:
                return int(_join(data, extra))
            if kind == Kind.JSON:
                return json.loads(_join(data, extra))
            if pickled:
                return pickle.loads(data, buffers=extra)
    except Exception as exc:
        raise NwsUnpicklingException(
            f"cannot decode value: {type(exc).__name__}: {exc}", _safe_raw(frames)) from exc
    if pickled:
        return unpickle(data, extra)
    raise NwsUnpicklingException(f"unknown value kind {kind}", _safe_raw(frames))


class Decoded(NamedTuple):
    value: Any
    missing: list[str]  # what could not be imported here (placeholders stand in for them)


def decode_tolerant(frames: Sequence) -> Decoded:
    """Decode a value; if that fails because a class or function does not exist in this
    process, decode it again with placeholders (``Undecodable``) standing in for what is
    missing, so that at least what the value was (and what was missing) is known."""
    try:
        return Decoded(decode(frames), [])
    except Exception:
        kind, data, buffers = split(frames)
        if kind not in (Kind.PICKLE, Kind.CLOUDPICKLE):
            raise
    unpickler = _Tolerant(io.BytesIO(bytes(data)), buffers=buffers)  # the failing path only
    return Decoded(unpickler.load(), unpickler.missing)


class _Tolerant(pickle.Unpickler):
    def __init__(self, file: Any, buffers: Sequence) -> None:
        super().__init__(file, buffers=buffers)
        self.missing: list[str] = []

    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except Exception as exc:
            self.missing.append(f"{module}.{name} ({type(exc).__name__}: {exc})")
            return type(name, (Undecodable,), {"__module__": module})


class Undecodable:
    """Stands in for an object whose class does not exist in the process decoding it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __call__(self, *args: Any, **kwargs: Any) -> Undecodable:
        return type(self)(*args)

    def __repr__(self) -> str:
        return f"<undecodable {type(self).__module__}.{type(self).__name__}>"


#: The kinds as plain ints: comparing with an int is cheaper than looking up an enum member.
_KIND_BYTES, _KIND_TEXT, _KIND_INT, _KIND_PICKLE = (
    int(Kind.BYTES), int(Kind.TEXT), int(Kind.INT), int(Kind.PICKLE))


NOT_PLAIN = object()  # what ``plain_at`` answers for a value it does not decode


def plain_at(buffer: bytes, offset: int) -> Any:
    """The value whose frame starts at ``offset`` of ``buffer`` (a reply head) if it holds
    bytes, text or a decimal integer, whole and uncompressed: a value every face decodes alike
    (no unpickler, no decompressor of its own). ``NOT_PLAIN`` for anything else, and for text
    or digits that do not decode (``decode`` reports those, with the raw bytes)."""
    start = offset + DESCRIPTOR_SIZE
    if len(buffer) < start or buffer[offset + 1] or buffer[offset + 2] or buffer[offset + 3]:
        return NOT_PLAIN  # flags, extra frames
    kind = buffer[offset]
    if kind == _KIND_BYTES:
        return buffer[start:]
    try:
        if kind == _KIND_TEXT:
            return buffer[start:].decode("utf-8")
        if kind == _KIND_INT:
            return int(buffer[start:])
    except ValueError:  # (UnicodeDecodeError is one)
        pass
    return NOT_PLAIN


def decode_at(buffer: bytes, offset: int, extra: Sequence) -> Any:
    """The value whose first frame starts at ``offset`` of ``buffer`` (a reply head), followed
    by ``extra`` frames. Small values, the common case, decode without building a frame list."""
    if not extra:
        value = plain_at(buffer, offset)
        if value is not NOT_PLAIN:
            return value
        if (len(buffer) >= offset + DESCRIPTOR_SIZE and buffer[offset] == _KIND_PICKLE
                and not (buffer[offset + 1] or buffer[offset + 2] or buffer[offset + 3])):
            try:
                return pickle.loads(memoryview(buffer)[offset + DESCRIPTOR_SIZE:])
            except Exception:
                pass  # decode() below reports it, with the raw bytes
    return decode([memoryview(buffer)[offset:], *extra])


def raw_bytes(frames: Sequence) -> bytes:
    """The payload of a value as bytes: what files and raw readers receive."""
    _, data, extra = split(frames)
    return _join(data, extra)


def decode_raw(frames: Sequence) -> str | bytes:
    """What a reader that never unpickles gets: bytes and text as stored, anything else (a
    pickle, a decimal integer) as its payload's bytes."""
    if kind_of(frames) in (Kind.BYTES, Kind.TEXT):
        return decode(frames)
    return raw_bytes(frames)


def _join(data: Any, extra: Sequence) -> bytes:
    if not extra:
        return bytes(data)
    return b"".join([bytes(data), *(bytes(frame) for frame in extra)])


def _safe_raw(frames: Sequence) -> bytes:
    try:
        return raw_bytes(frames)
    except Exception:
        return b"".join(bytes(frame) for frame in frames)
