"""The documentation site: it builds with warnings as errors, and no page or link is left out.

``mkdocs build --strict`` fails on a broken link or anchor, a page missing from the nav and a
docstring mkdocstrings cannot render. The other tests say the same for pages and links without
building, with messages that name the page.
"""

from __future__ import annotations

import importlib.util
import posixpath
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CONFIG = ROOT / "mkdocs.yml"


def _pages() -> set[str]:
    return {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}


def _nav_pages(entries) -> list[str]:
    found: list[str] = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        if isinstance(value, list):
            found += _nav_pages(value)
        elif isinstance(value, str) and "://" not in value:
            found.append(value)
    return found


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_site_builds_strict(tmp_path):
    for module in ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason="the docs extra is not installed: pip install '.[docs]'")
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(CONFIG),
         "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=150,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}{done.stderr}"
    # the API reference was generated from the docstrings, not left as `::: name` text
    api = (site / "api" / "workspace" / "index.html").read_text()
    assert 'id="workbench.NetWorkSpace.fetch"' in api
    assert ":::" not in api
    for page in _pages():
        built = site / (page[:-3] + "/index.html" if not page.endswith("index.md")
                        else page[:-3] + ".html")
        assert built.exists(), f"{page} was not built"


def test_every_page_is_in_the_nav():
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load(CONFIG.read_text())
    assert config["docs_dir"] == "docs"
    nav = _nav_pages(config["nav"])
    assert len(nav) == len(set(nav)), f"pages listed twice in the nav: {sorted(nav)}"
    missing = sorted(_pages() - set(nav))
    assert not missing, f"pages of docs/ missing from the nav in mkdocs.yml: {missing}"
    unknown = sorted(set(nav) - _pages())
    assert not unknown, f"the nav in mkdocs.yml lists pages that do not exist: {unknown}"


_FENCE = re.compile(r"^( *)(```|~~~).*?^\1\2[ \t]*$", re.MULTILINE | re.DOTALL)
_CODE = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.DOTALL)
_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def _prose(text: str) -> str:
    """The page without its code blocks and code spans, where links are not links."""
    return _CODE.sub("", _FENCE.sub("", text))


def _anchors(text: str) -> set[str]:
    """Heading ids as Python-Markdown's toc extension makes them (duplicates get _1, _2...)."""
    seen: dict[str, int] = {}
    ids = set()
    for heading in _HEADING.findall(_FENCE.sub("", text)):
        plain = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
        plain = re.sub(r"[*_]{1,2}(\S.*?)[*_]{1,2}", r"\1", plain)
        ascii_ = unicodedata.normalize("NFKD", plain).encode("ascii", "ignore").decode()
        slug = re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", ascii_).strip().lower())
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        ids.add(slug if n == 0 else f"{slug}_{n}")
    return ids


def test_relative_links_resolve():
    broken = []
    for page in sorted(_pages()):
        text = (DOCS / page).read_text()
        for target in _LINK.findall(_prose(text)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("//"):
                continue  # a URL (http:, mailto:), checked by nobody here
            path, _, anchor = target.partition("#")
            if not path:
                dest_text = text
            else:
                dest = (DOCS / posixpath.dirname(page) / path).resolve()
                if not dest.is_relative_to(ROOT) or not dest.exists():
                    broken.append(f"{page}: {target} (no such file)")
                    continue
                dest_text = dest.read_text() if dest.suffix == ".md" else None
            if anchor and dest_text is not None and anchor not in _anchors(dest_text):
                broken.append(f"{page}: {target} (no such heading)")
    assert not broken, "broken links in docs/:\n" + "\n".join(broken)


def test_docstring_literal_blocks_become_markdown():
    pytest.importorskip("mkdocs")
    pytest.importorskip("griffe")
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "_hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    convert = hooks.markdown_literal_blocks
    assert convert("Use it so::\n\n  a = 1\n   b\n\nThen.") == (
        "Use it so:\n\n    a = 1\n     b\n\nThen.")
    assert convert("Tree\n\n::\n\n    A\n    └── B\n") == "Tree\n\n    A\n    └── B\n"
    assert convert("Text ::\n\n    x\n") == "Text\n\n    x\n"
    assert convert("Not a block::\nsame level") == "Not a block::\nsame level"


_PROJECT_PATH = re.compile(r"`((?:workbench|tests|benchmarks)/[\w/.]*)`")


def test_the_architecture_page_names_only_what_exists():
    """The page for the next engineer stays true: every module or folder it names exists."""
    named = set(_PROJECT_PATH.findall((DOCS / "architecture.md").read_text()))
    assert len(named) > 30, "the page names the modules it describes"
    missing = sorted(path for path in named if not (ROOT / path.rstrip("/")).exists())
    assert not missing, f"docs/architecture.md names what does not exist: {missing}"
    contributing = (ROOT / "CONTRIBUTING.md").read_text()
    assert "docs/architecture.md" in contributing and "make test" in contributing


@pytest.mark.timeout(60)
def test_the_security_pages_pyzmq_snippet_talks_to_a_curve_broker(make_broker, tmp_path):
    """The page's claim that any ZeroMQ DEALER with a connection file's keys reaches a CURVE
    broker: its pyzmq snippet, run as printed, stores a value a workbench client fetches."""
    pytest.importorskip("zmq")
    from workbench import NetWorkSpace

    blocks = [block for block in re.findall(r"^```python\n(.*?)^```", (DOCS / "security.md")
                                            .read_text(), re.MULTILINE | re.DOTALL)
              if "zmq.DEALER" in block]
    assert len(blocks) == 1, "the security page shows one pyzmq DEALER snippet"
    broker = make_broker("--curve")
    work = tmp_path / "snippet"
    work.mkdir()
    (work / "broker.json").write_text(Path(broker.connection_file).read_text())
    done = subprocess.run([sys.executable, "-c", blocks[0]], cwd=work, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    ws = NetWorkSpace("demo", serverHost=broker.connection_file, useUse=True)
    try:
        assert ws.fetch("greeting", timeout=5) == "hello from pyzmq"
    finally:
        ws.server.close()
