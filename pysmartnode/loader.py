# The component loader: builds the components a config names (docs/NODE.md "Config format"), each in its
# own error boundary, and checks a config before it is applied.
import gc
from pysmartnode import log as _log

_log_l = _log.get("loader")
KEYS = ("package", "component", "constructor_args", "init_function", "init_args",
        "call_function_regularly", "call_interval")
RESERVED = ("set", "status", "info", "cmd", "config")


def module_name(package):
    """A leading "." names our `components` package."""
    return "components" + package if package[:1] == "." else package


def resolve(spec):
    """The class or function a component spec names; ImportError/AttributeError when it is not there."""
    name = module_name(spec["package"])
    mod = __import__(name)
    for part in name.split(".")[1:]:
        mod = getattr(mod, part)
    return mod, getattr(mod, spec["component"])


def order(config):
    o = config.get("_order")
    return o if o is not None else [k for k in config if k[:1] != "_"]


def _valid_name(n):
    if not isinstance(n, str) or not 1 <= len(n) <= 32 or n in RESERVED:
        return False
    for c in n:
        if not ("a" <= c <= "z" or "0" <= c <= "9" or c in "_-"):
            return False
    return True


def check(config, imports=True):
    """Every problem of a config as a list of strings (empty: it can be applied)."""
    errs = []
    if not isinstance(config, dict):
        return ["config must be a JSON object"]
    names = order(config)
    if not isinstance(names, list):
        return ["_order must be a list of component names"]
    seen = set()
    for n in names:
        if not _valid_name(n):
            errs.append("%r: not a valid component name ([a-z0-9_-]{1,32}, not %s)" % (n, "/".join(RESERVED)))
            continue
        if n in seen:
            errs.append("%s: listed twice in _order" % n)
        seen.add(n)
        spec = config.get(n)
        if not isinstance(spec, dict):
            errs.append("%s: missing or not an object" % n)
            continue
        for k in spec:
            if k not in KEYS:
                errs.append("%s: unknown key %r" % (n, k))
        for k in ("package", "component"):
            if not isinstance(spec.get(k), str) or not spec.get(k):
                errs.append("%s.%s: required, a string" % (n, k))
        if not isinstance(spec.get("constructor_args", {}), (dict, list)):
            errs.append("%s.constructor_args: must be an object or a list" % n)
        if not isinstance(spec.get("init_args", []), list):
            errs.append("%s.init_args: must be a list" % n)
        ci = spec.get("call_interval", 1)
        if not isinstance(ci, (int, float)) or ci <= 0:
            errs.append("%s.call_interval: must be a number of seconds > 0" % n)
        for k in ("init_function", "call_function_regularly"):
            if k in spec and not isinstance(spec[k], str):
                errs.append("%s.%s: must be a string" % (n, k))
    for k in config:
        if k[:1] != "_" and k not in seen:
            errs.append("%s: not in _order" % k)
    if imports and not errs:
        for n in names:
            try:
                resolve(config[n])
            except Exception as e:
                errs.append("%s: %s.%s: %s" % (n, config[n]["package"], config[n]["component"], _log.describe(e)))
            gc.collect()
    return errs


def _arg(v, objects):
    return objects[v] if isinstance(v, str) and v in objects else v


def load(config, node):
    """Build every component of `config` in `_order`; fills node.versions and node.failed."""
    objects = node.objects
    from pysmartnode.component import Component
    for name in order(config):
        gc.collect()
        spec = config.get(name)
        try:
            if not isinstance(spec, dict):
                raise ValueError("no spec for %r" % name)
            mod, obj = resolve(spec)
            args = spec.get("constructor_args") or {}
            is_comp = isinstance(obj, type) and issubclass(obj, Component)
            if isinstance(args, dict):
                kw = {k: _arg(v, objects) for k, v in args.items()}
                pos = [name] if is_comp else []
            else:
                kw = {}
                pos = ([name] if is_comp else []) + [_arg(v, objects) for v in args]
            made = obj(*pos, **kw)
            if _is_coro(made):  # a service: a coroutine function runs as a task, restarted if it fails
                node.spawn(name, made, lambda o=obj, p=pos, k=kw: o(*p, **k))
            objects[name] = made
            fn = spec.get("init_function")
            if fn:
                f = getattr(made, fn)
                ia = [_arg(v, objects) for v in spec.get("init_args", ())]
                r = f(*ia)
                if _is_coro(r):
                    node.spawn(name, r, f, None, ia)
            fn = spec.get("call_function_regularly")
            if fn:
                node.spawn(name, None, getattr(made, fn), spec.get("call_interval") or node.settings.interval)
            node.versions[name] = getattr(made, "__version__", None) or getattr(mod, "__version__", "")
            _log_l.info("loaded %s" % name)
        except Exception as e:
            node.components.pop(name, None)
            objects.pop(name, None)
            node.failed[name] = _log.describe(e)
            _log_l.exception(e, "%s did not load" % name)
    gc.collect()


def _is_coro(x):
    return type(x).__name__ in ("generator", "coroutine")
