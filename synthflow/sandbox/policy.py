"""What a program must not do to be verified: a static policy, decided on the trusted side.

A model that is rewarded for passing checks learns whatever passes them. A program can show a wrong
``def add`` and still answer with a correct function it hides elsewhere (rebound through ``gc``, a
frame, a thread, ``globals()``, a patched decorator), or reach the harness and forge its result.
Inside its own process nothing stops it, so the published code itself must be plain: the function
under test is bound once, by its ``def``, and the program does not reach into the interpreter.

``check(code, entry_points)`` returns ``None`` for a plain program, else ``(kind, detail)``:

- ``rebound_entry_point``: a function under test is bound other than by one ``def`` at module level
  (a second ``def``, an assignment, ``lambda``, an import, a class, ``global``, a decorator other
  than ``functools.cache``/``lru_cache``);
- ``forbidden_construct``: an import outside ``ALLOWED_MODULES``; a name such as ``exec``,
  ``globals``, ``__import__``, ``setattr``; an attribute that leads to frames, code or namespaces
  (``__globals__``, ``f_back``, ...) or, except on ``self``/``cls``, to another module's internals
  (``modules``, ``os``, ...); a module used other than as ``module.attribute``, or an attribute of a
  module assigned; a computed ``getattr``; ``string.Formatter`` (attribute access by strings); a
  string that names a forbidden attribute where one could use it; a builtin rebound at module level
  by anything but a function under test; source too deeply nested to check.

The same check runs inside the sandbox on source the program compiles at run time (``eval`` of a
string), from the audit hook's ``compile`` event; the hook also refuses frames, ``gc`` and tracing
(see ``guard.install_guard``). Standard library only, and not even ``ast`` (it imports enum,
which a sandbox child may be in the middle of importing): the sandbox server imports it.

Size: one walk over the program decides every rule, so the rules stay together in one module;
splitting them would split :class:`Analysis`, whose visitor methods share its scope tables.
"""

from __future__ import annotations

import _ast as ast
import builtins as _builtins_module

BUILTIN_NAMES = frozenset(dir(_builtins_module))


def _iter_child_nodes(node):
    for name in node._fields:
        value = getattr(node, name, None)
        if isinstance(value, ast.AST):
            yield value
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, ast.AST):
                    yield item


def _walk(node):
    todo = [node]
    while todo:
        node = todo.pop()
        todo.extend(_iter_child_nodes(node))
        yield node


def _parse(source):
    return compile(source, "<policy>", "exec", ast.PyCF_ONLY_AST)


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# modules a verified program may import (top-level names)
ALLOWED_MODULES = _words(
    """__future__ abc array base64 binascii bisect calendar cmath collections colorsys copy csv
    dataclasses datetime decimal difflib enum fractions functools hashlib heapq hmac html itertools json
    keyword math numbers operator pprint random re statistics string struct sys textwrap time typing
    unicodedata zlib fnmatch"""
)
# builtin or tiny modules: importing them in a sandbox child costs well under a millisecond, so a job
# that imports nothing else runs from the sandbox's lean clean parent (its children fork and exit faster)
LEAN_OK = _words("math cmath itertools operator bisect heapq sys __future__ array")
# builtins that reach into the interpreter, run code the check cannot see, or set attributes by name
FORBIDDEN_NAMES = _words(
    """exec compile globals locals vars __import__ __builtins__ __loader__ __spec__ breakpoint help
    memoryview __build_class__ copyright credits license setattr delattr Formatter"""
)
# attributes that lead to frames, code, namespaces or the import system: forbidden on anything
INTERNAL_ATTRS = _words(
    """__globals__ __code__ __closure__ __builtins__ __dict__ __subclasses__ __bases__ __base__ __mro__
    __getattribute__ __import__ __loader__ __spec__ __reduce__ __reduce_ex__ __self__ __traceback__
    __defaults__ __kwdefaults__ __objclass__ __init_subclass__ __subclasshook__ __set_name__ __wrapped__
    __class_getitem__
    f_back f_globals f_locals f_builtins f_code f_trace tb_frame tb_next gi_frame gi_code cr_frame
    cr_code ag_frame ag_code cell_contents co_code co_consts func_globals
    _getframe _current_frames _xoptions _git _framework Formatter get_field vformat
    _os _posix _posixsubprocess _subprocess _gc _ctypes _builtins _threading _thread _signal _imp
    _bootstrap _bootstrap_external _inspect _marshal _pickle _socket _select _atexit _io io_open _opener
    _sys _functools _collections _weakref _abc _operator"""
)
# attributes that reach another module's internals or the interpreter's hooks; ordinary words too,
# so an object of the program's own class may have them (``self.signal``, ``cls.modules``)
MODULE_ATTRS = _words(
    """os posix nt subprocess gc ctypes builtins threading thread signal importlib inspect marshal
    pickle socket select mmap fcntl resource atexit modules settrace setprofile addaudithook audit
    meta_path path_hooks path_importer_cache breakpointhook displayhook excepthook unraisablehook
    setswitchinterval gettrace getprofile orig_argv executable sys weakref"""
)
FORBIDDEN_ATTRS = INTERNAL_ATTRS | MODULE_ATTRS  # what a literal getattr/attrgetter name may not be
OWN_OBJECTS = frozenset({"self", "cls"})
# functions whose attribute-name argument must be a plain string literal
NAME_ARG_FUNCS = {"getattr": 1, "hasattr": 1}
NAME_ARG_ATTRS = frozenset({"attrgetter", "methodcaller"})
CACHE_DECORATORS = frozenset({"cache", "lru_cache"})


