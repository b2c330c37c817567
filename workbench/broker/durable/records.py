"""The binary form of change and snapshot records in the log: one record's body, without the
framing (``log`` frames each body with its length and checksum).

A body is a tag byte, the record's fixed-size fields (little-endian), then its variable ones:
a string as its UTF-8 length (2 bytes) and bytes, an optional byte string the same way with
length 0xFFFF for None. ``Stored`` ends with its frames: their count (4 bytes), each one's length
(8 bytes), then their bytes one after the other, raw. A shared-memory value is written with
the data of its file in place of the file's reference (the file goes when the value does, or
with the broker); only a file that could not be read leaves the reference, flagged.

The records of one call into the state that changed more than one thing (a store that
acknowledges a fetch, a STORE_MANY, a FETCH_MANY's takes) are written as one ``Group`` record:
its body is the tag 15, the count of records (4 bytes), then each record's body after its
length (8 bytes). The log's framing checks the group whole, so a broker killed while copying
it into the log leaves all of the call's changes or none: a replay never applies half a call
(an acknowledgement without the store that carried it).

Deadlines (``Expires``) are written on the wall clock, the one clock that outlives the broker:
``clock_offset`` is what to add to the state's clock to get the wall clock's time.
"""

from __future__ import annotations

import struct
from typing import Callable, Sequence

from ...shm import without_flag
from ..state.changes import (
    Declared, Expires, QueueDeclared, Removed, Returned, Stored, Taken, VariableDeleted,
    WorkspaceClaimed, WorkspaceCreated, WorkspaceDeleted, stored,
)
from ..state.snapshot import NextSequence, NextVariableId, ValueReturns
from ..state.variables import MODES

_NONE = 0xFFFF
_LENGTH = struct.Struct("<H")
_WORKSPACE = struct.Struct("<BB")  # tag, persistent
_DECLARED = struct.Struct("<BQBB")  # tag, var id, mode, fixed
_VAR = struct.Struct("<BQ")  # tag, var id
_VALUE = struct.Struct("<BQQ")  # tag, var id, seq
_RETURNED = struct.Struct("<BQQB")  # tag, var id, seq, holder ended
_RETURNS = struct.Struct("<BQQI")  # tag, var id, seq, returns
_EXPIRES = struct.Struct("<BQBd")  # tag, var id, has a deadline, deadline (wall clock)
_STORED = struct.Struct("<BQQQBI")  # tag, var id, seq, size, kept a reference, frames
_ONE_FRAME = struct.Struct("<BI")  # the last two of those
_FRAME_LENGTH = struct.Struct("<Q")
#: Bodies up to this size are copied out of the file's mapping whole before they are read.
_SMALL_BODY = 64 << 10
_TAG = struct.Struct("<B")
_GROUP = struct.Struct("<BI")  # tag, records
_GROUP_TAG = 15

#: Tags, never renumbered: a log written by one version is read by the next.
TAGS = {WorkspaceCreated: 1, WorkspaceClaimed: 2, WorkspaceDeleted: 3, Declared: 4,
        VariableDeleted: 5, Stored: 6, Taken: 7, Returned: 8, Removed: 9, Expires: 10,
        QueueDeclared: 11, NextVariableId: 12, NextSequence: 13, ValueReturns: 14}
_MODE_CODES = {mode: code for code, mode in enumerate(MODES)}

#: A shared-memory value's file, read: its frames (or None: it could not be read).
ReadShared = Callable[[bytes], "Sequence | None"]


class RecordError(ValueError):
    """A body that is not a record this version writes."""


class Group(tuple):
    """The records of one call, replayed together (a tuple of them)."""

    __slots__ = ()


def nbytes(buffer) -> int:
    """The bytes in a buffer (``len`` counts items, which may be larger)."""
    return len(buffer) if type(buffer) is bytes else memoryview(buffer).nbytes


def _text(value: str) -> bytes:
    data = value.encode()
    return _LENGTH.pack(len(data)) + data


def _optional(value: bytes | None) -> bytes:
    return _LENGTH.pack(_NONE) if value is None else _LENGTH.pack(len(value)) + value


