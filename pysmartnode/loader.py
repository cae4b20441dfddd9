# The component loader: builds the components a config names (docs/NODE.md "Config format"), each in its
# own error boundary. (The check of a config from the server is in confrx.)
import gc
from pysmartnode import log as _log

_log_l = _log.get("loader")


def module_name(package):
    """A leading "." names our `components` package."""
    return "components" + package if package[:1] == "." else package


def resolve(spec):
    """The class or function a component spec names; ImportError/AttributeError when it is not there."""
    for k in ("package", "component"):
        if not isinstance(spec.get(k), str):
            raise ValueError("%s: required, a string" % k)
    name = module_name(spec["package"])
    mod = __import__(name)
    for part in name.split(".")[1:]:
        mod = getattr(mod, part)
    return mod, getattr(mod, spec["component"])


def _arg(v, node):
    if isinstance(v, str):
        if v in node.objects:
            return node.objects[v]
        if v in node.failed:
            raise ValueError("needs %s, which did not load" % v)
    return v


def load(names, get_spec, node):
    """Build the components `names` in order, each from `get_spec(name)`; fills node.objects,
    node.versions and node.failed."""
    objects = node.objects
    from pysmartnode.component import Component
    for name in names:
        gc.collect()
        try:
            spec = get_spec(name)
            if not isinstance(spec, dict):
                raise ValueError("no spec for %r" % name)
            mod, obj = resolve(spec)
            args = spec.get("constructor_args") or {}
            is_comp = isinstance(obj, type) and issubclass(obj, Component)
            if isinstance(args, dict):
                kw = {k: _arg(v, node) for k, v in args.items()}
                pos = [name] if is_comp else []
            else:
                kw = {}
                pos = ([name] if is_comp else []) + [_arg(v, node) for v in args]
            made = obj(*pos, **kw)
            if _is_coro(made):  # a service: a coroutine function runs as a task, restarted if it fails
                node.spawn(name, made, obj, None, pos, kw)
            objects[name] = made
            fn = spec.get("init_function")
            if fn:
                f = getattr(made, fn)
                ia = [_arg(v, node) for v in spec.get("init_args", ())]
                r = f(*ia)
                if _is_coro(r):
                    node.spawn(name, r, f, None, ia)
            fn = spec.get("call_function_regularly")
            if fn:
                node.spawn(name, None, getattr(made, fn), spec.get("call_interval") or node.settings.interval)
            node.versions[name] = getattr(made, "__version__", None) or getattr(mod, "__version__", "")
            _log_l.debug("loaded %s" % name)
        except Exception as e:
            node.components.pop(name, None)
            objects.pop(name, None)
            node.failed[name] = _log.describe(e)
            _log_l.exception(e, "%s did not load" % name)
    gc.collect()
    _log_l.info("loaded %d of %d components%s" % (len(names) - len(node.failed), len(names),
                                                  ", failed: " + ", ".join(node.failed) if node.failed else ""))


def _is_coro(x):
    return type(x).__name__ in ("generator", "coroutine")
