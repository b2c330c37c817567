"""Build helpers of the documentation site, named in ``mkdocs.yml``.

``on_files`` (an MkDocs hook) publishes the repository files that the pages link to from outside
``docs/``. The pages are read on GitHub as well as on the site, so they link to notebooks and other files
of the repository relatively (``../notebooks/pipeline.ipynb``). MkDocs only knows the files of
``docs/`` and reports such links as broken. This hook adds each linked file that exists in the
repository to the site, under its path in the repository, so the link works in both places; a
link to a file that does not exist is still reported by ``mkdocs build --strict``.

``LiteralBlocks`` (a griffe extension, for mkdocstrings) lets the docstrings keep the
reStructuredText literal block they are written with, ``text::`` or a lone ``::`` followed by an
indented block, which Markdown would otherwise show with its ``::``.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import griffe
from mkdocs.structure.files import File, Files, InclusionLevel

# inline links and images: [text](target "title"); reference definitions: [name]: target
_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?|^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)


def on_files(files: Files, config) -> Files:
    docs = Path(config["docs_dir"]).resolve()
    repo = docs.parent
    for page in [f for f in files if f.src_uri.endswith(".md")]:
        for match in _LINK.finditer(page.content_string):
            target = match.group(1) or match.group(2)
            parts = urlsplit(target)
            if parts.scheme or parts.netloc or not parts.path or parts.path.startswith("/"):
                continue
            src_uri = posixpath.normpath(
                posixpath.join(posixpath.dirname(page.src_uri), unquote(parts.path))
            )
            if not src_uri.startswith("../") or files.get_file_from_path(src_uri):
                continue
            path = (docs / src_uri).resolve()
            if not path.is_file() or not path.is_relative_to(repo) or path.is_relative_to(docs):
                continue
            files.append(
                File(
                    src_uri,
                    str(docs),
                    config["site_dir"],
                    config["use_directory_urls"],
                    dest_uri=path.relative_to(repo).as_posix(),
                    inclusion=InclusionLevel.INCLUDED,
                )
            )
    return files


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def markdown_literal_blocks(text: str) -> str:
    """``text::`` becomes ``text:`` and a lone ``::`` goes; the indented block after either
    becomes a Markdown code block (indented four spaces more than the paragraph before it)."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        head = line.rstrip()
        start = i + 1
        while start < len(lines) and not lines[start].strip():
            start += 1
        base = _indent(line)
        if not head.endswith("::") or start == len(lines) or _indent(lines[start]) <= base:
            out.append(line)
            i += 1
            continue
        end = start
        while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > base):
            end += 1
        block = lines[start:end]
        while not block[-1].strip():
            block.pop()
        text_part = head[:-2]
        if text_part.strip():
            out.append(text_part.rstrip() + ("" if text_part.endswith(" ") else ":"))
            out.append("")
        shift = min(_indent(b) for b in block if b.strip())
        out.extend(" " * (base + 4) + b[shift:] if b.strip() else "" for b in block)
        out.append("")
        i = end
    return "\n".join(out)


class LiteralBlocks(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown_literal_blocks(obj.docstring.value)
