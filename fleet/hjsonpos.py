r"""A position-keeping Hjson loader: the same data as `hjson.loads`, plus the line and column of every key and value.

Config validation reports `FILE:LINE:COL: path.to.key: message`; the `hjson` package gives no positions, so
this is our own recursive-descent parser of https://hjson.github.io/syntax.html. Where the spec leaves room,
it follows hjson-py 3.1 (the reference): `loads(text).data` equals `hjson.loads(text)` for every input that
hjson-py accepts, and every input it rejects raises `ConfigError` here, except where hjson-py is at fault:
- a `'''` string on the text's first line: hjson-py takes its indent from the text's last line (a wrapped
  index) and crashes if there is no newline at all; we use the column of the quotes, as on any other line;
- `\u` takes exactly 4 hex digits (hjson-py lets int() also take a sign, `_` or spaces);
- a text that is only a byte order mark is an empty object, like an empty text;
- nesting deeper than 256 levels is refused (hjson-py hits a RecursionError a little deeper).
"""

from __future__ import annotations

import math
import re
from bisect import bisect_right
from pathlib import Path
from typing import Any, NoReturn, TypeAlias

from fleet.errors import ConfigError, ConfigIssue, Position

__all__ = ["Document", "KeyPath", "format_path", "load", "loads"]

KeyPath: TypeAlias = tuple[str | int, ...]
"""Where a value sits in the data: str steps are dict keys, int steps are list indices."""

# Positions are kept as a tree parallel to the data, built from plain tuples because a 1,000-component
# config has tens of thousands of them: (key offset, value offset, children). A list item's "key" is the
# item itself; children are a dict (objects), a list (arrays) or None (scalars).
_Node: TypeAlias = tuple[int, int, "dict[str, _Node] | list[_Node] | None"]

# Whitespace and comments between tokens. Only these four whitespace characters separate tokens (as in
# hjson-py); a `/*` left over after a match is an unterminated comment.
_GAP = r"(?:[ \t\r\n]+|#[^\r\n]*|//[^\r\n]*|/\*.*?\*/)*"
_SKIP = re.compile(_GAP, re.DOTALL)
# The gap after a member or item, with its optional comma: one match instead of three steps, for speed.
_SEPARATOR = re.compile(f"{_GAP}(?:,{_GAP})?", re.DOTALL)
# A quoteless key, its trailing whitespace, the colon and the gap to the value.
_KEY = re.compile(r"([^ \t\r\n:{}\[\],]+)([ \t\r\n]*):" + _GAP, re.DOTALL)
_KEY_WORD = re.compile(r"[^ \t\r\n:{}\[\],]*")
_LINE_REST = re.compile(r"[^\r\n]*")
# Where a quoteless value may end early, provided what precedes is a number or a literal.
_VALUE_STOP = re.compile(r"[,}\]#]|/[/*]")
# hjson-py's number grammar (`\d` included, so it takes the same non-ASCII digits int() does).
_NUMBER = re.compile(r"(-?(?:0|[1-9]\d*))(\.\d+)?([eE][-+]?\d+)?[\t ]*")
_LITERALS: dict[str, Any] = {"true": True, "false": False, "null": None}
_PLAIN = {'"': re.compile(r'[^"\\\x00-\x1f]*'), "'": re.compile(r"[^'\\\x00-\x1f]*")}
_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_HEX4 = re.compile(r"[0-9a-fA-F]{4}")
_MAX_DEPTH = 256  # nesting levels; each takes two stack frames, and Python allows 1,000


def format_path(path: KeyPath) -> str:
    """Render a key path for messages: `components[3].pins.sda`."""
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else f".{step}" if out else step
    return out