def encode_entry(entry: tuple, clock_offset: float, read_shared: ReadShared) -> list:
    """An entry of ``Effects.log`` -> the buffers of its record's body, without building the
    record where it can (a store, a take, a removal: the records of nearly every request;
    ``EntryRecorder`` has a faster way for most stores)."""
    kind = entry[0]
    if kind is stored:
        var, value = entry[1], entry[2]
        return _encode_stored(var.workspace.name, var.name, var.id, value.seq, value.frames,
                              value.size, value.shared, read_shared)
    if kind is Taken or kind is Removed:
        return [_VALUE.pack(TAGS[kind], entry[1], entry[2])]
    return encode(kind(*entry[1:]), clock_offset, read_shared)


class EntryRecorder:
    """Hands the change entries of calls into one state (``Effects.log``) to a log writer as
    record bodies: ``record`` is what a data directory calls for every call into the state,
    the hottest path of logging, so it encodes a store of one small frame itself, straight to
    the writer's ``append_body``, and the rest through ``encode_entry`` to its ``append``.

    ``writer``: a ``log.LogWriter`` (or anything with its ``append`` and ``append_body``).
    ``clock_offset``: see ``encode``; whoever moves the clocks apart sets it."""

    def __init__(self, writer, read_shared: ReadShared, clock_offset: float = 0.0) -> None:
        self.writer = writer
        self.read_shared = read_shared
        self.clock_offset = clock_offset
        self.heads: StoreHeads = {}  # they hold the variable ids of this state's history

    def record(self, entries: list) -> None:
        """Append the records of ``entries``, the changes of one call (read at once: they
        are the state's until its next call): one record, or a ``Group`` of them."""
        if len(entries) == 1:
            entry = entries[0]
            body = self._small_store(entry)
            if body is not None:  # nearly every call
                self.writer.append_body(body)
            else:
                self.writer.append(encode_entry(entry, self.clock_offset, self.read_shared))
            return
        group = [_GROUP.pack(_GROUP_TAG, len(entries))]
        for entry in entries:
            body = self._small_store(entry)
            buffers = [body] if body is not None else encode_entry(
                entry, self.clock_offset, self.read_shared)
            group.append(_FRAME_LENGTH.pack(sum(map(nbytes, buffers))))
            group += buffers
        self.writer.append(group)

    def _small_store(self, entry: tuple) -> bytes | None:
        """The body of a store of one small frame, by the variable's cached head; else
        None."""
        if entry[0] is not stored:
            return None
        value = entry[2]
        frames = value.frames
        if len(frames) != 1 or value.shared is not None:
            return None
        frame = frames[0]
        if type(frame) is not bytes or len(frame) >= _SMALL_BODY:
            return None
        var = entry[1]
        pack, prefix, middle = self.heads.get(var.id) or _one_frame_head(var, self.heads)
        return pack(prefix, value.seq, value.size, middle, len(frame)) + frame


def encode(record, clock_offset: float, read_shared: ReadShared) -> list:
    """``record`` -> the buffers of its body (a value's big frames are not copied)."""
    kind = type(record)
    tag = TAGS[kind]
    if kind is Stored:
        return _encode_stored(*record, read_shared)
    if kind is Taken or kind is Removed:
        return [_VALUE.pack(tag, record.var_id, record.seq)]
    if kind is Declared:
        return [_DECLARED.pack(tag, record.var_id, _MODE_CODES[record.mode], record.fixed)
                + _text(record.ws) + _text(record.var)]
    if kind is Returned:
        return [_RETURNED.pack(tag, record.var_id, record.seq, record.holder_ended)]
    if kind is Expires:
        deadline = record.deadline
        return [_EXPIRES.pack(tag, record.var_id, deadline is not None,
                              0.0 if deadline is None else deadline + clock_offset)]
    if kind is WorkspaceCreated or kind is WorkspaceClaimed:
        return [_WORKSPACE.pack(tag, record.persistent) + _optional(record.owner)
                + _text(record.ws) + _text(record.owner_label)]
    if kind is VariableDeleted:
        return [_VAR.pack(tag, record.var_id) + _text(record.ws) + _text(record.var)]
    if kind is WorkspaceDeleted or kind is QueueDeclared:
        return [_TAG.pack(tag) + _text(record[0])]
    if kind is NextVariableId:
        return [_VAR.pack(tag, record.var_id)]
    if kind is NextSequence:
        return [_VALUE.pack(tag, record.var_id, record.seq)]
    return [_RETURNS.pack(tag, record.var_id, record.seq, record.returns)]  # ValueReturns


