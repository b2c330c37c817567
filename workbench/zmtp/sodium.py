"""The box every CURVE frame travels in (libsodium's ``crypto_box`` with a precomputed key),
sealed and opened in place where the system has libsodium, through PyNaCl elsewhere.

PyNaCl is the project's libsodium, and its functions take and return ``bytes``: each box costs
a zero-filled output buffer and a copy into ``bytes`` on either side, which for a 100 MB value
adds up to ten passes over it per round trip (``docs/benchmarks.md``, CURVE). libsodium's
detached functions seal and open a buffer where it lies. Where libsodium is a shared library
of the system (Debian's ``libsodium23``, which ``.ci/run`` installs), it
is called through cffi (PyNaCl's own dependency) in ABI mode: a sealed frame is one copy of the
data into the buffer that goes out, and an opened one is the buffer it was read into, writable.
Elsewhere PyNaCl's functions do the same work with copies. Both give the same bytes on the
wire; ``IN_PLACE`` says which is in use (``WORKBENCH_SODIUM=pynacl`` forces PyNaCl).

A box here is libsodium's combined form: the 16-byte MAC, then the ciphertext of a flags byte
and the frame (CurveZMQ's MESSAGE body after its name and nonce).
"""

from __future__ import annotations

import ctypes.util
import os

from nacl import bindings as _pynacl
from nacl.exceptions import CryptoError

MAC = 16
_SMALL = 1 << 16  # an opened frame below this size is returned as bytes, like a plain one's


class BoxError(ValueError):
    """A box that does not open: not sealed with this key and nonce, or changed on the way."""


def _load_libsodium():
    if os.environ.get("WORKBENCH_SODIUM") == "pynacl":
        return None, None
    path = ctypes.util.find_library("sodium")
    if path is None:
        return None, None
    try:
        import cffi
        ffi = cffi.FFI()
        ffi.cdef("""
            int sodium_init(void);
            int crypto_box_detached_afternm(unsigned char *c, unsigned char *mac,
                const unsigned char *m, unsigned long long mlen, const unsigned char *n,
                const unsigned char *k);
            int crypto_box_open_detached_afternm(unsigned char *m, const unsigned char *c,
                const unsigned char *mac, unsigned long long clen, const unsigned char *n,
                const unsigned char *k);
        """)
        lib = ffi.dlopen(path)
        if lib.sodium_init() < 0:
            return None, None
    except (ImportError, OSError, AttributeError):  # no cffi, an unusable or too old library
        return None, None
    return ffi, lib


_ffi, _lib = _load_libsodium()
IN_PLACE = _lib is not None


def seal(flags: int, frame, nonce: bytes, key: bytes) -> bytes | bytearray:
    """The box of ``flags`` and ``frame`` (any bytes-like) under ``nonce`` and ``key``."""
    if _lib is None:
        return _pynacl.crypto_box_easy_afternm(bytes((flags,)) + frame, nonce, key)
    box = bytearray(MAC)  # grown by the copy of the frame, never zero-filled first
    box.append(flags)
    box += frame
    pointer = _ffi.from_buffer(box)
    _lib.crypto_box_detached_afternm(pointer + MAC, pointer, pointer + MAC, len(box) - MAC,
                                     nonce, key)
    _ffi.release(pointer)
    return box


def open_box(box: bytes | bytearray, nonce: bytes, key: bytes) -> tuple[int, bytes | bytearray]:
    """A box -> (flags, frame); BoxError if it does not open. A ``bytearray`` box is opened in
    place and becomes the frame (no copy); a frame of 64 KiB or more comes back as a writable
    ``bytearray``, as over a plain connection, smaller ones as ``bytes``."""
    if len(box) <= MAC:
        raise BoxError("a box shorter than its MAC")
    if _lib is None:
        try:
            plain = _pynacl.crypto_box_open_easy_afternm(bytes(box), nonce, key)
        except (CryptoError, ValueError, TypeError):
            raise BoxError("the box did not open") from None
        if len(plain) <= _SMALL:
            return plain[0], plain[1:]
        return plain[0], bytearray(memoryview(plain)[1:])
    buffer = box if type(box) is bytearray else bytearray(box)
    pointer = _ffi.from_buffer(buffer)
    opened = _lib.crypto_box_open_detached_afternm(pointer + MAC, pointer + MAC, pointer,
                                                   len(buffer) - MAC, nonce, key)
    _ffi.release(pointer)
    if opened != 0:
        raise BoxError("the box did not open")
    flags = buffer[MAC]
    if len(buffer) <= _SMALL:
        return flags, bytes(memoryview(buffer)[MAC + 1:])
    try:
        del buffer[:MAC + 1]  # O(1) at the front of a bytearray: the frame, where it was read
    except BufferError:  # someone still holds a view of it (a test feeding by hand)
        return flags, bytearray(memoryview(buffer)[MAC + 1:])
    return flags, buffer
