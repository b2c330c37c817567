"""Reading a magic's line: words that keep Python expressions whole, argparse parsers that
report instead of exiting the kernel, and expressions evaluated in the user's namespace.

A line is split on spaces outside quotes and brackets, and each word keeps its text as typed:
``store x {"a": 1, "b": [1, 2]}`` is three words, and the quotes in the last one survive for
``eval``. Plain names (variables, workspaces, keys) may be quoted to hold spaces.
"""

from __future__ import annotations

import argparse
import ast
import sys
from typing import Any, NoReturn

_OPENING, _CLOSING, _QUOTES = "([{", ")]}", "'\""


class UsageError(Exception):
    """A line the parser refused; ``usage`` is the usage line of the (sub)command."""

    def __init__(self, message: str, usage: str = "") -> None:
        super().__init__(message)
        self.usage = usage


class MagicError(Exception):
    """What a magic could not do, said in one line for the user."""


class ExpressionError(MagicError):
    """An expression of the line could not be evaluated; the message says why."""


class HelpShown(Exception):
    """``--help`` was printed: nothing more to do."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise UsageError and whose ``--help`` raises HelpShown:
    argparse's own behaviour, ``sys.exit``, would end a script or show a SystemExit in the
    notebook. Subparsers are of the same class."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}", self.format_usage().strip())

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            print(message, end="", file=sys.stderr)
        raise HelpShown()


def split_words(line: str) -> list[str]:
    """Split on whitespace outside quotes and brackets; every word keeps its text as typed."""
    words: list[str] = []
    word: list[str] = []
    depth, quote, escaped = 0, "", False
    for char in line:
        if quote:
            word.append(char)
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = ""
            continue
        if char.isspace() and depth == 0:
            if word:
                words.append("".join(word))
                word = []
            continue
        word.append(char)
        if char in _QUOTES:
            quote = char
        elif char in _OPENING:
            depth += 1
        elif char in _CLOSING:
            depth = max(0, depth - 1)
    if quote:
        raise UsageError(f"unterminated string in {line.strip()!r}")
    if word:
        words.append("".join(word))
    return words


def name(word: str) -> str:
    """A variable, workspace or key name: the word itself, or the string a quoted word spells."""
    if word[:1] in _QUOTES:
        try:
            value = ast.literal_eval(word)
        except (ValueError, SyntaxError):
            value = None
        if not isinstance(value, str):
            raise argparse.ArgumentTypeError(f"{word} is not a quoted name")
        return value
    return word


def evaluate(words: list[str], namespace: dict) -> Any:
    """The value of the expression the words spell, evaluated in ``namespace``."""
    text = " ".join(words)
    try:
        return eval(text, namespace)  # noqa: S307 - the user's expression, in the user's kernel
    except SyntaxError as exc:
        raise ExpressionError(f"cannot evaluate {text!r}: {exc.msg}") from None
    except Exception as exc:  # noqa: BLE001 - whatever the user's expression raised, in short
        raise ExpressionError(f"cannot evaluate {text!r}: {type(exc).__name__}: {exc}") from None


def split_option(words: list[str], option: str) -> tuple[list[str], str | None]:
    """Take a trailing ``option VALUE`` (or ``option=VALUE``) off an expression's words, so
    that an option may follow the expression that precedes it on the line."""
    if len(words) >= 3 and words[-2] == option:
        return words[:-2], words[-1]
    if len(words) >= 2 and words[-1].startswith(option + "="):
        return words[:-1], words[-1][len(option) + 1:]
    return words, None
