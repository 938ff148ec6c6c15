"""Griffe extension for the API reference: peft_equi's reStructuredText-style docstrings as Markdown.

The docstrings use a small subset of reST.  mkdocstrings renders docstrings as Markdown
(``docstring_style: null`` in ``mkdocs.yml``: no section parsing), so this extension rewrites,
before rendering:

* roles (``:class:`~peft_equi.core.spec.LayerSpec```, ``:func:``, ``:meth:``, ``:mod:``,
  ``:data:``, ``:attr:``, ...) into inline code of the name shown (the last component with ``~``);
* double-backtick literals into single-backtick inline code;
* ``.. math::`` blocks (the equation on the directive line or indented below it; blank lines
  separate equations) into ``$$ ... $$`` blocks for ``pymdownx.arithmatex``;
* ``.. code-block:: lang`` blocks and ``::`` literal blocks into fenced code blocks.

Nothing in the package is changed; only the text griffe hands to mkdocstrings.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const|term):`([^`]+)`")
_LITERAL = re.compile(r"``(.+?)``", re.DOTALL)  # a literal may wrap onto the next line
_DIRECTIVE = re.compile(r"^(\s*)\.\. (math|code-block|code)::\s*(.*)$")


def _role(match: re.Match) -> str:
    target = match.group(1).strip()
    titled = re.fullmatch(r"(.+?)\s*<(.+)>", target)
    if titled:
        return f"`{titled.group(1)}`"
    if target.startswith("~"):
        target = target[1:].rsplit(".", 1)[-1]
    return f"`{target}`"


def _inline(line: str) -> str:
    return _LITERAL.sub(r"`\1`", _ROLE.sub(_role, line))


def _indented_block(lines: list[str], start: int, indent: int) -> tuple[list[str], int]:
    """The lines from ``start`` that are blank or indented deeper than ``indent``, dedented."""
    end = start
    while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent):
        end += 1
    block = textwrap.dedent("\n".join(lines[start:end])).strip("\n").splitlines()
    return block, end


def _math(first: str, body: list[str], pad: str) -> list[str]:
    text = "\n".join([first, *body]) if first else "\n".join(body)
    out: list[str] = []
    for equation in re.split(r"\n\s*\n", text.strip()):
        out += ["", f"{pad}$$", *(pad + line.strip() for line in equation.splitlines()), f"{pad}$$", ""]
    return out


def rst_to_markdown(text: str) -> str:
    """The Markdown rendering of one docstring (see the module docstring)."""
    lines, out, prose, i = text.splitlines(), [], [], 0

    def flush() -> None:  # prose is converted as a whole: literals and roles may wrap lines
        if prose:
            out.extend(_inline("\n".join(prose)).split("\n"))
            prose.clear()

    while i < len(lines):
        line = lines[i]
        directive = _DIRECTIVE.match(line)
        if directive or (line.rstrip().endswith("::") and not line.strip().startswith("..")):
            if not directive:
                prose.append(line.rstrip()[:-1])  # "text::" -> "text:"
            flush()
        if directive:
            pad, kind, argument = directive.groups()
            body, i = _indented_block(lines, i + 1, len(pad))
            if kind == "math":
                out += _math(argument, body, pad)
            else:
                out += ["", f"{pad}```{argument}", *(pad + b for b in body), f"{pad}```", ""]
            continue
        if line.rstrip().endswith("::") and not line.strip().startswith(".."):
            pad = line[: len(line) - len(line.lstrip())]
            body, i = _indented_block(lines, i + 1, len(pad))
            out += ["", f"{pad}```text", *(pad + b for b in body), f"{pad}```", ""]
            continue
        prose.append(line)
        i += 1
    flush()
    return "\n".join(out)


class RstDocstrings(griffe.Extension):
    """Rewrites every docstring of the loaded package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        seen: set[int] = set()

        def visit(obj: griffe.Object) -> None:
            if id(obj) in seen:
                return
            seen.add(id(obj))
            if obj.docstring is not None:
                obj.docstring.value = rst_to_markdown(obj.docstring.value)
            for member in obj.members.values():
                if not member.is_alias:
                    visit(member)

        visit(pkg)
