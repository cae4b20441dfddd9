# The local config sources, best first (docs/NODE.md "Which config runs").
import os
from pysmartnode import log as _log
from pysmartnode import confx

_l = _log.get("config")


def load(node):
    """(components config, source name), or (None, None) when the node has no local config."""
    if confx.exists(confx.CUR + "/_order.json"):
        try:
            settings, cfg = confx.load_dir(confx.CUR)
            return cfg, confx.CUR
        except (OSError, ValueError) as e:
            _l.error("%s: %s" % (confx.CUR, _log.describe(e)))
    if confx.exists("components.json"):
        try:
            return confx.read_json("components.json"), "components.json"
        except (OSError, ValueError) as e:
            _l.error("components.json: %s" % _log.describe(e))
    if confx.exists("components.d"):
        try:
            return _load_d("components.d"), "components.d"
        except (OSError, ValueError) as e:
            _l.error("components.d: %s" % _log.describe(e))
    if confx.exists("local_components.py"):
        try:
            import local_components
            return getattr(local_components, "COMPONENTS", {}), "local_components.py"
        except Exception as e:
            _l.exception(e, "local_components.py")
    return None, None


def _load_d(path):
    names = [f[:-5] for f in os.listdir(path) if f.endswith(".json") and f != "_order.json"]
    try:
        order = confx.read_json(path + "/_order.json")
    except OSError:
        order = sorted(names)
    cfg = {"_order": order}
    for name in order:
        try:
            cfg[name] = confx.read_json("%s/%s.json" % (path, name))
        except ValueError as e:
            raise ValueError("%s/%s.json: %s" % (path, name, e))
        except OSError:
            pass  # the loader reports the missing spec
    return cfg