class _Violation(Exception):
    def __init__(self, kind: str, detail: str):
        super().__init__(kind, detail)
        self.kind, self.detail = kind, detail


def _where(node: ast.AST) -> str:
    line = getattr(node, "lineno", None)
    return f" (line {line})" if line else ""


def _forbidden(detail: str, node: ast.AST) -> _Violation:
    return _Violation("forbidden_construct", detail + _where(node))


def _attr_path_bad(path: str, first_is_attr: bool = True) -> str | None:
    """A dotted or indexed attribute path (``modules[x].os``, ``0.__globals__``) that reaches a
    forbidden attribute; with ``first_is_attr=False`` the first part is an argument name."""
    for sep in "[]!:":
        path = path.replace(sep, ".")
    parts = [p.strip() for p in path.split(".")]
    for p in parts if first_is_attr else parts[1:]:
        if p in FORBIDDEN_ATTRS:
            return p
    return None


def _bad_string(s: str) -> str | None:
    """A string that names a forbidden attribute where one could use it: a format field
    (``'{0.__globals__}'.format(f)``; the field's own name, ``{modules}``, is not an attribute), or
    a bare internal name (``'__globals__'``, ``'_os'``). Prose (docstrings, messages) is not read as
    names."""
    s = s[:4000]
    start = s.find("{")
    while start != -1:
        end = s.find("}", start)
        if end == -1:
            break
        bad = _attr_path_bad(s[start + 1 : end], first_is_attr=False)
        if bad:
            return bad
        start = s.find("{", end)
    if len(s) <= 100 and not any(c.isspace() for c in s):
        for sep in "[]!:":
            s = s.replace(sep, ".")
        for tok in s.split("."):
            if tok in INTERNAL_ATTRS:
                return tok
    return None


