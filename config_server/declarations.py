"""What arguments each component takes, read from its source with `ast`, never by running MicroPython.

The convention (docs/CONFIG_SERVER.md, "Component declarations"):

- A device file's `package` names a module: `.sensors.bme280` is `components/sensors/bme280.py` (or
  `…/bme280/__init__.py`); a name without the leading dot is a module path from the library root.
- `component` names a class or a (async) function defined at the top of that module. Its signature is
  its declaration: for a class, `__init__` (inherited from its base when it has none); for a function,
  its own.
- An argument's type comes from an annotation (`x: int = 3`), else a `# type: X` comment at the end of
  the line where the argument starts (it belongs to the last argument starting on that line), else its
  default (`3` and `2.5` are a number, `True` bool, `"a"` str, `[]` list, `{}` dict; `None` says nothing).
  Types: int, float (or number: either), bool, str, list, dict, pin, component, any,
  a capitalised class name (a reference to another component, e.g. `I2C`), and `X|None`.
- Arguments named `pin`, `pin_<x>` or `pin<N>` are pins (an int GPIO number or a board pin name).
- `**kwargs` in a class means "and the arguments the base class declares" (the base's `__init__`,
  followed through imports in the library); in a function, or when the base cannot be found, any
  further argument is accepted.
"""

from __future__ import annotations

import ast
import io
import os
import re
import tokenize
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
"""The default of a required argument."""

TYPES = frozenset({"int", "float", "number", "bool", "str", "list", "dict", "pin", "component", "any"})
_TYPE_COMMENT = re.compile(r"#\s*type:\s*([^#]+)")
_PIN_NAME = re.compile(r"pin(_\w+|\d+)?")


def is_pin_name(name: str) -> bool:
    return _PIN_NAME.fullmatch(name) is not None


@dataclass
class DeclarationError(Exception):
    """A component's declaration could not be read; `message` says why (it names the source file)."""

    message: str

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Arg:
    """One declared argument."""

    name: str
    type: str  # one of TYPES
    default: Any = MISSING  # the default's value where it is a literal; MISSING when required
    nullable: bool = False  # None is allowed (default None, or `X|None`)
    file: str = ""
    line: int = 0

    @property
    def required(self) -> bool:
        return self.default is MISSING


@dataclass
class Declaration:
    """A component's declared arguments, in positional order."""

    package: str
    name: str
    file: Path
    line: int
    kind: str  # "class" or "function"
    args: list[Arg] = field(default_factory=list)
    open: bool = False  # accepts keyword arguments it does not list (unresolved **kwargs)
    varargs: bool = False  # accepts extra positional arguments (*args)
    methods: frozenset[str] | None = frozenset()  # None when some base class could not be read
    named: bool = False  # a subclass of the node's Component: the loader passes the name first
    version: str | None = None

    def arg(self, name: str) -> Arg | None:
        for a in self.args:
            if a.name == name:
                return a
        return None


@dataclass
class _Module:
    name: str
    file: Path
    tree: ast.Module
    comments: dict[int, str]  # line -> the `# type:` text on it
    defs: dict[str, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef]
    imports: dict[str, tuple[str, str | None]]  # local name -> (module, attribute or None for a module)
    version: str | None


