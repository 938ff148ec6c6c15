"""Regular expressions matched in linear time: the ``re:`` patterns of configs, which may come from files.

Python's ``re`` backtracks: ``re:(.*.*.*)*X`` takes exponential time on a module path, and an
``adapter_config.json`` read from elsewhere could hang loading.  :func:`compile_regex` parses
a pattern with Python's own parser (so the syntax and meaning are ``re``'s) and builds a
Thompson automaton; :meth:`LinearRegex.fullmatch` simulates it over all states at once, in
``O(len(text) * states)`` time whatever the pattern.  The constructs with no such automaton
are refused with a one-line ``ValueError``: backreferences, lookahead and lookbehind,
conditionals, atomic groups and possessive repeats, and flags other than the default
(``(?i)``, ``(?s)``...).  Patterns are at most :data:`MAX_PATTERN` characters and
:data:`MAX_STATES` automaton states (``{m,n}`` repeats are unrolled).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

try:  # Python 3.11+
    from re import _parser as parser
except ImportError:  # pragma: no cover - Python 3.10
    import sre_parse as parser  # type: ignore[no-redef]

MAX_PATTERN = 1000
MAX_STATES = 20_000

_CATEGORIES: dict[object, Callable[[str], bool]] = {
    parser.CATEGORY_DIGIT: str.isdecimal,
    parser.CATEGORY_NOT_DIGIT: lambda c: not c.isdecimal(),
    parser.CATEGORY_SPACE: str.isspace,
    parser.CATEGORY_NOT_SPACE: lambda c: not c.isspace(),
    parser.CATEGORY_WORD: lambda c: c.isalnum() or c == "_",
    parser.CATEGORY_NOT_WORD: lambda c: not (c.isalnum() or c == "_"),
}


def _word(text: str, pos: int) -> bool:
    return 0 <= pos < len(text) and (text[pos].isalnum() or text[pos] == "_")


_ANCHORS: dict[object, Callable[[str, int], bool]] = {
    parser.AT_BEGINNING: lambda t, p: p == 0,
    parser.AT_BEGINNING_STRING: lambda t, p: p == 0,
    parser.AT_END: lambda t, p: p == len(t) or (p == len(t) - 1 and t[p] == "\n"),
    parser.AT_END_STRING: lambda t, p: p == len(t),
    parser.AT_BOUNDARY: lambda t, p: _word(t, p - 1) != _word(t, p),
    parser.AT_NON_BOUNDARY: lambda t, p: _word(t, p - 1) == _word(t, p),
}


@dataclass
class _State:
    """A state: ``char`` (consume a character that ``test`` accepts), ``split`` (go to all ``out``),
    ``anchor`` (go on if ``test(text, pos)``) or ``match``."""

    kind: str
    out: list[int]
    test: Callable | None = None


class LinearRegex:
    """A compiled pattern; :meth:`fullmatch` is ``re.fullmatch(pattern, text) is not None``, in linear time."""

    def __init__(self, pattern: str) -> None:
        if len(pattern) > MAX_PATTERN:
            raise ValueError(f"regular expression longer than {MAX_PATTERN} characters")
        try:
            parsed = parser.parse(pattern)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
        if parsed.state.flags & ~(re.UNICODE | re.VERBOSE):
            raise ValueError(f"regular expression {pattern!r}: flags are not supported")
        self.pattern = pattern
        self.states: list[_State] = [_State("match", [])]
        self.start = self._sequence(list(parsed), 0)

    def _add(self, state: _State) -> int:
        if len(self.states) >= MAX_STATES:
            raise ValueError(f"regular expression {self.pattern!r} is too large (over {MAX_STATES} states)")
        self.states.append(state)
        return len(self.states) - 1

    def _sequence(self, items: list, then: int) -> int:
        for op, value in reversed(items):
            then = self._item(op, value, then)
        return then

    def _item(self, op, value, then: int) -> int:
        if op is parser.LITERAL:
            return self._add(_State("char", [then], functools.partial(str.__eq__, chr(value))))
        if op is parser.NOT_LITERAL:
            return self._add(_State("char", [then], functools.partial(str.__ne__, chr(value))))
        if op is parser.ANY:
            return self._add(_State("char", [then], lambda c: c != "\n"))
        if op is parser.IN:
            return self._add(_State("char", [then], self._charset(value)))
        if op is parser.AT:
            if value not in _ANCHORS:
                raise self._unsupported(str(value))
            return self._add(_State("anchor", [then], _ANCHORS[value]))
        if op is parser.BRANCH:
            return self._add(_State("split", [self._sequence(list(branch), then) for branch in value[1]]))
        if op is parser.SUBPATTERN:
            _, add_flags, del_flags, body = value
            if add_flags or del_flags:
                raise self._unsupported("inline flags")
            return self._sequence(list(body), then)
        if op in (parser.MAX_REPEAT, parser.MIN_REPEAT):  # greedy or lazy: the same full matches
            return self._repeat(*value, then)
        raise self._unsupported(str(op).lower())

    def _repeat(self, low: int, high, body, then: int) -> int:
        body = list(body)
        if high == parser.MAXREPEAT:  # body* after the required copies: a loop
            loop = self._add(_State("split", []))
            loop_state = self.states[loop]
            loop_state.out = [self._sequence(body, loop), then]
            then = loop
        else:
            for _ in range(high - low):  # optional copies, nested: (body(body)?)?
                then = self._add(_State("split", [self._sequence(body, then), then]))
        for _ in range(low):
            then = self._sequence(body, then)
        return then

    def _charset(self, items) -> Callable[[str], bool]:
        negate = bool(items) and items[0][0] is parser.NEGATE
        tests = []
        for op, value in items[1:] if negate else items:
            if op is parser.LITERAL:
                tests.append(functools.partial(str.__eq__, chr(value)))
            elif op is parser.RANGE:
                tests.append(lambda c, lo=value[0], hi=value[1]: lo <= ord(c) <= hi)
            elif op is parser.CATEGORY and value in _CATEGORIES:
                tests.append(_CATEGORIES[value])
            else:
                raise self._unsupported(f"{op} in a character class".lower())
        return lambda c: any(test(c) for test in tests) != negate

    def _unsupported(self, what: str) -> ValueError:
        return ValueError(
            f"regular expression {self.pattern!r}: {what} is not supported (patterns are matched in linear time: "
            "no backreferences, lookarounds, conditionals, atomic groups, possessive repeats or flags)"
        )

    def _closure(self, states: set[int], text: str, pos: int) -> set[int]:
        """``states`` and every state reachable from them without consuming a character at ``pos``."""
        seen, stack = set(), list(states)
        while stack:
            index = stack.pop()
            if index in seen:
                continue
            seen.add(index)
            state = self.states[index]
            if state.kind == "split" or (state.kind == "anchor" and state.test(text, pos)):
                stack.extend(state.out)
        return seen

    def fullmatch(self, text: str) -> bool:
        """Whether the whole of ``text`` matches."""
        current = self._closure({self.start}, text, 0)
        for pos, char in enumerate(text):
            following = {
                state.out[0] for state in (self.states[i] for i in current) if state.kind == "char" and state.test(char)
            }
            if not following:
                return False
            current = self._closure(following, text, pos + 1)
        return 0 in current


@functools.lru_cache(maxsize=1024)
def compile_regex(pattern: str) -> LinearRegex:
    """:class:`LinearRegex` of ``pattern`` (cached); invalid or unsupported patterns raise ``ValueError``."""
    return LinearRegex(pattern)