def _name_arg_bad(node: ast.AST) -> str | None:
    """The literal name given to getattr/attrgetter & co., when it is forbidden."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return _attr_path_bad(node.value)
    return None


def _module_ok(name: str) -> bool:
    return name.split(".")[0] in ALLOWED_MODULES


_NODE_KINDS = {
    ast.Import: "imports", ast.ImportFrom: "imports", ast.Name: "names", ast.Attribute: "attrs",
    ast.MatchClass: "matches", ast.Constant: "consts", ast.Call: "calls", ast.Global: "globals",
    ast.Nonlocal: "globals",
}  # fmt: skip


class Analysis:
    """One walk over a tree, its nodes sorted by the kinds the checks read."""

    def __init__(self, tree: ast.AST):
        self.tree = tree
        kinds: dict[str, list] = {k: [] for k in set(_NODE_KINDS.values())}
        get = _NODE_KINDS.get
        parents: dict[int, ast.AST] = {}
        for node in _walk(tree):
            k = get(type(node))
            if k is not None:
                kinds[k].append(node)
            for child in _iter_child_nodes(node):
                parents[id(child)] = node
        self.kinds = kinds
        self.parents = parents
        self._bindings: dict[str, list[tuple[str, ast.AST]]] | None = None

    def imports(self) -> set[str]:
        out: set[str] = set()
        for node in self.kinds["imports"]:
            if isinstance(node, ast.Import):
                out |= {a.name.split(".")[0] for a in node.names}
            else:
                out.add((node.module or "").split(".")[0] if not node.level else "")
        return out

    extra_modules: frozenset[str] = frozenset()  # names known to be modules from elsewhere (the program)

    def module_aliases(self) -> set[str]:
        """Names bound to modules: ``import x``, ``import x.y as z``, and ``from x import y`` where
        y is a submodule (``from collections import abc``)."""
        out: set[str] = set()
        for node in self.kinds["imports"]:
            if isinstance(node, ast.Import):
                out |= {a.asname or a.name.split(".")[0] for a in node.names}
            else:
                subs = _SUBMODULES.get(node.module or "", ())
                out |= {a.asname or a.name for a in node.names if a.name in subs}
        return out | self.extra_modules

    def scan(self) -> None:
        """Forbidden imports, names, attributes, module use, computed attribute names and strings."""
        k = self.kinds
        for node in k["imports"]:
            if isinstance(node, ast.Import):
                for a in node.names:
                    if not _module_ok(a.name):
                        raise _forbidden(f"import {a.name}", node)
            else:
                if node.level or not node.module or not _module_ok(node.module):
                    raise _forbidden(f"from {'.' * node.level}{node.module or ''} import", node)
                for a in node.names:
                    if a.name == "*" and node.module != "sys":
                        continue  # the public names of a pure module
                    if a.name == "*" or a.name in FORBIDDEN_ATTRS or a.name in FORBIDDEN_NAMES:
                        raise _forbidden(f"from {node.module} import {a.name}", node)
        for node in k["names"]:
            if node.id in FORBIDDEN_NAMES:
                raise _forbidden(node.id, node)
        modules = self.module_aliases()
        for node in k["attrs"]:
            if node.attr in INTERNAL_ATTRS:
                raise _forbidden(f".{node.attr}", node)
            if node.attr in MODULE_ATTRS and not (
                isinstance(node.value, ast.Name) and node.value.id in OWN_OBJECTS
            ):
                raise _forbidden(f".{node.attr}", node)
            if not isinstance(node.ctx, ast.Load) and _root_name(node) in modules:
                raise _forbidden(f"assigns {_root_name(node)}.{node.attr}: an attribute of a module", node)
        for node in k["names"]:
            if node.id in modules:
                parent = self.parents.get(id(node))
                if not isinstance(node.ctx, ast.Load):
                    continue  # the import binding itself is an ast.alias, not a Name; a store is R1's
                if not (isinstance(parent, ast.Attribute) and parent.value is node):
                    raise _forbidden(f"the module {node.id} used as a value", node)
        for node in k["matches"]:
            for attr in node.kwd_attrs:
                if attr in FORBIDDEN_ATTRS:
                    raise _forbidden(f"match attribute {attr}", node)
        for node in k["consts"]:
            if type(node.value) is str and (bad := _bad_string(node.value)):
                raise _forbidden(f"the string {bad!r}", node)
        called = set()
        for node in k["calls"]:
            f = node.func
            called.add(id(f))
            if isinstance(f, ast.Name) and f.id in NAME_ARG_FUNCS:
                i = NAME_ARG_FUNCS[f.id]
                if len(node.args) <= i or not (
                    isinstance(node.args[i], ast.Constant) and isinstance(node.args[i].value, str)
                ):
                    raise _forbidden(f"{f.id}() with a computed attribute name", node)
                if bad := _name_arg_bad(node.args[i]):
                    raise _forbidden(f"{f.id}() of {bad}", node)
            elif (
                isinstance(f, ast.Attribute)
                and f.attr in NAME_ARG_ATTRS
                or isinstance(f, ast.Name)
                and f.id in NAME_ARG_ATTRS
            ):
                if not all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in node.args[:1]):
                    raise _forbidden("attrgetter/methodcaller with a computed name", node)
                for a in (
                    node.args[:1] if getattr(f, "attr", getattr(f, "id", "")) == "methodcaller" else node.args
                ):
                    if bad := _name_arg_bad(a):
                        raise _forbidden(f"attrgetter/methodcaller of {bad}", node)
        # getattr & co. only as a direct call (not passed around as a value: reduce(getattr, ...))
        for node in k["names"]:
            if (node.id in NAME_ARG_FUNCS or node.id in NAME_ARG_ATTRS) and id(node) not in called:
                raise _forbidden(f"{node.id} used as a value", node)
        for node in k["attrs"]:
            if node.attr in NAME_ARG_ATTRS and id(node) not in called:
                raise _forbidden(f"{node.attr} used as a value", node)

    def bindings(self, name: str) -> list[tuple[str, ast.AST]]:
        """Every way the module binds ``name`` in its own scope (what the tests would call), plus any
        ``global``/``nonlocal`` declaration of it anywhere."""
        return list(self.all_bindings().get(name, []))

    def all_bindings(self) -> dict[str, list[tuple[str, ast.AST]]]:
        if self._bindings is None:
            found: dict[str, list[tuple[str, ast.AST]]] = {}
            for node in self.kinds["globals"]:
                for n in node.names:
                    found.setdefault(n, []).append(("global", node))
            if isinstance(self.tree, ast.Module):
                for node, n, kind in _module_bindings(self.tree):
                    found.setdefault(n, []).append((kind, node))
            self._bindings = found
        return self._bindings

    def shadowed_builtins(self, entry_points: frozenset[str] | set[str]) -> list[tuple[str, ast.AST]]:
        """Builtins the module rebinds in its own scope, other than the functions under test (a
        program's ``len`` would change what the tests' ``len`` means)."""
        return [
            (name, binds[0][1])
            for name, binds in self.all_bindings().items()
            if name in BUILTIN_NAMES and name not in entry_points and any(k != "global" for k, _ in binds)
        ]


# submodules a ``from pkg import name`` may bind (module objects, which must be used as ``m.attr``)
_SUBMODULES = {
    "json": ("decoder", "encoder", "scanner"),
    "collections": ("abc",),
    "email": (),
}


def _root_name(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _module_bindings(tree: ast.Module):
    """(node, name, kind) for each binding made in the module's own scope."""
    for node in _module_level(tree):
        t = type(node)
        if t is ast.FunctionDef:
            yield node, node.name, "def"
        elif t is ast.AsyncFunctionDef or t is ast.ClassDef:
            yield node, node.name, t.__name__
        elif t is ast.Import or t is ast.ImportFrom:
            for a in node.names:
                if a.name != "*":
                    yield node, (a.asname or a.name.split(".")[0]), "import"
        elif t is ast.Name:
            if isinstance(node.ctx, (ast.Store, ast.Del)):
                yield node, node.id, "assignment"
        elif t in (ast.MatchAs, ast.MatchStar, ast.ExceptHandler):
            if node.name:
                yield node, node.name, "assignment"
        elif t is ast.MatchMapping and node.rest:
            yield node, node.rest, "assignment"


