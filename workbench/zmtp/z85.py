"""Z85 (rfc.zeromq.org/spec/32), the text form of CURVE keys that libzmq and pyzmq use: every
four bytes become five printable characters, so a 32-byte key is 40 characters of text that
survives JSON, environment variables and certificate files unchanged."""

from __future__ import annotations

ALPHABET = (b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
            b".-:+=^!/*?&<>()[]{}@%$#")
_VALUE = {char: index for index, char in enumerate(ALPHABET)}


def encode(data: bytes) -> str:
    """Bytes whose length is a multiple of 4 -> Z85 text."""
    if len(data) % 4:
        raise ValueError(f"Z85 encodes whole 4-byte groups; got {len(data)} bytes")
    out = bytearray()
    for start in range(0, len(data), 4):
        value = int.from_bytes(data[start:start + 4], "big")
        group = bytearray(5)
        for place in range(4, -1, -1):
            value, digit = divmod(value, 85)
            group[place] = ALPHABET[digit]
        out += group
    return out.decode("ascii")


def decode(text: str | bytes) -> bytes:
    """Z85 text (a multiple of 5 characters) -> bytes; ValueError if it is not Z85."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else bytes(text)
    if len(raw) % 5:
        raise ValueError(f"Z85 text comes in groups of 5 characters; got {len(raw)}")
    out = bytearray()
    for start in range(0, len(raw), 5):
        value = 0
        for char in raw[start:start + 5]:
            digit = _VALUE.get(char)
            if digit is None:
                raise ValueError(f"{chr(char)!r} is not a Z85 character")
            value = value * 85 + digit
        if value >= 1 << 32:
            raise ValueError("Z85 group out of range")
        out += value.to_bytes(4, "big")
    return bytes(out)
