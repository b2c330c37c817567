"""The key-value operations of the broker state: memcached's verbs on workspace variables.

An entry is a SINGLE variable of a workspace, so ``listVars``, the magics and the dashboards show
key-value entries like any other variable, and a NetWorkSpaces ``find`` waiting on a key wakes
when a key-value client sets it. Each operation runs whole inside one request: nothing else
happens between its test and its write, which is what makes add, cas and incr atomic. The one
exception proves the rule: a compare-and-swap against a value held in a shared-memory file waits
for the server to compare the file (``Comparison``), and the server does that before it hands
the state anything else.

Expiry: an entry past its deadline is treated as absent by every operation that touches it (see
``expiry``).
"""

from __future__ import annotations

import struct
from typing import Callable, NamedTuple

from ... import accel
from ...protocol import (
    DESCRIPTOR_SIZE, HEADER_SIZE, KV_ITEM, KV_RECORD, PROTOCOL_VERSION, SEPARATOR, VERSION_SHIFT,
    VALUE_REPLY, Kind, Op, ProtocolError, Status, parse_descriptor, reply_head,
)
from ...shm import parse_reference, without_flag
from .effects import Outbox
from .expiry import Deadlines
from .changes import Removed, stored
from .handoffs import HandOffs, ManyValues
from .memory import Memory
from .registry import Registry
from .requests import OpError, arity
from .sessions import Session
from .variables import SINGLE, Value, Variable
from .workspaces import Workspace

#: memcached refuses to incr a value longer than a 64-bit number's 20 digits.
_MAX_DIGITS = 20
_WRAP = 1 << 64
_VERSION = struct.Struct("<Q")
_STORE_HOWS = frozenset((b"set", b"add", b"replace", b"append", b"prepend", b"cas", b"swap"))
#: Value kinds whose payload is the text of a number when it is one (see protocol.Kind).
_NUMERIC_KINDS = (Kind.BYTES, Kind.TEXT, Kind.INT)
_INT = Kind.INT
#: The OK reply to a store: the header and the entry's new version in one pack.
_STORED_REPLY = struct.Struct("<BBHIQ")
#: How clients spell "no time to live".
_NO_TTL = (b"0.0", b"0")
_MISSING = int(Status.MISSING)
_pack_value_reply = VALUE_REPLY.pack


def version_of(var: Variable, value: Value) -> int:
    return var.id << VERSION_SHIFT | value.seq


class PendingSwap(NamedTuple):
    """A compare-and-swap waiting for the server to compare a shared-memory file."""

    session: Session
    peer: bytes
    request_id: int
    var: Variable
    old: Value
    new: list  # the new value's frames
    ttl: float