_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
_COMPS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def _module_level(tree: ast.Module):
    """Nodes that bind in the module's own scope: statements and expressions outside function,
    lambda and class bodies (the def or class node itself, its decorators, defaults and bases are
    included), and walrus targets inside comprehensions (they bind in the enclosing scope)."""
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, _SCOPES):
            outer: list[ast.AST] = list(getattr(node, "decorator_list", []))
            if isinstance(node, ast.ClassDef):
                outer += node.bases + [k.value for k in node.keywords]
            else:
                outer += node.args.defaults + [d for d in node.args.kw_defaults if d is not None]
                if not isinstance(node, ast.Lambda):
                    outer += [a.annotation for a in node.args.args if a.annotation is not None]
            stack += outer
            continue
        for child in _iter_child_nodes(node):
            if isinstance(child, _COMPS):
                for sub in _walk(child):
                    if isinstance(sub, ast.NamedExpr):
                        stack.append(sub.target)
                continue
            stack.append(child)


def module_def(tree: ast.Module, name: str) -> ast.FunctionDef | None:
    """The ``def name`` made in the module's own scope (inside ``if``/``try`` too), if exactly one."""
    defs = [n for n, b, kind in _module_bindings(tree) if b == name and kind == "def"]
    return defs[0] if len(defs) == 1 else None


def _cache_decorator_ok(a: Analysis, dec: ast.AST) -> bool:
    """``@cache``, ``@lru_cache(...)``, ``@functools.cache``, ``@functools.lru_cache(...)`` with the
    names bound only by imports from functools (and, by ``scan``, no attribute of a module assigned)."""
    tree = a.tree
    target = dec.func if isinstance(dec, ast.Call) else dec
    if isinstance(dec, ast.Call) and not all(isinstance(x, ast.Constant) for x in dec.args):
        return False
    if isinstance(dec, ast.Call) and not all(isinstance(k.value, ast.Constant) for k in dec.keywords):
        return False
    if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name):
        if target.value.id != "functools" or target.attr not in CACHE_DECORATORS:
            return False
        name = "functools"
        imported = any(
            isinstance(n, ast.Import) and any(x.name == "functools" and not x.asname for x in n.names)
            for n in tree.body
        )
    elif isinstance(target, ast.Name) and target.id in CACHE_DECORATORS:
        name = target.id
        imported = any(
            isinstance(n, ast.ImportFrom)
            and n.module == "functools"
            and any(x.name == name and not x.asname for x in n.names)
            for n in tree.body
        )
    else:
        return False
    others = [k for k, _ in a.bindings(name) if k != "import"]
    return imported and not others