def _encode_stored(ws: str, var: str, var_id: int, seq: int, frames: list, size: int,
                   shared: bytes | None, read_shared: ReadShared) -> list:
    kept = False
    if shared is not None:
        data = read_shared(shared)
        if data is None:  # removed behind the broker's back: the value is as good as gone
            kept = True
        else:
            frames = [without_flag(frames[0]), *data]
    head = _STORED.pack(6, var_id, seq, size, kept, len(frames)) + _name(ws) + _name(var)
    if len(frames) == 1 and type(frames[0]) is bytes:  # most values: one small buffer
        frame = frames[0]
        return [head + _FRAME_LENGTH.pack(len(frame)) + frame]
    sizes = [nbytes(frame) for frame in frames]
    buffers = []
    small = [head, *map(_FRAME_LENGTH.pack, sizes)]
    for frame, size in zip(frames, sizes):  # small frames are copied, big ones are not
        if size < _SMALL_BODY:
            small.append(frame)
        else:
            buffers += (b"".join(small), frame)
            small = []
    if small:
        buffers.append(b"".join(small))
    return buffers


#: What a ``Stored`` record of a one-frame value repeats for every value of its variable: the
#: Struct of the whole head, the tag and the variable's id as written, and the fields between
#: the value's size and its frame's length (kept, the frame count, the two names); by the
#: variable's id, which one state never gives twice (so an entry cannot go stale: keep one
#: ``StoreHeads`` per state). At most ``_MOST_HEADS`` variables are remembered at a time.
StoreHeads = dict[int, tuple[Callable, bytes, bytes]]
_MOST_HEADS = 1 << 16
#: Those Structs by the length of the middle fields (a few lengths serve every name).
_one_frame_structs: dict[int, struct.Struct] = {}


def _one_frame_head(var, heads: StoreHeads) -> tuple[Callable, bytes, bytes]:
    middle = _ONE_FRAME.pack(False, 1) + _name(var.workspace.name) + _name(var.name)
    fmt = _one_frame_structs.get(len(middle))
    if fmt is None:  # tag and id, seq, size, the middle, the frame's length
        fmt = _one_frame_structs[len(middle)] = struct.Struct(f"<9sQQ{len(middle)}sQ")
    head = (fmt.pack, _VAR.pack(6, var.id), middle)
    if len(heads) >= _MOST_HEADS:
        heads.clear()
    heads[var.id] = head
    return head


#: Names as written, by name: a few names come with nearly every record.
_names: dict[str, bytes] = {}
_MOST_NAMES = 4096


def _name(name: str) -> bytes:
    data = _names.get(name)
    if data is None:
        if len(_names) >= _MOST_NAMES:
            _names.clear()
        data = _names[name] = _text(name)
    return data


class _Reader:
    """Fields read one after the other from a body."""

    __slots__ = ("body", "offset")

    def __init__(self, body: memoryview, offset: int) -> None:
        self.body = body
        self.offset = offset

    def unpack(self, fmt: struct.Struct) -> tuple:
        fields = fmt.unpack_from(self.body, self.offset)
        self.offset += fmt.size
        return fields

    def bytes(self, n: int) -> bytes:
        end = self.offset + n
        if end > len(self.body):
            raise RecordError("a field runs past the end of the record")
        data = bytes(self.body[self.offset:end])
        self.offset = end
        return data

    def text(self) -> str:
        (n,) = self.unpack(_LENGTH)
        return self.bytes(n).decode()

    def optional(self) -> bytes | None:
        (n,) = self.unpack(_LENGTH)
        return None if n == _NONE else self.bytes(n)


def decode(body: memoryview, clock_offset: float):
    """A body -> its record, or the ``Group`` of records of one call; the frames of a value
    are copies (the body may be a file's mapping). RecordError for anything else."""
    try:
        if body[0] == 6:  # most records by far, and the largest: read without a _Reader
            return _decode_stored(body if len(body) > _SMALL_BODY else body.tobytes())
        if body[0] == _GROUP_TAG:
            return _decode_group(body, clock_offset)
        return _decode(body, clock_offset)
    except (struct.error, UnicodeDecodeError, IndexError) as exc:
        raise RecordError(f"malformed record: {exc}") from None