class Document:
    """A parsed Hjson file: `data` is the plain Python data, the methods say where each part of it stands."""

    def __init__(self, data: Any, filename: str, text: str, root: _Node, dups: list[tuple[KeyPath, int, int]]):
        self.data = data
        self.filename = filename
        self._text = text
        self._root = root
        self._line_starts: list[int] | None = None
        # Every key given twice in one object, at the later key (whose value is the one kept, as in hjson).
        self.duplicates: list[ConfigIssue] = [
            ConfigIssue(
                self._position(at), format_path(path), f"duplicate key, overrides the one at {self._position(was)}"
            )
            for path, was, at in dups
        ]

    def get(self, path: KeyPath) -> Any:
        """The data at `path`, or None where the path leads nowhere."""
        value = self.data
        for step in path:
            if isinstance(value, dict) and isinstance(step, str):
                value = value.get(step)
            elif isinstance(value, list) and isinstance(step, int) and -len(value) <= step < len(value):
                value = value[step]
            else:
                return None
        return value

    def key_pos(self, path: KeyPath) -> Position:
        """Where the key at `path` stands (for a list index: the item); KeyError if there is no such path."""
        return self._position(self._node(path)[0])

    def value_pos(self, path: KeyPath) -> Position:
        """Where the value at `path` starts; KeyError if there is no such path."""
        return self._position(self._node(path)[1])

    def pos(self, path: KeyPath) -> Position:
        """The key's position (the value's for list items and the root), else the nearest existing parent's.

        Never raises: a missing key is reported where it should have been, at its parent.
        """
        trail = self._trail(path)
        node = trail[-1]
        depth = len(trail) - 1
        return self._position(node[0] if depth and isinstance(path[depth - 1], str) else node[1])

    def issue(self, path: KeyPath, message: str) -> ConfigIssue:
        """A ConfigIssue about `path`, placed by `pos`."""
        return ConfigIssue(self.pos(path), format_path(path), message)

    def _trail(self, path: KeyPath) -> list[_Node]:
        """The nodes from the root along `path`, as far as it exists."""
        trail = [self._root]
        for step in path:
            kids = trail[-1][2]
            if isinstance(kids, dict) and isinstance(step, str):
                if step not in kids:
                    break
                trail.append(kids[step])
            elif isinstance(kids, list) and type(step) is int and 0 <= step < len(kids):
                trail.append(kids[step])
            else:
                break
        return trail

    def _node(self, path: KeyPath) -> _Node:
        trail = self._trail(path)
        if len(trail) != len(path) + 1:
            raise KeyError(path)
        return trail[-1]

    def _position(self, offset: int) -> Position:
        return _position(self.filename, offset, self._lines())

    def _lines(self) -> list[int]:
        # Computed on first use: most documents are loaded, validated clean and never asked for a position.
        if self._line_starts is None:
            self._line_starts = _line_starts(self._text)
        return self._line_starts


def loads(text: str, filename: str = "<string>") -> Document:
    """Parse Hjson `text`; `filename` only labels positions. Raises ConfigError on a syntax error."""
    if text.startswith("\ufeff"):
        text = text[1:]  # a byte order mark is no part of the document, nor of its first line's columns
    parser = _Parser(text)
    try:
        data, root = parser.document()
    except _SyntaxError as e:
        pos = _position(filename, e.offset, _line_starts(text))
        raise ConfigError([ConfigIssue(pos, format_path(e.path), e.message)]) from None
    return Document(data, filename, text, root, parser.dups)


def load(path: str | Path) -> Document:
    """Read and parse a UTF-8 Hjson file; positions name it as given."""
    # read_text's universal newlines, as hjson.load(open(path)): a lone CR also starts a line for positions
    return loads(Path(path).read_text(encoding="utf-8"), str(path))


def _line_starts(text: str) -> list[int]:
    return [0, *(m.end() for m in re.finditer("\n", text))]


def _position(filename: str, offset: int, line_starts: list[int]) -> Position:
    line = bisect_right(line_starts, offset)
    return Position(filename, line, offset - line_starts[line - 1] + 1)


class _SyntaxError(Exception):
    """Internal: carries the offset, so that `loads` turns it into a positioned ConfigError. `final` errors
    are those where hjson-py crashes rather than trying the text as a bare value."""

    def __init__(self, offset: int, message: str, path: KeyPath, final: bool):
        super().__init__(message)
        self.offset = offset
        self.message = message
        self.path = path
        self.final = final