class Library:
    """The component library under `root` (which holds `components/` and the `pysmartnode/` base classes).

    Modules are parsed once and re-parsed when their file changes (`refresh`). A subclass of `base` (the
    node's `Component`) is constructed as `cls(name, **constructor_args)`: its first argument is not the
    config's to give.
    """

    def __init__(self, root: Path = REPO, package: str = "components",
                 base: tuple[str, str] = ("pysmartnode.component", "Component")) -> None:
        self.root = Path(root)
        self.package = package
        self.base = base
        self._modules: dict[Path, tuple[int, _Module]] = {}
        self._decls: dict[tuple[str, str], Declaration | DeclarationError] = {}
        self._last_stamp: frozenset[tuple[str, int]] | None = None

    def refresh(self) -> bool:
        """Forget everything read if a source file of the library was added, changed or removed since the
        last call; True when something was (then every device deserves a new check)."""
        stamp = self._stamp()
        if stamp == self._last_stamp:
            return False
        self._last_stamp = stamp
        self._modules.clear()
        self._decls.clear()
        return True

    def _stamp(self) -> frozenset[tuple[str, int]]:
        found: set[tuple[str, int]] = set()
        folders = [self.root / self.package, self.root / self.base[0].split(".")[0]]
        while folders:
            try:
                entries = list(os.scandir(folders.pop()))
            except OSError:
                continue
            for e in entries:
                if e.is_dir() and not e.name.startswith((".", "_")):
                    folders.append(Path(e.path))
                elif e.name.endswith(".py"):
                    found.add((e.path, e.stat().st_mtime_ns))
        return frozenset(found)

    def module_name(self, package: str) -> str:
        """`.sensors.bme280` -> `components.sensors.bme280`; other names stay as they are."""
        return f"{self.package}{package}" if package.startswith(".") else package

    def module_file(self, module: str) -> Path | None:
        if not module or not all(part.isidentifier() for part in module.split(".")):
            return None
        base = self.root.joinpath(*module.split("."))
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
        return None

    def packages(self) -> list[str]:
        """Every component module, written as a device file would (`.sensors.bme280`)."""
        top = self.root / self.package
        found = []
        for path in sorted(top.rglob("*.py")):
            rel = path.relative_to(top).with_suffix("")
            # manifest.py is MicroPython's freeze manifest of a folder, not a module a device can name
            if path.name != "manifest.py" and not any(p.startswith("_") for p in rel.parts):
                found.append("." + ".".join(rel.parts))
        return found

    def names(self, package: str) -> list[str]:
        """The classes and functions defined at the top of a component module."""
        module = self._module(self.module_name(package))
        return [] if module is None else [n for n in module.defs if not n.startswith("_")]

    def declaration(self, package: str, name: str) -> Declaration:
        """The declaration of `name` in `package`; DeclarationError when there is none or it cannot be read."""
        key = (package, name)
        if key not in self._decls:
            try:
                self._decls[key] = self._declare(package, name)
            except DeclarationError as e:
                self._decls[key] = e
        found = self._decls[key]
        if isinstance(found, DeclarationError):
            raise found
        return found

    def _declare(self, package: str, name: str) -> Declaration:
        module_name = self.module_name(package)
        module = self._module(module_name)
        if module is None:
            raise DeclarationError(f"no module {module_name} under {self.root}")
        node = module.defs.get(name)
        if node is None:
            raise DeclarationError(f"{module.file.name} defines no class or function {name!r}")
        if isinstance(node, ast.ClassDef):
            decl = self._class(module, node, set())
            if decl.named and decl.args:
                decl.args = decl.args[1:]  # the loader passes the component's name
        else:
            decl = Declaration(package, name, module.file, node.lineno, "function")
            _read_signature(module, node, decl, skip_self=False)
            decl.open = decl.open or node.args.kwarg is not None
            decl.methods = frozenset()
        decl.package, decl.name, decl.version = package, name, module.version
        return decl

    def _class(self, module: _Module, node: ast.ClassDef, seen: set[tuple[Path, str]]) -> Declaration:
        if (module.file, node.name) in seen:
            raise DeclarationError(f"{module.file}:{node.lineno}: class {node.name} inherits from itself")
        seen = seen | {(module.file, node.name)}
        decl = Declaration("", node.name, module.file, node.lineno, "class")
        decl.named = (module.name, node.name) == self.base
        methods = {n.name for n in node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
        init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
        base = self._base(module, node, seen)
        unreadable_base = base is None and _has_base(node)
        if init is not None:
            _read_signature(module, init, decl, skip_self=True)
            if init.args.kwarg is not None:
                if base is None:
                    decl.open = True
                else:
                    own = {a.name for a in decl.args}
                    decl.args += [a for a in base.args if a.name not in own]
                    decl.open = base.open
        elif base is not None:
            decl.args, decl.open, decl.varargs = list(base.args), base.open, base.varargs
        elif unreadable_base:
            decl.open = decl.varargs = True  # an unreadable base's __init__: anything may be right
        decl.named = decl.named or (base is not None and base.named)
        if unreadable_base or (base is not None and base.methods is None):
            decl.methods = None
        else:
            decl.methods = frozenset(methods | (base.methods or set() if base else set()))
        return decl

    def _base(self, module: _Module, node: ast.ClassDef, seen: set[tuple[Path, str]]) -> Declaration | None:
        """The declaration of the first base class, None when it has none or it is outside the library."""
        if not _has_base(node):
            return None
        target = node.bases[0]
        if isinstance(target, ast.Name):
            local = module.defs.get(target.id)
            if isinstance(local, ast.ClassDef):
                return self._class(module, local, seen)
            where = module.imports.get(target.id)
            if where is None:
                return None
            mod_name, attr = where
            if attr is None:
                return None
        elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name):
            where = module.imports.get(target.value.id)
            if where is None:
                return None
            mod_name = where[0] if where[1] is None else f"{where[0]}.{where[1]}"
            attr = target.attr
        else:
            return None
        other = self._module(mod_name)
        if other is None:
            return None
        base_node = other.defs.get(attr)
        if isinstance(base_node, ast.ClassDef):
            return self._class(other, base_node, seen)
        if attr in other.imports:  # re-exported from another module
            mod2, attr2 = other.imports[attr]
            third = self._module(mod2) if attr2 else None
            node2 = third.defs.get(attr2) if third and attr2 else None
            if third and isinstance(node2, ast.ClassDef):
                return self._class(third, node2, seen)
        return None

    def _module(self, name: str) -> _Module | None:
        path = self.module_file(name)
        if path is None:
            return None
        mtime = path.stat().st_mtime_ns
        cached = self._modules.get(path)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        source = path.read_text(encoding="utf-8")
        try:
            tree = ast.parse(source, filename=str(path))
        except SyntaxError as e:
            raise DeclarationError(f"{path}:{e.lineno}:{e.offset}: cannot read the component: {e.msg}") from None
        module = _Module(name, path, tree, _type_comments(source), {}, {}, None)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for stmt in tree.body:
            if isinstance(stmt, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                module.defs[stmt.name] = stmt
            elif isinstance(stmt, ast.ImportFrom):
                base = _absolute(package, stmt.module, stmt.level)
                for alias in stmt.names:
                    module.imports[alias.asname or alias.name] = (base, alias.name)
            elif isinstance(stmt, ast.Import):
                for alias in stmt.names:
                    if alias.asname:
                        module.imports[alias.asname] = (alias.name, None)
                    else:
                        top = alias.name.split(".")[0]
                        module.imports[top] = (top, None)
            elif (isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Constant)
                  and isinstance(stmt.value.value, str)
                  and any(isinstance(t, ast.Name) and t.id == "__version__" for t in stmt.targets)):
                module.version = stmt.value.value
        self._modules[path] = (mtime, module)
        return module