class KeyValueService:
    def __init__(self, registry: Registry, handoffs: HandOffs, memory: Memory,
                 deadlines: Deadlines, outbox: Outbox, counters: dict[str, int]) -> None:
        self.registry = registry
        self.handoffs = handoffs
        self.memory = memory
        self.deadlines = deadlines
        self.outbox = outbox
        self.counters = counters
        self.deliveries = handoffs.deliveries
        # The outbox's lists, at hand for the fused paths (``store_plain``, ``get_plain``).
        self.messages = outbox.messages
        self.log = outbox.log
        self.pending: PendingSwap | None = None

    def handlers(self) -> dict[int, Callable]:
        return {
            Op.KV_STORE: self.store, Op.KV_GET: self.get, Op.KV_INCR: self.incr,
            Op.KV_DELETE: self.delete, Op.KV_TOUCH: self.touch, Op.KV_FLUSH: self.flush,
            Op.KV_GET_MULTI: self.get_multi, Op.KV_SET_MULTI: self.set_multi,
            Op.KV_DELETE_MULTI: self.delete_multi, Op.KV_COMPARE_SWAP: self.compare_swap,
        }

    def plain_handlers(self) -> dict[int, Callable]:
        """The fused handlers of the usual requests, for flag-less requests (see
        ``store_plain``): the compiled ones where this install has them (``accel.PlainKV``,
        the same two, which leave a little more to the general handlers)."""
        if accel.PlainKV is not None:
            fused = accel.PlainKV(self, Variable, Value, SINGLE, Removed, stored, _MISSING)
            return {Op.KV_STORE: fused.store, Op.KV_GET: fused.get}
        return {Op.KV_STORE: self.store_plain, Op.KV_GET: self.get_plain}

    # ---------------------------------------------------------------- the usual cases, fused

    def store_plain(self, session: Session, peer: bytes, request_id: int, head: bytes,
                    frames: list) -> bool:
        """A KV_STORE in one call, when it is the usual one: ``set`` of a small plain value
        (one frame, no shared-memory file) over a live SINGLE entry of an existing workspace,
        which nobody waits on or watches. Makes exactly the changes, records, counts and reply
        of ``store`` -> True; for anything else -> False, having changed nothing (``store``
        does it). The same errors as ``store`` are raised where it would raise them first."""
        if frames:
            return False
        args = head[HEADER_SIZE:].split(SEPARATOR, 5)
        if len(args) != 6 or args[2] != b"set":
            return False
        first = args[5]
        size = len(first)
        if size < DESCRIPTOR_SIZE or first[1] or first[2] or first[3]:  # flags, extra frames
            return False
        memory = self.memory
        if memory.used + size > memory.limit:  # ``admit`` refuses it
            return False
        registry = self.registry
        valid = registry.valid_names
        ws = registry.spaces.by_name.get(valid.get(args[0])
                                         or registry.name(args[0], "workspace"))
        if ws is None:  # ``_space`` creates it
            return False
        var = ws.variables.get(valid.get(args[1]) or registry.name(args[1], "key"))
        if (var is None or var.mode != SINGLE or not var.mode_fixed or var.fetchers
                or var.finders or self.deliveries.watched
                or (var.expires is not None and var.expires <= self.deadlines.clock.now)):
            return False
        ttl = 0 if args[3] in _NO_TTL else self._ttl(args[3])
        self.counters["kv_sets"] += 1
        values = var.values
        for old in values:  # ``_write``: the old value goes
            if old.shared is None and var.live:  # ``memory.discard``, written out
                memory.used -= old.size
                self.log.append((Removed, var.id, old.seq))
            else:
                memory.discard(old, var)
        values.clear()
        # ``HandOffs.store`` with nobody waiting or watching: stamped, counted, recorded, kept.
        value = Value([first], size, var.next_seq)
        var.next_seq += 1
        memory.used += size
        self.log.append((stored, var, value))
        values.append(value)
        if ttl or var.expires is not None:
            self.deadlines.set(var, ttl)
        self.messages.append((peer, [_STORED_REPLY.pack(
            PROTOCOL_VERSION, 0, 0, request_id, var.id << VERSION_SHIFT | value.seq)]))
        return True

    def get_plain(self, session: Session, peer: bytes, request_id: int, head: bytes,
                  frames: list) -> bool:
        """A KV_GET in one call, when it is the usual one: an entry of an existing workspace
        that is absent, or holds a value of one frame without a shared-memory file. Counts and
        replies as ``get`` does -> True; for anything else -> False, having changed nothing
        (``get`` does it)."""
        if frames:
            return False
        args = head[HEADER_SIZE:].split(SEPARATOR)
        if len(args) != 2:
            return False
        registry = self.registry
        valid = registry.valid_names
        ws = registry.spaces.by_name.get(valid.get(args[0])
                                         or registry.name(args[0], "workspace"))
        if ws is None:
            return False
        var = ws.variables.get(valid.get(args[1]) or registry.name(args[1], "key"))
        if var is not None:
            if var.mode != SINGLE or (var.expires is not None
                                      and var.expires <= self.deadlines.clock.now):
                return False
            if var.values:
                value = var.values[0]
                if value.shared is not None or len(value.frames) != 1:
                    return False
                self.counters["kv_gets"] += 1
                self.messages.append((peer, [_pack_value_reply(  # ``value_reply_head``
                    PROTOCOL_VERSION, 0, 0, request_id, var.id, value.seq) + value.frames[0]]))
                return True
        counters = self.counters
        counters["kv_gets"] += 1
        counters["kv_misses"] += 1
        self.messages.append((peer, [reply_head(_MISSING, request_id)]))
        return True

    # ---------------------------------------------------------------- lookup

    def _space(self, arg: bytes) -> Workspace:
        """The entries' workspace, created (persistent, unowned) on first use."""
        name = self.registry.name(arg, "workspace")
        ws = self.registry.spaces.by_name.get(name)
        if ws is None:
            ws = self.registry.create_workspace(name, persistent=True)
        return ws

    def _entry(self, ws: Workspace, name: str) -> Variable | None:
        """The live variable called ``name`` (expired: removed, None); only SINGLE ones."""
        var = self.deadlines.unexpired(ws, name)
        if var is None:
            return None
        if var.mode != SINGLE:
            if var.mode_fixed:
                raise OpError(Status.BAD_REQUEST,
                              f"{name!r} is a {var.mode} variable of workspace {ws.name!r}, not "
                              "a key-value entry: use another key, or delete the variable")
            self.registry.set_mode(var, SINGLE)  # only made by a waiting reader: may become one
        return var

    def _value(self, var: Variable | None) -> Value | None:
        return var.values[0] if var is not None and var.values else None

    # ---------------------------------------------------------------- writes

    def _write(self, ws: Workspace, name: str, var: Variable | None, value: Value) -> Variable:
        """Make ``value`` the entry's only value; a waiting fetcher or finder gets it first."""
        if var is None:
            var = self.registry.new_variable(ws, name, SINGLE)
        else:
            if not var.mode_fixed:
                self.registry.fix(var)
            for old in var.values:
                self.memory.discard(old, var)
            var.values.clear()
        self.handoffs.store(var, value)
        return var

    def _ttl(self, arg: bytes) -> float:
        try:
            ttl = float(arg)
        except ValueError:
            raise ProtocolError(f"ttl {arg!r} is not a number") from None
        if ttl != ttl or ttl in (float("inf"), float("-inf")):
            raise ProtocolError(f"ttl {arg!r} is not a finite number")
        return ttl

    def store(self, session: Session, peer: bytes, request_id: int, args: list,
              frames: list) -> None:
        arity(args, 5)
        ws = self._space(args[0])
        name = self.registry.name(args[1], "key")
        how, ttl = args[2], self._ttl(args[3])
        if how not in _STORE_HOWS:
            raise ProtocolError(f"unknown store condition {how!r}")
        value = self.memory.admit(session, frames)
        var = self._entry(ws, name)
        old = self._value(var)
        self.counters["kv_sets"] += 1
        if how == b"add":
            if old is not None:
                return self._refuse(peer, request_id, value, Status.EXISTS)
        elif how == b"cas":
            if old is None:
                return self._refuse(peer, request_id, value, Status.MISSING)
            if version_of(var, old) != int(args[4] or b"0"):
                return self._refuse(peer, request_id, value, Status.EXISTS)
        elif how != b"set" and old is None:  # replace, append, prepend, swap
            return self._refuse(peer, request_id, value, Status.MISSING)
        if how == b"append" or how == b"prepend":
            value = self._concatenate(old, value, how == b"append")
            ttl = None  # memcached keeps the entry's expiry and flags
        if how == b"swap":
            self.handoffs.reply_value(peer, request_id, var, old, session)  # before it goes
        var = self._write(ws, name, var, value)
        self.deadlines.set(var, ttl)
        if how != b"swap":
            self.outbox.reply(peer, request_id, Status.OK,
                              _VERSION.pack(version_of(var, value)) if value.seq else b"")

    def _refuse(self, peer: bytes, request_id: int, value: Value, status: int) -> None:
        self.memory.discard_unstored(value)
        self.outbox.reply(peer, request_id, status)

    def _concatenate(self, old: Value, new: Value, append: bool) -> Value:
        """One value of old's kind whose payload is old's then new's (or new's then old's).
        Only whole raw values join: bytes and text, and digits to a number."""
        self.memory.discard_unstored(new)
        firsts = [bytes(old.frames[0]), bytes(new.frames[0])]
        (old_kind, *old_rest), (new_kind, *new_rest) = (parse_descriptor(f) for f in firsts)
        # A shared-memory value has its data in extra frames: never small and raw.
        if (old_rest != [0, 0] or new_rest != [0, 0] or old_kind not in _NUMERIC_KINDS
                or new_kind not in _NUMERIC_KINDS or (old_kind == _INT) != (new_kind == _INT)):
            raise OpError(Status.BAD_VALUE,
                          "append and prepend join small raw values only: bytes or text to "
                          "bytes or text, an int to an int (not pickled, compressed or "
                          "64 KiB and more)")
        old_data, new_data = firsts[0][DESCRIPTOR_SIZE:], firsts[1][DESCRIPTOR_SIZE:]
        data = firsts[0][:DESCRIPTOR_SIZE] + (old_data + new_data if append
                                              else new_data + old_data)
        return Value([data], len(data))

    def incr(self, session: Session, peer: bytes, request_id: int, args: list,
             frames: list) -> None:
        arity(args, 4)
        ws = self._space(args[0])
        name = self.registry.name(args[1], "key")
        if args[2] not in (b"incr", b"decr") or not args[3].isdigit():
            raise OpError(Status.BAD_VALUE,
                          f"{args[2].decode(errors='replace')} needs a delta of decimal digits, "
                          f"got {args[3].decode(errors='replace')!r}")
        var = self._entry(ws, name)
        old = self._value(var)
        if old is None:
            return self.outbox.reply(peer, request_id, Status.MISSING)
        kind, flags, nextra = parse_descriptor(old.frames[0])
        digits = bytes(old.frames[0][DESCRIPTOR_SIZE:])
        if (kind not in _NUMERIC_KINDS or flags or nextra or not digits.isdigit()
                or len(digits) > _MAX_DIGITS):
            raise OpError(Status.BAD_VALUE,
                          f"cannot {args[2].decode()} {name!r}: its value is not a decimal "
                          "number (store it as an int or as a string of digits)")
        delta = int(args[3])
        number = int(digits) + delta if args[2] == b"incr" else max(0, int(digits) - delta)
        number %= _WRAP  # incr wraps at 2**64, as memcached's
        data = b"%d" % number
        value = Value([bytes(old.frames[0][:DESCRIPTOR_SIZE]) + data], DESCRIPTOR_SIZE + len(data))
        self._write(ws, name, var, value)
        self.outbox.reply(peer, request_id, Status.OK, data)

    # ---------------------------------------------------------------- reads and removals

    def get(self, session: Session, peer: bytes, request_id: int, args: list,
            frames: list) -> None:
        arity(args, 2)
        ws = self._space(args[0])
        var = self._entry(ws, self.registry.name(args[1], "key"))
        value = self._value(var)
        self.counters["kv_gets"] += 1
        if value is None:
            self.counters["kv_misses"] += 1
            return self.outbox.reply(peer, request_id, Status.MISSING)
        self.handoffs.reply_value(peer, request_id, var, value, session)

    def delete(self, session: Session, peer: bytes, request_id: int, args: list,
               frames: list) -> None:
        arity(args, 2)
        ws = self._space(args[0])
        found = self._remove(ws, self.registry.name(args[1], "key"))
        self.outbox.reply(peer, request_id, Status.OK if found else Status.MISSING)

    def _remove(self, ws: Workspace, name: str) -> bool:
        var = self._entry(ws, name)
        if var is None or not var.values:
            return False
        for value in var.values:
            self.memory.discard(value, var)
        var.values.clear()
        self.deadlines.clear(var)
        self.deadlines.forget(var)
        return True

    def touch(self, session: Session, peer: bytes, request_id: int, args: list,
              frames: list) -> None:
        arity(args, 3)
        ws = self._space(args[0])
        var = self._entry(ws, self.registry.name(args[1], "key"))
        if self._value(var) is None:
            return self.outbox.reply(peer, request_id, Status.MISSING)
        self.deadlines.set(var, self._ttl(args[2]))
        self.outbox.reply(peer, request_id)

    def flush(self, session: Session, peer: bytes, request_id: int, args: list,
              frames: list) -> None:
        arity(args, 1)
        ws = self._space(args[0])
        for var in list(ws.variables.values()):
            self.registry.delete_variable(var, Status.VARIABLE_DELETED,
                                          f"variable {var.name!r} was flushed")
        self.outbox.reply(peer, request_id)

    # ---------------------------------------------------------------- several keys at once

    def get_multi(self, session: Session, peer: bytes, request_id: int, args: list,
                  frames: list) -> None:
        if not args:
            raise ProtocolError("get_multi without a workspace")
        ws = self._space(args[0])
        body = []
        reply = ManyValues(session)
        for index, arg in enumerate(args[1:]):
            var = self._entry(ws, self.registry.name(arg, "key"))
            value = self._value(var)
            if value is None:
                continue
            first = reply.add(value, leased=False)
            body.append(KV_RECORD.pack(index, version_of(var, value), len(first)))
            body.append(bytes(first))
        self.counters["kv_gets"] += len(args) - 1
        self.counters["kv_misses"] += len(args) - 1 - len(body) // 2
        reply.send(self.outbox, peer, request_id, body)

    def set_multi(self, session: Session, peer: bytes, request_id: int, args: list,
                  frames: list) -> None:
        arity(args, 2)
        ws = self._space(args[0])
        ttl = self._ttl(args[1])
        items = _set_multi_items(frames[0], frames[1:])  # all parsed before anything is stored
        failed = []
        for index, (key, value_frames) in enumerate(items):
            try:
                name = self.registry.name(key, "key")
                first = value_frames[0]
                if len(value_frames) == 1 and not first[1]:  # small and plain: the usual case
                    value = Value(value_frames, len(first))
                    if self.memory.used + value.size > self.memory.limit:
                        raise OpError(Status.NO_MEMORY, "memory cap")
                else:
                    value = self.memory.admit(session, value_frames)
                var = self._write(ws, name, self._entry(ws, name), value)
                if ttl:
                    self.deadlines.set(var, ttl)
                else:
                    self.deadlines.clear(var)
            except OpError:
                failed.append(b"%d" % index)
        self.counters["kv_sets"] += len(items)
        self.outbox.reply(peer, request_id, Status.OK, b",".join(failed))

    def delete_multi(self, session: Session, peer: bytes, request_id: int, args: list,
                     frames: list) -> None:
        if not args:
            raise ProtocolError("delete_multi without a workspace")
        ws = self._space(args[0])
        deleted = sum(self._remove(ws, self.registry.name(arg, "key")) for arg in args[1:])
        self.outbox.reply(peer, request_id, Status.OK, b"%d" % deleted)

    # ---------------------------------------------------------------- compare and swap

    def compare_swap(self, session: Session, peer: bytes, request_id: int, args: list,
                     frames: list) -> None:
        arity(args, 3)
        ws = self._space(args[0])
        name = self.registry.name(args[1], "key")
        ttl = self._ttl(args[2])
        split = 1 + parse_descriptor(frames[0])[2]
        if split >= len(frames):
            raise ProtocolError("compare_and_swap needs a new value and a comparand")
        comparand = frames[split:]
        if 1 + parse_descriptor(comparand[0])[2] != len(comparand):
            raise ProtocolError("compare_and_swap comparand frames do not match its descriptor")
        var = self._entry(ws, name)
        old = self._value(var)
        if old is None:
            return self.outbox.reply(peer, request_id, Status.MISSING)
        self.handoffs.reply_value(peer, request_id, var, old, session)
        swap = PendingSwap(session, peer, request_id, var, old, frames[:split], ttl)
        if old.shared is None:
            if _same_payload(old.frames, comparand):
                self._swap(swap)
        elif _same_shape(old, comparand):  # the file's bytes decide: the server compares them
            self.pending = swap
            self.outbox.compare(old.shared, comparand[1:])

    def compared(self, equal: bool) -> None:
        """The server compared the file of the pending compare-and-swap's old value."""
        swap, self.pending = self.pending, None
        if swap is not None and equal and self._value(swap.var) is swap.old:
            self._swap(swap)

    def _swap(self, swap: PendingSwap) -> None:
        value = self.memory.admit(swap.session, swap.new)
        var = self._write(swap.var.workspace, swap.var.name, swap.var, value)
        self.deadlines.set(var, swap.ttl)


