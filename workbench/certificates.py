"""CURVE key files in the format of pyzmq's ``zmq.auth`` and czmq's ``zcert``: ZPL text
(rfc.zeromq.org/spec/4), a public certificate ``NAME.key`` that may be handed out and a secret
one ``NAME.key_secret`` that may not (written mode 0600). ``workbench keys NAME`` writes a
pair; ``workbench broker --key-file`` reads the broker's secret one and ``--allow-keys DIR``
the public ones of the clients it lets in, as ``zmq.auth.load_certificates`` would."""

from __future__ import annotations

import datetime
import os
from typing import NamedTuple

from .zmtp import z85

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"


class CertificateError(ValueError):
    """A key file that cannot be read, or holds no usable key; the message names the file."""


class Certificate(NamedTuple):
    public: bytes
    secret: bytes | None  # None in a public certificate

    def __repr__(self) -> str:  # never a secret in a log or a traceback
        return (f"Certificate(public={z85.encode(self.public)!r}"
                f"{', secret=...' if self.secret else ''})")


def _key(path: str, text: str, what: str) -> bytes:
    value = text.strip().strip('"').strip("'")
    try:
        raw = z85.decode(value)
    except ValueError as exc:
        raise CertificateError(f"{path}: the {what} is not Z85 text ({exc})") from None
    if len(raw) != 32:
        raise CertificateError(f"{path}: the {what} is {len(raw)} bytes; CURVE keys are 32")
    return raw


def read(path: str) -> Certificate:
    """A certificate file -> its keys; CertificateError naming the file otherwise."""
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except (OSError, UnicodeError) as exc:
        raise CertificateError(f"cannot read the key file {path}: {exc}") from None
    public = secret = None
    for line in lines:
        name, equals, value = line.strip().partition("=")
        if not equals:
            continue
        if name.strip() == "public-key":
            public = _key(path, value, "public key")
        elif name.strip() == "secret-key":
            secret = _key(path, value, "secret key")
    if public is None:
        raise CertificateError(f"{path} holds no public-key: it is not a CURVE certificate "
                               "(make one with `workbench keys NAME`)")
    return Certificate(public, secret)


def read_secret(path: str) -> Certificate:
    """A secret certificate (``NAME.key_secret``) -> its keys; CertificateError otherwise."""
    found = read(path)
    if found.secret is None:
        raise CertificateError(f"{path} holds no secret-key: give the .key_secret file")
    return found


def public_keys(directory: str) -> dict[bytes, str]:
    """The public keys of the ``*.key`` certificates in ``directory`` -> {key: file name}.
    CertificateError if the directory cannot be read or one of its files is not a
    certificate (a typo in a key must not pass silently)."""
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise CertificateError(f"cannot read the key directory {directory}: {exc}") from None
    found = {}
    for name in names:
        if name.endswith(PUBLIC_SUFFIX):
            found[read(os.path.join(directory, name)).public] = name
    return found


def _zpl(keys: dict[str, bytes], kind: str) -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [f"#   ****  Generated on {stamp} by workbench  ****",
             f"#   ZeroMQ CURVE {kind} Certificate"]
    if kind == "**Secret**":
        lines.append("#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.")
    lines += ["", "metadata", "curve"]
    lines += [f'    {name} = "{z85.encode(value)}"' for name, value in keys.items()]
    return "\n".join(lines) + "\n"


def write_pair(directory: str, name: str) -> tuple[str, str]:
    """Generate a key pair and write ``NAME.key`` and ``NAME.key_secret`` (0600) into
    ``directory`` (made 0700 if missing) -> their paths. Refuses to overwrite."""
    from .zmtp.curve import KeyPair
    pair = KeyPair.generate()
    os.makedirs(directory, mode=0o700, exist_ok=True)
    public_path = os.path.join(directory, name + PUBLIC_SUFFIX)
    secret_path = os.path.join(directory, name + SECRET_SUFFIX)
    for path in (public_path, secret_path):
        if os.path.exists(path):
            raise CertificateError(f"{path} exists; remove it first or choose another name")
    write_private(secret_path, _zpl({"public-key": pair.public, "secret-key": pair.secret},
                                    "**Secret**"))
    with open(public_path, "w", encoding="utf-8") as file:
        file.write(_zpl({"public-key": pair.public}, "**Public**"))
    return public_path, secret_path


def write_private(path: str, text: str) -> None:
    """Write ``text`` to ``path`` readable by this user only (0600 from its first byte, never
    wider), replacing the file whole: a reader sees the old text or the new, never a part."""
    directory = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