def _decode_group(body: memoryview, clock_offset: float) -> Group:
    _, count = _GROUP.unpack_from(body)
    offset, records = _GROUP.size, []
    for _ in range(count):
        (length,) = _FRAME_LENGTH.unpack_from(body, offset)
        offset += _FRAME_LENGTH.size
        end = offset + length
        if end > len(body):
            raise RecordError("a record of a group runs past the group's end")
        part = body[offset:end]
        try:
            if part[0] == _GROUP_TAG:
                raise RecordError("a group inside a group")
            records.append(decode(part, clock_offset))
        finally:
            part.release()  # (a view of the file's mapping, which closes after the replay)
        offset = end
    if offset != len(body):
        raise RecordError(f"{len(body) - offset} bytes after a group's records")
    return Group(records)


def _decode_stored(body) -> Stored:
    """A ``Stored`` record from its body: ``bytes`` (a copy, small) or a ``memoryview``."""
    _, var_id, seq, size, kept, count = _STORED.unpack_from(body)
    offset = _STORED.size
    (n,) = _LENGTH.unpack_from(body, offset)
    offset += 2
    ws = str(body[offset:offset + n], "utf-8")
    offset += n
    (n,) = _LENGTH.unpack_from(body, offset)
    offset += 2
    var = str(body[offset:offset + n], "utf-8")
    offset += n
    lengths = struct.unpack_from(f"<{count}Q", body, offset)
    offset += 8 * count
    frames = []
    copy = type(body) is not bytes
    for n in lengths:
        end = offset + n
        frames.append(bytes(body[offset:end]) if copy else body[offset:end])
        offset = end
    if offset != len(body):
        raise RecordError(f"a value's frames end at byte {offset} of a {len(body)}-byte record")
    return Stored(ws, var, var_id, seq, frames, size, frames[1] if kept else None)


def _decode(body: memoryview, clock_offset: float):
    tag = body[0]
    if tag in (7, 9, 13):
        _, var_id, seq = _VALUE.unpack(body)
        return {7: Taken, 9: Removed, 13: NextSequence}[tag](var_id, seq)
    if tag == 4:
        _, var_id, mode, fixed = _DECLARED.unpack_from(body)
        read = _Reader(body, _DECLARED.size)
        record = Declared(read.text(), read.text(), var_id, MODES[mode], bool(fixed))
    elif tag == 8:
        _, var_id, seq, holder_ended = _RETURNED.unpack(body)
        return Returned(var_id, seq, bool(holder_ended))
    elif tag == 10:
        _, var_id, has, deadline = _EXPIRES.unpack(body)
        return Expires(var_id, deadline - clock_offset if has else None)
    elif tag in (1, 2):
        _, persistent = _WORKSPACE.unpack_from(body)
        read = _Reader(body, _WORKSPACE.size)
        owner = read.optional()
        kind = WorkspaceCreated if tag == 1 else WorkspaceClaimed
        record = kind(read.text(), bool(persistent), owner, read.text())
        if tag == 2 and owner is None:
            raise RecordError("a claim without an owner")
    elif tag == 5:
        _, var_id = _VAR.unpack_from(body)
        read = _Reader(body, _VAR.size)
        record = VariableDeleted(read.text(), read.text(), var_id)
    elif tag in (3, 11):
        read = _Reader(body, 1)
        record = (WorkspaceDeleted if tag == 3 else QueueDeclared)(read.text())
    elif tag == 12:
        return NextVariableId(_VAR.unpack(body)[1])
    elif tag == 14:
        _, var_id, seq, returns = _RETURNS.unpack(body)
        return ValueReturns(var_id, seq, returns)
    else:
        raise RecordError(f"unknown record tag {tag}")
    _end(read)
    return record


def _end(read: _Reader) -> None:
    if read.offset != len(read.body):
        raise RecordError(f"{len(read.body) - read.offset} bytes after the record's fields")
