"""fleet.hjsonpos: the same data as hjson-py, plus the line and column of every key and value."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import hjson
import pytest

from fleet.errors import ConfigError, Position, did_you_mean
from fleet.hjsonpos import Document, KeyPath, format_path, load, loads


def same_as_hjson(text: str) -> Any:
    """Parse with both parsers and check that the data is identical: order, types (1 vs 1.0 vs True) and all."""
    ours = loads(text).data
    # json.dumps keeps dict order and tells 1, 1.0 and true apart, which == does not
    assert json.dumps(ours) == json.dumps(hjson.loads(text)), text
    assert all(type(d) is dict for d in _dicts(ours))  # plain dicts, not hjson's OrderedDict
    return ours


def _dicts(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, dict):
        return [value, *(d for v in value.values() for d in _dicts(v))]
    if isinstance(value, list):
        return [d for v in value for d in _dicts(v)]
    return []


def _paths(value: Any, path: KeyPath = ()) -> list[KeyPath]:
    """Every path in the data, the root excluded."""
    steps: list[tuple[str | int, Any]] = []
    if isinstance(value, dict):
        steps = list(value.items())
    elif isinstance(value, list):
        steps = list(enumerate(value))
    return [p for step, child in steps for p in [(*path, step), *_paths(child, (*path, step))]]


def _offset(text: str, pos: Position) -> int:
    lines = text.split("\n")
    return sum(len(line) + 1 for line in lines[: pos.line - 1]) + pos.col - 1


CORPUS = {
    "empty": "",
    "only comments": "# one\n// two\n/* three\n */\n",
    "json": '{"a": [1, 2.5, -3, true, false, null, "x\\ty"], "b": {"c": {}}, "d": []}',
    "braceless root": "a: 1\nb: two\n",
    "root array": "[1, 2\n3\n]",
    "root scalar number": "  42  # the answer\n",
    "root scalar string": "just some words",
    "root quoted string": '"abc" // trailing comment',
    "root literal": "true",
    "newlines as separators": "{\n  a: 1\n  b: 2\n  c: [\n    x\n    y\n  ]\n}",
    "commas and trailing commas": "{a: 1, b: 2,}\n",
    "no separator between quoted values": '{a: "x" b: "y"}\n',
    "quoted keys": '"a b": 1\n\'c:d\': 2\n"": 3\n',
    "quoteless key characters": "$x: 1\na-b.c: 2\nk#y: 3\n/path: 4\nа: 5\ntrue: 6\n1: 7\n",
    "key with space before colon": "key   : 1\nother\t: 2\n",
    "value on the next line": "a:\n  5\nb:\n  # why\n  hello\n",
    "numbers": "a: 0\nb: -0\nc: 12\nd: -7\ne: 1.5\nf: 1.0\ng: 1e3\nh: 2E-2\ni: -0.0\nj: 1.5e10\nk: 9999999999.0\n"
    "l: 10000000000.0\nm: 1e-7\nn: 123456789012345678901234567890\n",
    "not numbers": "a: 01\nb: 1.\nc: .5\nd: +1\ne: 0x10\nf: 1e\ng: -\nh: 1_000\ni: 3 apples\nj: 1e5x\n",
    "literals": "a: true\nb: false\nc: null\nd: True\ne: nul\nf: truex\ng: null value\n",
    "literal then comment": "a: true # yes\nb: null // none\nc: false /* no */\nd: 3#x\ne: 4//y\n",
    "quoteless runs to end of line": "a: hello # not a comment\nb: x // y\nc: a /* b */ c\nd: 5 /x\ne: 3 / 4\n",
    "quoteless with commas": "a: x, y\nb: 1 2, 3\nc: true,\nd: 7 ,\n",
    "quoteless with brackets": "a: x]\nb: y}\n",
    "quoteless trailing whitespace": "a: hello   \t\nb:   spaced  out  \n",
    "quoteless in arrays": "[\n  a b\n  1\n  true\n  x, y\n]",
    "numbers in one-line arrays": "[1, 2, -3.5, true, null]",
    "numbers in one-line objects": "{a: 1, b: false}",
    "quotes inside quoteless": 'a: it\'s\nb: say "hi"\n',
    "strings with escapes": r'a: "q\" b\\ s\/ \b\f\n\r\t"' + "\n" + r"b: 'it\'s \"x\"'" + "\n",
    "unicode escapes": r'a: "\u00e9\u20ac"' + "\n" + r'b: "\ud83d\ude00"' + "\n" + r'c: "\ud83d"' + "\n",
    "single quotes": "a: 'x \"y\" z'\nb: \"x 'y' z\"\n",
    "non-ascii": "name: Küche ☕\n'ключ': значение\n",
    "multiline": "text:\n  '''\n  first\n    indented\n\n  last\n  '''\n",
    "multiline on the key line": "a: '''one\n     two'''\n",
    "multiline keeps text on its first line": "a: '''   x\n  y\n  '''\n",
    "multiline with quotes inside": "a:\n  '''\n  it's ''quoted''\n  '''\n",
    "multiline with tabs": "a:\n\t'''\n\tx\n\t\ty\n\t'''\n",
    "multiline less indented": "a:\n    '''\n  x\n    '''\n",
    "multiline empty": "a: ''''''\nb: '''\n'''\n",
    "multiline with trailing blank lines": "a:\n  '''\n  x\n\n\n  '''\n",
    "multiline in an array": "[\n  '''\n  a\n  b\n  '''\n  c\n]",
    "nested": "a: {b: {c: [1, [2, [3, {d: e}]]]}}\n",
    "duplicate keys": "a: 1\nb: 2\na: 3\n",
    "comments around the root": "/* head */ {\n  # c\n  a: 1 # c\n} // tail\n",
    "comment between key and colon": '{"a" /* c */ : 1, "b" # c\n : 2}',
    "comments between tokens": "{\n  a: /* c */ 1 /* d */, // e\n  b: [ /* f */ 1 /* g */ , 2 ]\n}",
    "block comment across lines": "a: 1\n/*\nb: 2\n*/\nc: 3\n",
    "form feed is not a separator": "a: \f5\nb: 5\f\nc: \fnull\nd: null\f\ne: \u00a0x\u00a0\n",
    "odd whitespace in keys": "a\f: 1\nb\f : 2\n",
    "control characters in quoteless": "a: x\x01y\n",
    "crlf": "{\r\n  a: 1\r\n  b: text  \r\n  c: '''\r\n    x\r\n    y\r\n    '''\r\n}\r\n",
    "lone cr ends a quoteless value": "a: x\rb: 2\n",
    "bom": "\ufeffa: 1\n",
    "deeply nested": "a: " + "[" * 100 + "]" * 100 + "\n",
}


@pytest.mark.parametrize("text", CORPUS.values(), ids=CORPUS.keys())
def test_data_equals_hjson(text: str) -> None:
    same_as_hjson(text)


INVALID = {
    "unclosed object": "{a: 1\n",
    "unclosed array": "a: [1, 2\nb: 3\n",
    "extra closing brace": "{a: 1}}",
    "double comma": "a: 1,,\nb: 2\n",
    "leading comma": "{, a: 1}",
    "key without colon": "a: 1\nfoo\nb: 2\n",
    "space in key": "a: 1\nmy key: 2\n",
    "empty key": "a: 1\n: 2\n",
    "unterminated string": 'a: 1\nb: "abc\nc: 2\n',
    "newline in string": 'a: "x\ny"\n',
    "tab in string": 'a: "x\ty"\nb: 1\n',
    "bad escape": 'a: "\\q"\nb: 1\n',
    "short unicode escape": 'a: "\\u12"\nb: 1\n',
    "unterminated multiline": "a: 1\nb: '''\n  x\n",
    "unterminated comment": "a: 1 /* x\n",
    "unterminated comment after a value": "a: 1\n/*\n",
    "missing value": "a: 1\nb:\n",
    "punctuator as value": "a: 1\nb: ,\n",
    "closing brace as value": "a: 1\nb: }\n",
    "quoteless swallows the brace": "a: {b: c}\nd: 1\n",
    "data after root": "{a: 1}\nb: 2\n",
    "data after root array": "[1] x",
    "quoted key without colon": '{"a" 1}',
    "root scalar then more": "5\n6\n",
    "huge number": "a: 1e400\n",
}


@pytest.mark.parametrize("text", INVALID.values(), ids=INVALID.keys())
def test_rejects_what_hjson_rejects(text: str) -> None:
    with pytest.raises(Exception):  # noqa: B017  # hjson-py raises HjsonDecodeError and sometimes crashes
        hjson.loads(text)
    with pytest.raises(ConfigError) as caught:
        loads(text)
    assert len(caught.value.issues) == 1


def test_same_data_and_verdict_as_hjson_on_random_texts() -> None:
    """A seeded soup of Hjson fragments: every text hjson-py accepts gives the same data, every text it
    refuses raises ConfigError."""
    fragments = [
        *"{}[],: \t\n", "\r\n", "\n  ", "a", "key", "my key", "1", "-1", "01", "1.5", "1.0", "1e3", "-0.0", ".5",
        "true", "null", "nul", "# c", "// c", "/* c */", "/*", "/", "'", '"', "'''", '"x"', "'y'", '"a\\nb"',
        '"\\ud83d\\ude00"', '"\\q"', "\\", "x y", "é", "\f", "a: 1", "b: [1, 2]", "c: {d: e}", "3 # x", "3 /x",
        "\n  '''\n  x\n   y\n  '''", "''''", "abc,def", "[a]", "x:y", '"k":', "5,", "\r", "-", "+1", "0x1",
    ]  # fmt: skip
    rng = random.Random(20240611)
    compared = accepted = 0
    while compared < 3000:
        text = "".join(rng.choice(fragments) for _ in range(rng.randint(1, 14)))
        if rng.random() < 0.3:
            text = "{" + text + "}"
        if "'''" in text.split("\n")[0]:
            continue  # a known difference, see test_differences_from_hjson_py
        compared += 1
        try:
            expected = json.dumps(hjson.loads(text))
        except Exception:  # its errors and its crashes both refuse the text
            with pytest.raises(ConfigError):
                loads(text)
            continue
        accepted += 1
        assert json.dumps(loads(text).data) == expected, repr(text)
    assert accepted > 300  # the soup must exercise acceptance too, not only errors


DEVICE = """\
# Kitchen node: temperature and humidity, a relay for the fan.
{
  name: kitchen
  board: esp32   // the generic ESP32 port
  /* Components are created in order.
     Each names a package and a class. */
  components: {
    htu: {
      package: sensors.htu21d
      component: HTU21D
      constructor_args: {
        i2c: i2c0
        precison_temp: 2    # typo on purpose
        precision_humid: 1
      }
    }
    fan: {
      package: switches.gpio
      component: GPIO
      constructor_args: { pin: 4 }
    }
  }
}
"""


def test_unknown_key_position_in_a_commented_device_file() -> None:
    doc = loads(DEVICE, "kitchen.hjson")
    args = ("components", "htu", "constructor_args")
    known = {"i2c", "precision_temp", "precision_humid", "interval"}
    unknown = [key for key in doc.data["components"]["htu"]["constructor_args"] if key not in known]
    assert unknown == ["precison_temp"]
    path = (*args, "precison_temp")
    assert doc.key_pos(path) == Position("kitchen.hjson", 13, 9)
    assert doc.value_pos(path) == Position("kitchen.hjson", 13, 24)
    issue = doc.issue(path, "unknown argument" + did_you_mean("precison_temp", known))
    assert str(issue) == (
        "kitchen.hjson:13:9: components.htu.constructor_args.precison_temp: "
        "unknown argument (did you mean precision_temp?)"
    )


def test_positions_point_at_keys_and_values() -> None:
    doc = loads(DEVICE)
    assert doc.key_pos(("name",)) == Position("<string>", 3, 3)
    assert doc.value_pos(("name",)) == Position("<string>", 3, 9)
    assert doc.value_pos(("board",)) == Position("<string>", 4, 10)
    assert doc.value_pos(("components",)) == Position("<string>", 7, 15)
    assert doc.key_pos(("components", "fan")) == Position("<string>", 17, 5)
    assert doc.data["components"]["fan"]["constructor_args"] == {"pin": 4}  # a number ends at the `}`
    assert doc.value_pos(("components", "fan", "constructor_args")) == Position("<string>", 20, 25)
    assert doc.value_pos(()) == Position("<string>", 2, 1)


@pytest.mark.parametrize("text", [DEVICE, *CORPUS.values()], ids=["device", *CORPUS.keys()])
def test_every_position_lands_on_its_token(text: str) -> None:
    doc = loads(text)
    body = text.removeprefix("\ufeff")
    for path in _paths(doc.data):
        key_at = _offset(body, doc.key_pos(path))
        value_at = _offset(body, doc.value_pos(path))
        value = doc.data
        for step in path:
            value = value[step]
        if isinstance(path[-1], str):
            assert body[key_at] in "\"'" or body.startswith(path[-1].rstrip(), key_at), path
            assert key_at < value_at
        else:
            assert key_at == value_at
        first = body[value_at]
        if isinstance(value, dict):
            assert first == "{", path
        elif isinstance(value, list):
            assert first == "[", path
        elif value is True or value is False or value is None:
            assert body.startswith(json.dumps(value), value_at), path
        elif isinstance(value, int | float):
            assert first in "-0123456789", path
        elif first not in "\"'":
            assert body[value_at:].strip().startswith(value[:1]), path


def test_key_path_with_list_indices() -> None:
    text = 'sensors: [\n  {name: "a", pins: [1, 2]}\n  {\n    name: b\n    pins: [\n      3\n      4\n    ]\n  }\n]\n'
    doc = loads(text, "d.hjson")
    assert doc.data["sensors"][1] == {"name": "b", "pins": [3, 4]}
    assert doc.key_pos(("sensors", 1)) == doc.value_pos(("sensors", 1)) == Position("d.hjson", 3, 3)
    assert doc.key_pos(("sensors", 1, "pins")) == Position("d.hjson", 5, 5)
    assert doc.value_pos(("sensors", 1, "pins", 1)) == Position("d.hjson", 7, 7)
    assert doc.pos(("sensors", 1, "pins", 1)) == Position("d.hjson", 7, 7)
    issue = doc.issue(("sensors", 1, "pins", 1), "pin 4 is taken")
    assert str(issue) == "d.hjson:7:7: sensors[1].pins[1]: pin 4 is taken"
    assert doc.pos(("sensors", 0)) == Position("d.hjson", 2, 3)


def test_pos_falls_back_to_the_nearest_parent() -> None:
    doc = loads(DEVICE, "k.hjson")
    htu = ("components", "htu")
    assert doc.pos((*htu, "constructor_args", "interval")) == doc.key_pos((*htu, "constructor_args"))
    assert doc.pos((*htu, "nope", "deeper", 3)) == doc.key_pos(htu)
    assert doc.pos(("missing",)) == doc.value_pos(()) == Position("k.hjson", 2, 1)
    assert doc.pos(("name", "under a string")) == doc.key_pos(("name",))
    assert doc.pos((*htu, 0)) == doc.key_pos(htu)  # an index into an object does not exist either
    assert str(doc.issue((*htu, "constructor_args", "interval"), "required")) == (
        "k.hjson:11:7: components.htu.constructor_args.interval: required"
    )
    with pytest.raises(KeyError):
        doc.key_pos((*htu, "nope"))
    with pytest.raises(KeyError):
        doc.value_pos(("components", 0))
    assert loads("").pos(("x",)) == Position("<string>", 1, 1)


def test_list_item_pos_is_the_value_pos() -> None:
    doc = loads("a: [\n  x\n  {b: 1}\n]\n")
    assert doc.pos(("a", 1)) == doc.value_pos(("a", 1)) == Position("<string>", 3, 3)
    assert doc.pos(("a", 5)) == doc.key_pos(("a",))
    assert doc.pos(("a", -1)) == doc.key_pos(("a",))


@pytest.mark.parametrize(
    ("text", "line", "col", "path", "message"),
    [
        ("a: 1\nfoo\nb: 2\n", 2, 4, "", "expected ':' after key 'foo'"),
        ("a: 1\nmy key: 2\n", 2, 3, "", "expected ':' after key 'my' (keys with spaces need quotes)"),
        ("a: 1\n: 2\n", 2, 1, "", "missing key name before ':'"),
        ('{"a" 1}', 1, 6, "", "expected ':' after key 'a', found '1'"),
        ("{\n  a: 1\n", 3, 1, "", "missing '}' to close the '{' at line 1, col 1"),
        ("a: {\n  b: [\n    1\n", 4, 1, "a.b", "missing ']' to close the '[' at line 2, col 6"),
        ("a: {b: 1}\n}\n", 2, 1, "", "unexpected '}'"),
        ("{a: 1}\n}", 2, 1, "", "unexpected '}' after the end of the document"),
        ("a: 1,,\nb: 2\n", 1, 6, "", "unexpected ','"),
        ("a: 1\nb: {\n  c: \n}\n", 4, 1, "b.c", "expected a value, found '}'"),
        ("a: 1\nb:\n", 3, 1, "b", "expected a value, found end of input"),
        ('x: 1\nname: "kitchen\nboard: esp32\n', 2, 7, "name", "unterminated string"),
        ('x: 1\na: "tab\there"\n', 2, 8, "a", "control character '\\t' in a string"),
        ('x: 1\nl: [1, "\\x41"]\n', 2, 9, "l[1]", "invalid escape '\\\\x'"),
        ('x: 1\na: "\\u12G4"\n', 2, 5, "a", "invalid \\u escape"),
        ("x: 1\na: {\n  b: '''\n  text\n", 3, 6, "a.b", "unterminated ''' string"),
        ("a: 1\n/* never closed\nb: 2\n", 2, 1, "", "unterminated /* comment"),
        ("a: 1e999\n", 1, 4, "a", "number out of range"),
    ],
)
def test_syntax_error_positions(text: str, line: int, col: int, path: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        loads(text, "bad.hjson")
    (issue,) = caught.value.issues
    assert issue.pos == Position("bad.hjson", line, col)
    assert issue.path == path
    assert issue.message.startswith(message)


def test_nesting_limit_is_an_error_not_a_crash() -> None:
    with pytest.raises(ConfigError) as caught:
        loads("a: " + "[" * 1000 + "]" * 1000 + "\n")
    (issue,) = caught.value.issues
    assert issue.pos.col == len("a: ") + 256  # the root object and 255 arrays are allowed, not one more
    assert "nested more than 256 levels" in issue.message


def test_multiline_strings() -> None:
    text = (
        "{\n"
        "  plain:\n"
        "    '''\n"
        "    first\n"
        "      indented\n"
        "\n"
        "    last\n"
        "    '''\n"
        "  same_line: '''kept   \n"
        "             next'''\n"
        "  quotes: '''it's '' fine'''\n"
        "  shallow:\n"
        "      '''\n"
        "    less indented than the quotes\n"
        "      '''\n"
        "}\n"
    )
    data = same_as_hjson(text)
    assert data["plain"] == "first\n  indented\n\nlast"
    assert data["same_line"] == "kept   \nnext"
    assert data["quotes"] == "it's '' fine"
    assert data["shallow"] == "less indented than the quotes"
    doc = loads(text)
    assert doc.value_pos(("plain",)) == Position("<string>", 3, 5)
    assert doc.key_pos(("same_line",)) == Position("<string>", 9, 3)
    assert doc.key_pos(("quotes",)) == Position("<string>", 11, 3)  # lines after a multiline string count right


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3", 3),
        ("3 # comment", 3),
        ("3 // comment", 3),
        ("3 /* comment */", 3),
        ("3,", 3),
        ("-1.5", -1.5),
        ("1.0", 1),
        ("1e3", 1000),
        ("1.5e10", 15000000000.0),
        ("3 apples # not a comment", "3 apples # not a comment"),
        ("3 / 4", "3 / 4"),
        ("01", "01"),
        ("1.", "1."),
        ("true", True),
        ("true # yes", True),
        ("truely", "truely"),
        ("null", None),
        ("nullify", "nullify"),
        ("hello, world", "hello, world"),
        ("http://example.com/x", "http://example.com/x"),
        ("a # b // c", "a # b // c"),
        ("  padded   ", "padded"),
        ("x}", "x}"),
        ("{not an object", None),  # a syntax error: see below
    ],
)
def test_quoteless_values(value: str, expected: Any) -> None:
    text = f"k: {value}\nend: 1\n"
    if expected is None and value.startswith("{"):
        with pytest.raises(ConfigError):
            loads(text)
        return
    data = same_as_hjson(text)
    assert data["k"] == expected
    assert type(data["k"]) is type(expected)
    assert data["end"] == 1


def test_windows_line_endings() -> None:
    crlf = DEVICE.replace("\n", "\r\n")
    assert same_as_hjson(crlf) == loads(DEVICE).data
    lf_doc, crlf_doc = loads(DEVICE), loads(crlf)
    for path in _paths(lf_doc.data):
        assert crlf_doc.key_pos(path) == lf_doc.key_pos(path)
        assert crlf_doc.value_pos(path) == lf_doc.value_pos(path)
    text = "a:\r\n  '''\r\n  one\r\n    two\r\n  '''\r\nb: x \r\n"
    assert same_as_hjson(text) == {"a": "one\n  two", "b": "x"}
    with pytest.raises(ConfigError) as caught:
        loads("a: 1\r\nb: [\r\n  1\r\n  }\r\n")
    assert caught.value.issues[0].pos == Position("<string>", 4, 3)


def test_load_reads_utf8_and_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "node.hjson"
    path.write_bytes("\ufeff# ünïcode\r\nname: Küche\r\n  oops\r\n".encode())
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert str(caught.value) == f"{path}:3:7: expected ':' after key 'oops'"
    path.write_text("# ünïcode\nname: Küche\n", encoding="utf-8")
    doc = load(str(path))
    assert isinstance(doc, Document)
    assert doc.data == {"name": "Küche"}
    assert doc.key_pos(("name",)) == Position(str(path), 2, 1)


def test_duplicate_keys_keep_the_later_value_and_are_reported() -> None:
    doc = loads("a: 1\nb: {\n  c: 1\n  c: [2]\n}\na: 3\n", "dup.hjson")
    assert doc.data == {"a": 3, "b": {"c": [2]}}
    assert list(doc.data) == ["a", "b"]  # the first occurrence's place, the later value (as hjson-py)
    assert doc.key_pos(("a",)) == Position("dup.hjson", 6, 1)
    assert doc.value_pos(("b", "c", 0)) == Position("dup.hjson", 4, 7)
    assert [str(i) for i in doc.duplicates] == [
        "dup.hjson:4:3: b.c: duplicate key, overrides the one at dup.hjson:3:3",
        "dup.hjson:6:1: a: duplicate key, overrides the one at dup.hjson:1:1",
    ]
    assert loads(DEVICE).duplicates == []


def test_a_duplicate_drops_the_positions_of_the_value_it_replaces() -> None:
    doc = loads("a: {b: 1}\na: 2\n")
    assert doc.pos(("a", "b")) == doc.key_pos(("a",)) == Position("<string>", 2, 1)
    with pytest.raises(KeyError):
        doc.key_pos(("a", "b"))


def test_format_path() -> None:
    assert format_path(()) == ""
    assert format_path(("a",)) == "a"
    assert format_path(("components", "htu", "args")) == "components.htu.args"
    assert format_path(("sensors", 3, "pins", 0)) == "sensors[3].pins[0]"
    assert format_path((2, "x")) == "[2].x"


def test_differences_from_hjson_py() -> None:
    """Where hjson-py 3.1 is wrong or crashes, we do the sensible thing (see the module's notes)."""
    # A ''' string on the first line: hjson-py measures its indent from the text's *last* line (an index
    # wraps around); we use the column of the quotes, as for any other line.
    assert loads("'''\n  ml\n   text\n  '''").data == "  ml\n   text\n  "
    assert hjson.loads("'''\n  ml\n   text\n  '''") == "ml\ntext"
    assert loads("a: '''x'''").data == {"a": "x"}  # hjson-py: IndexError when the text has no newline
    # \u takes exactly 4 hex digits; hjson-py lets int() accept a sign, underscores or spaces.
    assert hjson.loads('a: "\\u+04A"') == {"a": "J"}
    with pytest.raises(ConfigError):
        loads('a: "\\u+04A"\nb: 1\n')
    # A byte order mark alone is an empty document; hjson-py reports a missing key name.
    assert loads("\ufeff").data == {}


def test_get_follows_a_path_or_gives_none() -> None:
    doc = loads("{\n  a: { b: [1, {c: 2}] }\n}\n")
    assert doc.get(("a", "b", 1, "c")) == 2 and doc.get(("a", "b", 0)) == 1 and doc.get(()) == doc.data
    assert doc.get(("a", "x")) is None and doc.get(("a", "b", 5)) is None and doc.get(("a", "b", "c")) is None