class _Parser:
    """Recursive descent over one text. The methods that read a value take the offset of its first character
    and return (data, children, offset just past it)."""

    def __init__(self, text: str):
        self.s = text
        self.n = len(text)
        self.path: list[str | int] = []  # the key path being parsed, for error messages and duplicates
        self.dups: list[tuple[KeyPath, int, int]] = []

    def fail(self, offset: int, message: str, final: bool = False) -> NoReturn:
        raise _SyntaxError(offset, message, tuple(self.path), final)

    def describe(self, offset: int) -> str:
        return repr(self.s[offset]) if offset < self.n else "end of input"

    def where(self, offset: int) -> str:
        line = self.s.count("\n", 0, offset) + 1
        col = offset - self.s.rfind("\n", 0, offset)
        return f"line {line}, col {col}"

    def skip(self, i: int, gap: re.Pattern[str] = _SKIP) -> int:
        """Skip whitespace and comments (and with `_SEPARATOR`, one comma) from `i`."""
        i = gap.match(self.s, i).end()  # type: ignore[union-attr]  # the pattern also matches empty
        if self.s.startswith("/*", i):
            self.fail(i, "unterminated /* comment", final=True)
        return i

    def document(self) -> tuple[Any, _Node]:
        i = self.skip(0)
        if i == self.n:
            return {}, (0, 0, {})  # hjson-py reads an empty or comment-only file as an empty object
        if self.s[i] in "{[":
            data, kids, end = self.value(i)
        else:
            try:
                data, kids, end = self.members(i, None)
            except _SyntaxError as error:
                if error.final:
                    raise
                data, kids, end = self.bare_value(i, error)
        end = self.skip(end)
        if end != self.n:
            self.fail(end, f"unexpected {self.describe(end)} after the end of the document")
        return data, (i, i, kids)

    def bare_value(self, i: int, error: _SyntaxError) -> tuple[Any, None, int]:
        """A root that is not an object: hjson-py tries the whole text as one value (`5`, `"text"`, `hello`).
        If that fails too, the object's `error` is the one that explains the file."""
        self.path.clear()
        self.dups.clear()
        try:
            data, _, end = self.value(i)
            end = self.skip(end)
        except _SyntaxError:
            raise error from None
        if end != self.n:
            raise error
        return data, None, end

    def value(self, i: int) -> tuple[Any, dict[str, _Node] | list[_Node] | None, int]:
        s = self.s
        c = s[i : i + 1]
        if c in ("", "}", "]", ",", ":"):
            self.fail(i, f"expected a value, found {self.describe(i)}")
        if c == "{" or c == "[":
            if len(self.path) >= _MAX_DEPTH:
                # Rather than a RecursionError. Typically a quoteless value swallowed each `}`.
                self.fail(i, f"nested more than {_MAX_DEPTH} levels deep (does a quoteless value hide a '}}'?)", True)
            return self.members(self.skip(i + 1), i) if c == "{" else self.array(i)
        if c == "'" and s.startswith("'''", i):
            return self.multiline(i)
        if c == '"' or c == "'":
            text, end = self.string(i)
            return text, None, end
        return self.quoteless(i)

    def members(self, i: int, brace: int | None) -> tuple[dict[str, Any], dict[str, _Node], int]:
        """An object's members from `i`; `brace` is the offset of its `{`, None for the braceless root."""
        s, n, path = self.s, self.n, self.path
        data: dict[str, Any] = {}
        kids: dict[str, _Node] = {}
        while True:
            if brace is None:
                if i == n:
                    return data, kids, i
            elif i == n:
                self.fail(i, f"missing '}}' to close the '{{' at {self.where(brace)}")
            elif s[i] == "}":
                return data, kids, i + 1
            key_at = i
            key, i = self.key(i)
            value_at = i
            path.append(key)
            value, vkids, i = self.value(i)
            path.pop()
            if key in kids:
                self.dups.append(((*path, key), kids[key][0], key_at))
            data[key] = value
            kids[key] = (key_at, value_at, vkids)
            i = self.skip(i, _SEPARATOR)

    def key(self, i: int) -> tuple[str, int]:
        """A member's key and where its value starts."""
        s = self.s
        if s[i] == '"' or s[i] == "'":
            key, end = self.string(i)
            end = self.skip(end)
            if not s.startswith(":", end):
                self.fail(end, f"expected ':' after key {key!r}, found {self.describe(end)}")
            return key, self.skip(end + 1)
        if (m := _KEY.match(s, i)) is None:
            self.bad_key(i)
        key = m[1]
        if m[2]:
            key = key.rstrip()  # as hjson-py: this strips any Unicode space, which keys may otherwise hold
        end = m.end()
        if s.startswith("/*", end):
            self.skip(end)  # reports the unterminated comment
        return key, end

    def bad_key(self, i: int) -> NoReturn:
        """Explain why no `key:` starts at `i`."""
        s = self.s
        word_end = _KEY_WORD.match(s, i).end()  # type: ignore[union-attr]  # the pattern also matches empty
        if word_end == i:
            if s[i] == ":":
                self.fail(i, "missing key name before ':' (an empty key needs quotes: \"\")")
            self.fail(i, f"unexpected {self.describe(i)}")
        word = s[i:word_end]
        gap = word_end
        while gap < self.n and s[gap] in " \t":
            gap += 1
        hint = " (keys with spaces need quotes)" if gap > word_end and _KEY.match(s, gap) else ""
        self.fail(word_end, f"expected ':' after key {word!r}{hint}")

    def array(self, bracket: int) -> tuple[list[Any], list[_Node], int]:
        s, n, path = self.s, self.n, self.path
        data: list[Any] = []
        kids: list[_Node] = []
        i = self.skip(bracket + 1)
        while True:
            if i == n:
                self.fail(i, f"missing ']' to close the '[' at {self.where(bracket)}")
            if s[i] == "]":
                return data, kids, i + 1
            path.append(len(data))
            value, vkids, end = self.value(i)
            path.pop()
            data.append(value)
            kids.append((i, i, vkids))
            i = self.skip(end, _SEPARATOR)

    def string(self, quote: int) -> tuple[str, int]:
        """A single- or double-quoted string with JSON escapes; control characters must be escaped."""
        s = self.s
        q = s[quote]
        plain = _PLAIN[q].match
        parts: list[str] = []
        i = quote + 1
        while True:
            i = (m := plain(s, i)).end()  # type: ignore[union-attr]  # the pattern also matches empty
            parts.append(m[0])
            c = s[i : i + 1]
            if c == q:
                return "".join(parts), i + 1
            e = s[i + 1 : i + 2]
            if c in ("", "\n", "\r") or (c == "\\" and not e):
                self.fail(quote, "unterminated string (a quoted string ends on its line; use ''' for more)")
            if c != "\\":
                self.fail(i, f"control character {c!r} in a string: write it as an escape")
            if e in _ESCAPES:
                parts.append(_ESCAPES[e])
                i += 2
            elif e == "u":
                char, i = self.unicode_escape(i)
                parts.append(char)
            else:
                self.fail(i, f"invalid escape {s[i : i + 2]!r}")

    def unicode_escape(self, i: int) -> tuple[str, int]:
        r"""The character of the `\uXXXX` at `i` and the offset past it; a following `\uXXXX` is taken too when
        the two form a surrogate pair (a lone surrogate passes through, as in hjson-py)."""
        s = self.s
        if not _HEX4.fullmatch(s, i + 2, i + 6):
            self.fail(i, r"invalid \u escape: it takes 4 hex digits")
        code = int(s[i + 2 : i + 6], 16)
        if 0xD800 <= code < 0xDC00 and s.startswith("\\u", i + 6) and _HEX4.fullmatch(s, i + 8, i + 12):
            low = int(s[i + 8 : i + 12], 16)
            if 0xDC00 <= low < 0xE000:
                return chr(0x10000 + ((code - 0xD800) << 10 | (low - 0xDC00))), i + 12
        return chr(code), i + 6

    def multiline(self, quote: int) -> tuple[str, None, int]:
        """A `'''` string: each line loses as much leading whitespace as the `'''` was indented by."""
        s = self.s
        indent = quote - (s.rfind("\n", 0, quote) + 1)
        i = quote + 3
        while i < self.n and s[i] in " \t\r":
            i += 1
        at_end = i == self.n  # hjson-py crashes here rather than try a bare root value: so must we
        dedent_first = s.startswith("\n", i)  # text on the line of the opening ''' keeps its spacing
        if dedent_first:
            i += 1
        end = s.find("'''", i)
        if end < 0:
            self.fail(quote, "unterminated ''' string", final=at_end)
        lines = s[i:end].split("\n")
        for k in range(0 if dedent_first else 1, len(lines)):
            line = lines[k]
            lines[k] = line[min(len(line) - len(line.lstrip(" \t\r")), indent) :]
        text = "\n".join(lines).replace("\r", "")
        return (text[:-1] if text.endswith("\n") else text), None, end + 3

    def quoteless(self, i: int) -> tuple[Any, None, int]:
        """A bare value: a number or literal if that is all before the line's first `,` `}` `]` or comment,
        else a string running to the end of the line."""
        s = self.s
        eol = _LINE_REST.match(s, i).end()  # type: ignore[union-attr]  # the pattern also matches empty
        if s[i] not in "-0123456789tfn":
            return s[i:eol].strip(), None, eol  # cannot be a number or literal: skip the checks below
        stop_m = _VALUE_STOP.search(s, i, eol)
        stop = stop_m.start() if stop_m else eol
        word = s[i:stop].rstrip()
        if word in _LITERALS:
            return _LITERALS[word], None, stop
        if (m := _NUMBER.fullmatch(s, i, stop)) is not None:
            whole, frac, exp = m.groups()
            if not (frac or exp):
                return int(whole), None, stop
            number = float(whole + (frac or "") + (exp or ""))
            if not math.isfinite(number):
                self.fail(i, "number out of range", final=True)
            if number == int(number) and abs(number) < 1e10:
                return int(number), None, stop  # hjson-py reads 1.0 and 1e3 as ints
            return number, None, stop
        return s[i:eol].strip(), None, eol