def _same_shape(old: Value, comparand: list) -> bool:
    """Whether a shared-memory value may equal ``comparand``: the same first frame and as many
    extra frames of the same sizes (only the file's bytes are left to compare)."""
    _, sizes = parse_reference(old.shared)
    return (len(comparand) == 1 + len(sizes)
            and bytes(comparand[0]) == without_flag(old.frames[0])
            and all(len(frame) == size for frame, size in zip(comparand[1:], sizes)))


def _same_payload(frames: list, other: list) -> bool:
    if len(frames) != len(other):
        return False
    return all(bytes(a) == bytes(b) for a, b in zip(frames, other))


def _set_multi_items(blob: bytes, extra: list) -> list[tuple[bytes, list]]:
    """A KV_SET_MULTI request's records -> [(key, value frames)], checked to be whole."""
    items = []
    unpack_item, item_size = KV_ITEM.unpack_from, KV_ITEM.size
    offset, end, next_extra = 0, len(blob), 0
    while offset < end:
        if offset + item_size > end:
            raise ProtocolError("set_multi records are truncated")
        key_length, first_length = unpack_item(blob, offset)
        key_end = offset + item_size + key_length
        first_end = key_end + first_length
        if first_end > end or first_length < DESCRIPTOR_SIZE:
            raise ProtocolError("set_multi records are truncated")
        first = blob[key_end:first_end]
        nextra = first[2] | first[3] << 8  # the descriptor's count of extra frames
        if nextra:
            value_frames = [first, *extra[next_extra:next_extra + nextra]]
            next_extra += nextra
            if len(value_frames) != nextra + 1:
                raise ProtocolError("set_multi records announce more frames than arrived")
        else:
            value_frames = [first]
        items.append((blob[offset + item_size:key_end], value_frames))
        offset = first_end
    if next_extra != len(extra):
        raise ProtocolError("set_multi has more value frames than its records announce")
    return items
