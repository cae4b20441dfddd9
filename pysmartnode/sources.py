# The local config sources, best first (docs/NODE.md "Which config runs"). A config is handed to the
# loader as (names in load order, spec(name) function), so folder configs are read one spec at a time.
import os
from pysmartnode import log as _log
from pysmartnode.confx import CUR, exists, read_json, dir_spec

_l = _log.get("config")


def _dict(cfg):
    if not isinstance(cfg, dict):
        raise ValueError("must be a JSON object")
    o = cfg.get("_order")
    return (o if o is not None else [k for k in cfg if k[:1] != "_"]), cfg.get


def _folder(path):
    try:
        order = read_json(path + "/_order.json")
    except OSError:
        order = sorted(f[:-5] for f in os.listdir(path) if f.endswith(".json") and f[:1] != "_")
    return order, dir_spec(path)


def load():
    """(names, spec function, source name), or (None, None, None) when the node has no local config."""
    for src, make in ((CUR, _folder), ("components.json", lambda p: _dict(read_json(p))),
                      ("components.d", _folder)):
        if exists(src):
            try:
                names, spec = make(src)
                if not isinstance(names, list):
                    raise ValueError("_order must be a list of names")
                return names, spec, src
            except (OSError, ValueError) as e:  # the next source runs; the error names file:line:col
                _l.error("config %s not used: %s" % (src, e))
    if exists("local_components.py"):
        try:
            import local_components
            return _dict(getattr(local_components, "COMPONENTS", {})) + ("local_components.py",)
        except Exception as e:
            _l.exception(e, "local_components.py")
    return None, None, None
