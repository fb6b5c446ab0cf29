"""What the collector reads from a FreeRADIUS ``radiusd.conf``: plain text in, figures out.

FreeRADIUS 3.2 answers Status-Server without thread figures, so the most
worker threads a server may run is read from its configuration instead: the
``max_servers`` item of the top-level ``thread pool { ... }`` section.
Comments (``#`` outside quotes and regular expressions), any whitespace,
quoted strings over several lines, ``${...}`` and ``%{...}`` expansions and
nested sections are understood; ``$INCLUDE`` files are not followed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from schemas.errors import AaaFailoverError

_TOKEN = re.compile(
    r"""
    (?P<comment>\#[^\n]*)
    | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`(?:\\.|[^`\\])*`)
    | (?P<brace>[{}])
    | (?P<regex>[=!]~[ \t]*/(?:\\.|[^/\\\n])*/\w*)
    | (?P<op>[:+\-!<>=]?=~?|!~)
    | (?P<word>(?:[$%]\w*\{(?:[^{}\n]|[$%]\w*\{[^{}\n]*\})*\}|[^\s{}"'`\#=$%]|[$%](?!\w*\{))+)
    | (?P<newline>\n)
    | (?P<space>[ \t\r\f\v]+)
    | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)


class RadiusdConfError(AaaFailoverError, ValueError):
    """The configuration text cannot be read as FreeRADIUS configuration."""


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    line: int


def _tokens(text: str) -> Iterator[_Token]:
    line = 1
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup or "other"
        value = match.group()
        if kind not in ("comment", "space", "newline"):
            yield _Token("word" if kind in ("other", "regex") else kind, value, line)
        line += value.count("\n")


def _unquote(token: _Token) -> str:
    if token.kind == "string":
        return token.text[1:-1]
    return token.text


def items(text: str) -> Iterator[tuple[tuple[str, ...], str, str]]:
    """Every ``name = value`` of the text, with the path of sections it is in.

    A section is named by the words before its ``{`` on the same line
    (``("thread pool",)``, ``("server default", "listen")``). Statements
    that are not assignments (module calls, conditions) are passed over.
    Raises RadiusdConfError when the braces do not balance.
    """
    path: list[str] = []
    pending: list[_Token] = []
    tokens = list(_tokens(text))
    i = 0
    while i < len(tokens):
        token = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if token.kind == "word" and nxt is not None and nxt.kind == "op":
            value = tokens[i + 2] if i + 2 < len(tokens) else None
            if value is not None and value.kind in ("word", "string") and value.line == nxt.line:
                yield tuple(path), token.text, _unquote(value)
                pending.clear()
                i += 3
                continue
        if token.kind == "brace" and token.text == "{":
            header = [t.text for t in pending if t.line == token.line]
            path.append(" ".join(header))
            pending.clear()
        elif token.kind == "brace":
            if not path:
                raise RadiusdConfError(f"line {token.line}: '}}' closes no section")
            path.pop()
            pending.clear()
        else:
            pending.append(token)
        i += 1
    if path:
        raise RadiusdConfError(f"section {path[-1]!r} is not closed")


def max_servers(text: str) -> int | None:
    """``max_servers`` of the top-level ``thread pool`` section; None if it sets none.

    Raises RadiusdConfError if the braces do not balance or the value is not
    a whole number of at least 1.
    """
    for path, name, value in items(text):
        if path == ("thread pool",) and name == "max_servers":
            try:
                number = int(value, 10)
            except ValueError:
                raise RadiusdConfError(f"max_servers {value!r} is not a number") from None
            if number < 1:
                raise RadiusdConfError(f"max_servers {number} is below 1")
            return number
    return None


def cleanup_delay(text: str) -> float | None:
    """The top-level ``cleanup_delay`` (seconds); None if the file sets none.

    Raises RadiusdConfError if the braces do not balance or the value is not
    a number of at least 0.
    """
    for path, name, value in items(text):
        if path == () and name == "cleanup_delay":
            try:
                number = float(value)
            except ValueError:
                raise RadiusdConfError(f"cleanup_delay {value!r} is not a number") from None
            if number < 0:
                raise RadiusdConfError(f"cleanup_delay {number:g} is below 0")
            return number
    return None
