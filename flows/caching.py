"""Content-addressed cache keys for Prefect tasks.

A key hashes the code version of the task's module (the bytes of every project .py file it can run: its
import closure within flows/, tasks/, models/), the task name and every parameter; a `pathlib.Path`
parameter contributes the sha256 of its bytes (a folder: of all its files), never its path string. Same
bytes -> cache hit; changed bytes under the same path -> miss. A change to code the task cannot run
(another stage's) leaves its cache valid.

The closure is read from the source, erring towards too much code, never too little: `import` statements
anywhere in a file, the __init__ of every package on the way, project module names in strings (importlib
and `python -m` targets), every module of a package that computes a relative import with `import_module`,
and a package's lazy attributes (imports in its module-level `__getattr__`) for any file that takes names
from it. Each stage's .py deps in dvc.yaml are exactly its flow's closure (tests/test_caching.py).

    @cached_task()       # = prefect.task keyed by content_key, results as data, sealed (flows/result_store.py)
    def sample_block(generator_dir: Path, block: int, params: dict): ...
"""
from __future__ import annotations

import ast
import hashlib
import json
import re
from functools import lru_cache
from pathlib import Path

from tasks.io import digest_tree

from . import ROOT


PACKAGES = ("flows", "tasks", "models")
MODULE_NAME = re.compile(r"(flows|tasks|models)(\.[A-Za-z_]\w*)+")


def _file(name: str, root: Path) -> Path | None:
    """The project file of a dotted module name (a package: its __init__.py); None outside the project."""
    if name.split(".")[0] not in PACKAGES:
        return None
    p = root.joinpath(*name.split("."))
    return p.with_suffix(".py") if p.with_suffix(".py").is_file() else p / "__init__.py" if (p / "__init__.py").is_file() else None


def _scan(path: Path, root: Path) -> tuple[set[str], set[str], set[str]]:
    """A file's project imports: (modules it imports, modules it takes names from, modules its module-level
    `__getattr__` imports on a name's first use: a package's lazy attributes, run only for who takes names)."""
    rel = path.relative_to(root).with_suffix("").parts
    pkg = list(rel[:-1])  # the package relative imports start from (an __init__ is its own package's file)
    tree = ast.parse(path.read_bytes(), str(path))
    lazy_nodes = {id(n) for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == "__getattr__" for n in ast.walk(f)}
    eager, named, lazy = set(), set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found = [a.name for a in node.names]
            named |= set(found)  # `import pkg`: any attribute of it may be used
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg[:len(pkg) - node.level + 1] + ([base] if base else []))
            found = [base] + [f"{base}.{a.name}" for a in node.names]  # `from pkg import submodule`
            if any(_file(f"{base}.{a.name}", root) is None for a in node.names):
                named.add(base)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_NAME.fullmatch(node.value):
            found = [node.value]  # a module named in a string: importlib's or `python -m`'s target
        elif isinstance(node, ast.Call) and "import_module" in (getattr(node.func, "attr", None), getattr(node.func, "id", None)) \
                and (len(node.args) > 1 or any(k.arg == "package" for k in node.keywords)):
            # a relative import computed at run time (e.g. models' lazy classes): any module of the package may run
            found = [".".join(pkg + [f.stem]) for f in path.parent.glob("*.py")]
        else:
            continue
        (lazy if id(node) in lazy_nodes else eager).update(found)
    return eager, named, lazy


def _files(names, root: Path) -> set[Path]:
    """The project files of dotted names, with the __init__ of every package on the way."""
    out = set()
    for name in names:
        parts = name.split(".")
        out |= {f for i in range(1, len(parts) + 1) if (f := _file(".".join(parts[:i]), root))}
    return out


def module_files(module: str, root: Path = ROOT) -> list[Path]:
    """Every project file `module` (dotted, e.g. "flows.sample") can run: its import closure, sorted."""
    start = _file(module, root)
    if start is None:
        raise ValueError(f"{module!r} is not a module of this project ({', '.join(PACKAGES)})")
    seen = _files([module], root)  # importing a module runs its packages' __init__ first
    todo = list(seen)
    while todo:
        eager, named, _ = _scan(todo.pop(), root)
        reach = _files(eager, root)
        for f in {f for n in named if (f := _file(n, root))}:  # names taken from a package: its lazy attributes too
            reach |= _files(_scan(f, root)[2], root)
        for f in reach - seen:
            seen.add(f)
            todo.append(f)
    return sorted(seen)


@lru_cache(maxsize=64)
def code_version(module: str | None = None, root: Path = ROOT) -> str:
    """sha256 over the files `module` can run (None, or a module outside the project: all of them)."""
    files = None
    if module is not None and _file(module, root) is not None:
        files = module_files(module, root)
    files = files or sorted(f for pkg in PACKAGES for f in (root / pkg).rglob("*.py"))
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.relative_to(root)}\0".encode())
        h.update(p.read_bytes())
    return h.hexdigest()


@lru_cache(maxsize=256)
def _digest_cached(path: str, mtime_ns: int, size: int) -> str:
    return digest_tree(path)


def digest(path: Path) -> str:
    """sha256 of a file's bytes or of a folder's files; memoised per (path, mtime, size) within a process."""
    st = path.stat()
    if path.is_dir():  # a folder's stat does not change when a file inside is rewritten: hash it fresh
        return digest_tree(path)
    return _digest_cached(str(path.resolve()), st.st_mtime_ns, st.st_size)


def _canon(v):
    if isinstance(v, Path):
        return {"sha256": digest(v)}
    if isinstance(v, dict):
        return {str(k): _canon(x) for k, x in sorted(v.items())}
    if isinstance(v, (list, tuple)):
        return [_canon(x) for x in v]
    return v


def content_key(context, parameters: dict) -> str:
    task = getattr(context, "task", None) if context is not None else None
    name = task.name if task else ""
    module = getattr(getattr(task, "fn", None), "__module__", None)  # the task function's own module
    blob = json.dumps({"code": code_version(module), "task": name, "params": _canon(parameters)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def cached_task(**options):
    """prefect.task cached by `content_key`, its result persisted by flows.result_store: written as data (no
    pickle) and sealed, so a record planted in the result storage is a cache miss, never code that runs."""
    from prefect import task

    from .result_store import DataSerializer

    def decorate(fn):
        return _sealed(task(cache_key_fn=content_key, persist_result=True, result_serializer=DataSerializer(), **options)(fn))
    return decorate


def _sealed(t):
    """The task with SealedFileSystem as its result storage. Set after construction: Prefect wants a storage
    *argument* to be a block saved on the server (a per-run ephemeral one here); an unsaved local block is what
    its own default storage is. with_options builds a new Task from the argument, so it is wrapped alike."""
    from .result_store import SealedFileSystem
    t.result_storage = SealedFileSystem()
    plain = t.with_options

    def with_options(**kw):
        t.result_storage = None
        try:
            return _sealed(plain(**kw))
        finally:
            t.result_storage = SealedFileSystem()
    t.with_options = with_options
    return t
