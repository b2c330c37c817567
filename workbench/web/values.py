"""Values between JSON and the broker's value frames, for the HTTP gateway.

Into the broker (``frames_of``): JSON that an HTTP client sends is stored so that a Python
reader fetches the object ``json.loads`` makes of it: a string as text and an integer as its
digits (what every client reads, and what the key-value service increments), anything else
(objects, arrays, floats, booleans, null) as JSON text (``codec.from_json``).

Out of the broker (``view``): a value becomes a JSON object saying what it is. Text, integers
and JSON come out as themselves, bytes as base64, and a pickle is never unpickled here: it comes
out as its type's name (read off the pickle's opcodes, which runs none of them) and its size,
plus what a babelfish says of it when one runs (``workbench.babelfish``).
"""

from __future__ import annotations

import base64
import json
import pickletools
from typing import Any, Callable, Sequence

from .. import codec, shm
from ..errors import NwsUnpicklingException
from ..protocol import DESCRIPTOR, Kind

#: Asks a babelfish about a pickled value's frames -> what it says, or None (none runs).
Translate = Callable[[list], "dict | None"]

_KIND_NAMES = {Kind.BYTES: "bytes", Kind.TEXT: "text", Kind.INT: "int", Kind.JSON: "json",
               Kind.PICKLE: "pickle", Kind.CLOUDPICKLE: "pickle"}
#: Opcodes that push a string, which STACK_GLOBAL may take as a module's or a type's name.
_STRINGS = ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE")
#: What the opcodes that push a built-in object push.
_PUSHES = {
    "NONE": "NoneType", "NEWTRUE": "bool", "NEWFALSE": "bool", "INT": "int", "BININT": "int",
    "BININT1": "int", "BININT2": "int", "LONG": "int", "LONG1": "int", "LONG4": "int",
    "FLOAT": "float", "BINFLOAT": "float", "STRING": "str", "BINSTRING": "str",
    "SHORT_BINSTRING": "str", "UNICODE": "str", "SHORT_BINUNICODE": "str", "BINUNICODE": "str",
    "BINUNICODE8": "str", "BINBYTES": "bytes", "SHORT_BINBYTES": "bytes", "BINBYTES8": "bytes",
    "BYTEARRAY8": "bytearray", "NEXT_BUFFER": "buffer", "EMPTY_DICT": "dict",
    "EMPTY_LIST": "list", "EMPTY_TUPLE": "tuple", "EMPTY_SET": "set",
}
#: Opcodes that pop everything down to the last MARK and push one object of a type.
_FROM_MARK = {"TUPLE": "tuple", "LIST": "list", "DICT": "dict", "FROZENSET": "frozenset"}
#: Opcodes that change the object below them (or nothing), popping this many items (-1: down to
#: the last MARK).
_CHANGES = {"APPEND": 1, "APPENDS": -1, "SETITEM": 2, "SETITEMS": -1, "ADDITEMS": -1,
            "BUILD": 1, "POP": 1, "POP_MARK": -1, "READONLY_BUFFER": 0,
            "MEMOIZE": 0, "PUT": 0, "BINPUT": 0, "LONG_BINPUT": 0, "PROTO": 0, "FRAME": 0}
#: Functions that pickles call to rebuild a type's objects, and that type.
_RECONSTRUCTORS = {"numpy._core.numeric._frombuffer": "numpy.ndarray",
                   "numpy.core.numeric._frombuffer": "numpy.ndarray",
                   "numpy._core.multiarray._reconstruct": "numpy.ndarray",
                   "numpy.core.multiarray._reconstruct": "numpy.ndarray",
                   "numpy._core.multiarray.scalar": "numpy scalar",
                   "numpy.core.multiarray.scalar": "numpy scalar"}
#: Beyond this many opcodes a pickle's type is read off what holds the rest (a long list):
#: following them all would cost a listing of fifty variables seconds.
_MOST_OPCODES = 10_000
_MARK = object()


def frames_of(value: Any) -> list:
    """A value parsed from JSON -> its value frames (see the module's docstring)."""
    if type(value) is str or type(value) is int:
        return codec.encode(value)
    return codec.from_json(json.dumps(value, ensure_ascii=False,
                                      separators=(",", ":")).encode("utf-8"))


