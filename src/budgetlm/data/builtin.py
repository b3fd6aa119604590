"""Built-in corpora that need no download on any machine (`prepare --builtin NAME`).

`python-docs`: the Python reference documentation shipped with the interpreter
(`pydoc_data.topics`, one document per topic) and the docstrings of the standard library, one
document per module (module, class, function and method docstrings in source order), about 2 MB.

`python`: the same documentation next to the standard library's source code itself, one document
per module (about 12 MB on CPython 3.11): large enough that a few minutes of training see most of it
once or twice rather than the docs ten times over, and a sample reads as Python code or docs.

Docstrings are read from the standard library's *source files* with `ast`, not by importing the
modules: importing all of the standard library has side effects (`antigravity` opens a browser,
`this` prints, GUI toolkits start), is slow, and depends on what happens to be installed. Parsing is
deterministic: files in sorted order, the same interpreter version gives the same corpus.
"""

from __future__ import annotations

import ast
import sys
import sysconfig
from pathlib import Path
from typing import Callable, Iterator

from budgetlm.config import BudgetError

# folders of the standard library that are tests, GUIs, vendored or platform tooling, not docs
_SKIP_PARTS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "ensurepip",
               "turtledemo", "tkinter", "__pycache__", "venv", "pydoc_data", "config-3"}
MAX_BYTES = 8_000_000  # keep the docs "a few MB" whatever the interpreter ships
MAX_SOURCE_BYTES = 32_000_000  # and the source code at most a few times that


def _topics() -> Iterator[tuple[str, str]]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip it; the docstrings still make a corpus
        return
    for name in sorted(topics):
        text = topics[name].strip()
        if text:
            yield f"pydoc:{name}", text + "\n"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _docstrings(tree: ast.Module, module: str) -> str:
    out: list[str] = []
    doc = ast.get_docstring(tree)
    if doc:
        out.append(f"Module {module}\n\n{doc}\n")

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                if child.name.startswith("_") and not child.name.startswith("__"):
                    continue  # private helpers: mostly terse notes, not documentation
                name = f"{prefix}.{child.name}"
                d = ast.get_docstring(child)
                if d:
                    kind = "class" if isinstance(child, ast.ClassDef) else "def"
                    out.append(f"{kind} {name}\n\n{d}\n")
                if isinstance(child, ast.ClassDef):
                    visit(child, name)

    visit(tree, module)
    return "\n".join(out)


def _stdlib_files() -> Iterator[tuple[Path, str]]:
    """(path, module name) of the standard library's source files, sorted, tests and GUIs left out."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for f in sorted(f for f in root.rglob("*.py") if not _SKIP_PARTS.intersection(f.relative_to(root).parts)):
        yield f, _module_name(f, root)


def _stdlib_docs() -> Iterator[tuple[str, str]]:
    for f, module in _stdlib_files():
        try:
            tree = ast.parse(f.read_bytes(), filename=str(f))
        except (SyntaxError, ValueError, OSError, UnicodeDecodeError):
            continue  # e.g. a template file that is not valid Python: skip it
        text = _docstrings(tree, module)
        if text.strip():
            yield f"stdlib:{module}", text


def _stdlib_sources() -> Iterator[tuple[str, str]]:
    total = 0
    for f, module in _stdlib_files():
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # a file in another encoding (a test fixture): leave it out
        total += len(text.encode("utf-8"))
        if total > MAX_SOURCE_BYTES:
            return
        if text.strip():
            yield f"source:{module}", text


def _compiled_in_docs() -> Iterator[tuple[str, str]]:
    """Modules compiled into the interpreter (builtins, sys, ...) have no source to parse; importing
    them has no side effects, so their docstrings are read from the live objects."""
    import importlib
    import inspect

    for module in sorted(sys.builtin_module_names):
        if module.startswith("_"):
            continue
        try:
            mod = importlib.import_module(module)
        except Exception:  # noqa: BLE001 - a module that will not import is simply left out
            continue
        out = []
        doc = inspect.getdoc(mod)
        if doc:
            out.append(f"Module {module}\n\n{doc}\n")
        for name in sorted(vars(mod)):
            obj = getattr(mod, name)
            if name.startswith("_") or not callable(obj):
                continue
            d = obj.__doc__ if isinstance(obj.__doc__, str) else None
            if d and d.strip():
                out.append(f"def {module}.{name}\n\n{inspect.cleandoc(d)}\n")
        if out:
            yield f"builtin:{module}", "\n".join(out)


def python_docs() -> Iterator[tuple[str, str]]:
    """(name, text) documents: pydoc topics, compiled-in module docstrings, then stdlib
    docstrings from source, up to MAX_BYTES of text."""
    total = 0
    for name, text in _chain(_topics(), _compiled_in_docs(), _stdlib_docs()):
        total += len(text.encode("utf-8"))
        if total > MAX_BYTES:
            return
        yield name, text


def python_all() -> Iterator[tuple[str, str]]:
    """`python_docs`, then the standard library's source code, one document per module."""
    return _chain(python_docs(), _stdlib_sources())


def _chain(*its: Iterator[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    for it in its:
        yield from it


# name -> (documents generator, one-line description)
BUILTINS: dict[str, tuple[Callable[[], Iterator[tuple[str, str]]], str]] = {
    "python-docs": (python_docs, "Python reference topics and standard-library docstrings of this interpreter"),
    "python": (python_all, "python-docs next to the standard library's source code (the demo's corpus)"),
}


def builtin_documents(name: str) -> Iterator[tuple[str, str]]:
    if name not in BUILTINS:
        raise BudgetError(f"unknown built-in corpus {name!r}: choose one of {', '.join(BUILTINS)}")
    return BUILTINS[name][0]()
