# Where a JSON text goes wrong, as "line:col: what", for the error of a local config file (MicroPython's
# json says only "syntax error in JSON"). Loaded only when a file fails to parse.

_WS = " \t\r\n"


class _Bad(Exception):
    pass


def locate(text):
    """`line:col: message` of the first error in `text`, or None when it parses."""
    try:
        i = _value(text, _ws(text, 0))
        i = _ws(text, i)
        if i < len(text):
            raise _Bad(i, "unexpected text after the end")
        return None
    except _Bad as e:
        pos, msg = e.args
        line = text.count("\n", 0, pos) + 1
        col = pos - (text.rfind("\n", 0, pos) + 1) + 1
        return "%d:%d: %s" % (line, col, msg)


def _ws(t, i):
    while i < len(t) and t[i] in _WS:
        i += 1
    return i


def _value(t, i):
    if i >= len(t):
        raise _Bad(i, "unexpected end of text")
    c = t[i]
    if c == "{":
        return _container(t, i, "}", True)
    if c == "[":
        return _container(t, i, "]", False)
    if c == '"':
        return _string(t, i)
    for word in ("true", "false", "null"):
        if t.startswith(word, i):
            return i + len(word)
    j = i
    while j < len(t) and t[j] in "+-0123456789.eE":
        j += 1
    if j > i:
        try:
            float(t[i:j])
        except ValueError:
            raise _Bad(i, "bad number %r" % t[i:j])
        return j
    raise _Bad(i, "unexpected %r" % c)


def _string(t, i):
    j = i + 1
    while j < len(t):
        if t[j] == "\\":
            j += 2
            continue
        if t[j] == '"':
            return j + 1
        if t[j] == "\n":
            break
        j += 1
    raise _Bad(i, "string not closed")


def _container(t, i, close, is_obj):
    i = _ws(t, i + 1)
    if i < len(t) and t[i] == close:
        return i + 1
    while True:
        if is_obj:
            if i >= len(t) or t[i] != '"':
                raise _Bad(i, "expected a key in double quotes")
            i = _ws(t, _string(t, i))
            if i >= len(t) or t[i] != ":":
                raise _Bad(i, "expected ':' after the key")
            i = _ws(t, i + 1)
        i = _ws(t, _value(t, i))
        if i < len(t) and t[i] == ",":
            i = _ws(t, i + 1)
            if i < len(t) and t[i] == close:
                raise _Bad(i, "a comma before %r" % close)
            continue
        if i < len(t) and t[i] == close:
            return i + 1
        raise _Bad(i, "expected ',' or %r" % close)