def view(frames: Sequence, translate: Translate | None = None) -> dict:
    """Value frames -> the JSON object that shows the value (see the module's docstring).
    ``translate`` asks a babelfish about a pickle."""
    try:
        kind = DESCRIPTOR.unpack_from(frames[0])[0]
        name = _KIND_NAMES.get(kind, "unknown")
        if name == "pickle":  # only a pickle's parts are looked at here: the rest is decoded
            kind, data, extra = codec.split(frames)
    except Exception as exc:  # noqa: BLE001 - a value this version cannot split is shown so
        return {"kind": "unknown", "error": str(exc)}
    if name == "pickle":
        size = memoryview(data).nbytes + sum(memoryview(frame).nbytes for frame in extra)
        shown = {"kind": name, "type": pickled_type(data), "size": size}
        said = translate(list(frames)) if translate is not None else None
        if said:
            shown.update({key: value for key, value in said.items() if key != "kind"})
        return shown
    if name == "unknown":
        return {"kind": name, "error": f"a value of kind {kind}, which this gateway does not "
                                       "know: is the client newer than the gateway?"}
    try:
        value = codec.decode(frames)
    except NwsUnpicklingException as exc:
        return {"kind": name, "error": str(exc)}
    if name == "bytes":
        return {"kind": name, "value": base64.b64encode(value).decode("ascii"),
                "encoding": "base64", "size": len(value)}
    return {"kind": name, "value": value}


def slow_to_show(frames: Sequence, translate: Translate | None, most: int) -> bool:
    """Whether showing the value may take a while, so not on the event loop: a pickle that a
    babelfish would be asked about, a value over ``most`` bytes (its base64 and JSON), one in
    shared memory (read from its file) or compressed (inflated first)."""
    if len(frames) > 1 or len(frames[0]) > most:  # detached parts are large ones
        return True
    kind, flags, _ = DESCRIPTOR.unpack_from(frames[0]) if len(frames[0]) >= DESCRIPTOR.size \
        else (0, 0, 0)
    return bool(flags & (shm.SHARED | codec.COMPRESSED)) or (
        translate is not None and _KIND_NAMES.get(kind) == "pickle")


def pickled_type(data: Any) -> str:
    """The qualified name of the type of the object a pickle makes, worked out by following
    its opcodes on a stack of type names, running none of them ("object" when it cannot
    tell: a reconstructing function it does not know, a pickle too long to follow)."""
    stack: list = []
    memo: dict = {}
    try:
        for count, (opcode, argument, _) in enumerate(pickletools.genops(bytes(data))):
            if count > _MOST_OPCODES:  # what is at the bottom will hold the rest
                return _name_of(stack[0]) if stack and stack[0] is not _MARK else "object"
            name = opcode.name
            if name == "STOP":
                return _name_of(stack[-1]) if stack and stack[-1] is not _MARK else "object"
            if name in _PUSHES:
                stack.append(_PUSHES[name] if name not in _STRINGS else ("str", argument))
            elif name == "MARK":
                stack.append(_MARK)
            elif name in _FROM_MARK:
                _pop_to_mark(stack)
                stack.append(_FROM_MARK[name])
            elif name.startswith("TUPLE"):  # TUPLE1, TUPLE2, TUPLE3
                del stack[len(stack) - int(name[-1]):]
                stack.append("tuple")
            elif name == "GLOBAL":
                module, _, qualname = str(argument).partition(" ")
                stack.append(("global", _qualified(module, qualname)))
            elif name == "STACK_GLOBAL":
                qualname, module = stack.pop(), stack.pop()
                stack.append(("global", _qualified(module[1], qualname[1])))
            elif name in ("REDUCE", "NEWOBJ", "NEWOBJ_EX"):
                del stack[len(stack) - (2 if name == "NEWOBJ_EX" else 1):]  # the arguments
                made = stack.pop()
                called = made[1] if isinstance(made, tuple) else "object"
                if name == "REDUCE":  # a private function rebuilds some type: which is unknown
                    called = _RECONSTRUCTORS.get(called, "object" if called.rpartition(".")[2]
                                                 .startswith("_") else called)
                stack.append(called)
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo.get(argument, "object"))
            elif name in _CHANGES:
                popped = _CHANGES[name]
                if name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                    memo[len(memo) if name == "MEMOIZE" else argument] = stack[-1]
                elif popped < 0:
                    _pop_to_mark(stack)
                elif popped:
                    del stack[len(stack) - popped:]
            else:  # an opcode this does not follow (PERSID, EXT1, INST, OBJ, ...)
                return "object"
    except Exception:  # noqa: BLE001 - not a pickle, or one this does not follow
        pass
    return "object"


def _pop_to_mark(stack: list) -> None:
    while stack.pop() is not _MARK:
        pass


def _name_of(item: Any) -> str:
    """A stack item's type name: a string is a str, a global (a class or function pickled by
    name) a type."""
    if isinstance(item, tuple):
        return "str" if item[0] == "str" else "type"
    return item


def _qualified(module: str, qualname: str) -> str:
    return qualname if module == "builtins" else f"{module}.{qualname}"