def _has_base(node: ast.ClassDef) -> bool:
    return bool(node.bases) and not (isinstance(node.bases[0], ast.Name) and node.bases[0].id == "object")


def _absolute(package: str, module: str | None, level: int) -> str:
    if level == 0:
        return module or ""
    parts = package.split(".") if package else []
    parts = parts[: len(parts) - (level - 1)] if level > 1 else parts
    return ".".join([*parts, module] if module else parts)


def _type_comments(source: str) -> dict[int, str]:
    found: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT and (m := _TYPE_COMMENT.match(tok.string)):
                found[tok.start[0]] = m[1].strip()
    except (tokenize.TokenError, SyntaxError):
        pass  # ast.parse has accepted the file; a tokenizer quirk only costs the type comments
    return found


def _read_signature(module: _Module, fn: ast.FunctionDef | ast.AsyncFunctionDef, decl: Declaration,
                    skip_self: bool) -> None:
    a = fn.args
    positional = [*a.posonlyargs, *a.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    pairs = list(zip(positional, defaults, strict=True))
    if skip_self and pairs:
        pairs = pairs[1:]
    pairs += list(zip(a.kwonlyargs, a.kw_defaults, strict=True))
    # A `# type:` comment belongs to the last argument that starts on its line.
    last_on_line = {arg.lineno: arg.arg for arg, _ in pairs}
    for arg, default in pairs:
        decl.args.append(_arg(module, arg, default, last_on_line[arg.lineno] == arg.arg))
    decl.varargs = a.vararg is not None


def _arg(module: _Module, arg: ast.arg, default: ast.expr | None, commented: bool) -> Arg:
    value, inferred = _literal(default) if default is not None else (MISSING, None)
    declared = None
    if arg.annotation is not None:
        declared = ast.unparse(arg.annotation)
    elif commented and arg.lineno in module.comments:
        declared = module.comments[arg.lineno]
    nullable = value is None
    if declared is not None:
        kind, null = _parse_type(declared, module.file, arg.lineno)
        nullable = nullable or null
    elif is_pin_name(arg.arg):
        kind = "pin"
    else:
        kind = inferred or "any"
    return Arg(arg.arg, kind, value, nullable, str(module.file), arg.lineno)


def _parse_type(text: str, file: Path, line: int) -> tuple[str, bool]:
    parts = [p.strip() for p in re.split(r"\||\bor\b", text.replace("Optional[", "").rstrip("]")) if p.strip()]
    nullable = any(p in ("None", "NoneType") for p in parts)
    kinds = [p for p in parts if p not in ("None", "NoneType")]
    if len(kinds) != 1:
        return ("any", nullable)  # a union of several types: checked no further
    kind = kinds[0]
    if kind.lower() in TYPES:
        return (kind.lower(), nullable)
    if kind[:1].isupper() and kind.isidentifier():
        return ("component", nullable)  # a class name: a reference to another component
    raise DeclarationError(f"{file}:{line}: unknown type {kind!r} (known: {', '.join(sorted(TYPES))}, or a class name)")


def _literal(node: ast.expr) -> tuple[Any, str | None]:
    """A default's value and the type it implies; (a marker, None) when it is not a plain literal."""
    try:
        value = ast.literal_eval(node)
    except ValueError:
        return _Unknown(ast.unparse(node)), None
    # A number default says "a number": `offset=0` takes -0.5 too. `# type: int` is stricter.
    for py, name in ((bool, "bool"), (int, "number"), (float, "number"), (str, "str"), (list, "list"),
                     (tuple, "list"), (dict, "dict")):
        if isinstance(value, py):
            return value, name
    return value, None


@dataclass(frozen=True)
class _Unknown:
    """A default that is an expression (`const(5)`, a module constant): optional, of no known type."""

    source: str

    def __repr__(self) -> str:
        return self.source