def _entry(a: Analysis, name: str) -> None:
    binds = sorted(a.bindings(name), key=lambda b: getattr(b[1], "lineno", 0))
    if not binds:
        return  # never bound: calling it is a NameError at run time
    defs = [n for k, n in binds if k == "def"]
    if not defs:
        raise _Violation("rebound_entry_point", f"{name} is not defined by a def ({binds[0][0]})")
    if len(binds) > 1:
        kinds = sorted({k for k, _ in binds})
        node = next(n for k, n in binds if n is not defs[0])
        raise _Violation(
            "rebound_entry_point", f"{name} is bound more than once ({', '.join(kinds)})" + _where(node)
        )
    for dec in defs[0].decorator_list:
        if not _cache_decorator_ok(a, dec):
            raise _Violation(
                "rebound_entry_point",
                f"{name} has a decorator other than functools.cache/lru_cache" + _where(dec),
            )


def imports(tree: ast.AST | None) -> set[str]:
    """Top-level names of the modules a tree imports (anywhere in it)."""
    return Analysis(tree).imports() if tree is not None else set()


def check_analysis(
    a: Analysis, entry_points: frozenset[str] | set[str] = frozenset()
) -> tuple[str, str] | None:
    """None for a plain program, else (kind, detail)."""
    try:
        a.scan()
        for ep in sorted(entry_points):
            _entry(a, ep)
        for name, node in a.shadowed_builtins(entry_points):
            raise _forbidden(f"rebinds the builtin {name}", node)
    except _Violation as v:
        return v.kind, v.detail
    except RecursionError:
        return "forbidden_construct", "too deeply nested to check"
    return None


def check_tree(
    tree: ast.Module, entry_points: frozenset[str] | set[str] = frozenset()
) -> tuple[str, str] | None:
    try:
        return check_analysis(Analysis(tree), entry_points)
    except RecursionError:
        return "forbidden_construct", "too deeply nested to check"


def check(code: str, entry_points: frozenset[str] | set[str] = frozenset()) -> tuple[str, str] | None:
    """None for a plain program, else (kind, detail). A syntax error is left to the run; source too
    deep to parse here is refused (it is not left unchecked)."""
    try:
        tree = _parse(code)
    except (SyntaxError, ValueError):
        return None
    except (RecursionError, MemoryError):
        return "forbidden_construct", "too deeply nested to check"
    return check_tree(tree, entry_points)


def check_dynamic(
    source: object,
    entry_points: frozenset[str] | set[str] = frozenset(),
    modules: frozenset[str] = frozenset(),
) -> str:
    """For source compiled at run time (an ``eval`` of a string): '' when it is plain, else why not.
    It may not bind a function under test at all, and a name that is a module (an allowed module's,
    or one of ``modules``: the program's own import aliases) is used only as ``module.attribute``."""
    if type(source) is bytes:  # exact types: a subclass could run code of the program's here
        try:
            source = source.decode("utf-8")
        except UnicodeDecodeError:
            return "undecodable source"
    if type(source) is not str:
        return f"compiling a {type(source).__name__}"  # an AST built by the program, a buffer, ...
    try:
        tree = _parse(source)
    except (SyntaxError, ValueError):
        return ""  # compile() raises the error itself
    except (RecursionError, MemoryError):
        return "too deeply nested to check"
    try:
        a = Analysis(tree)
        a.extra_modules = ALLOWED_MODULES | frozenset(modules)
        a.scan()
    except _Violation as v:
        return v.detail
    except RecursionError:
        return "too deeply nested to check"
    for node in _walk(tree):
        if isinstance(node, ast.Name) and node.id in entry_points and not isinstance(node.ctx, ast.Load):
            return f"binds {node.id}"
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Global, ast.Nonlocal)) and (
            getattr(node, "name", None) in entry_points or set(getattr(node, "names", ())) & set(entry_points)
        ):
            return "binds a function under test"
    return ""
