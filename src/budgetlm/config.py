"""Plain-dataclass configuration and the small layer that turns it into CLI flags.

Every config is a dataclass whose fields carry a one-line trailing comment (unit and meaning).
`add_dataclass_args` reads those comments from the source and uses them as the `--help` text, so the
comment is the single place a field is documented. `from_args` builds the dataclass back from the
parsed namespace. No torch here: `plan` and the CLI import this without pulling in PyTorch.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import io
import json
import os
import re
import textwrap
import tokenize
import typing
from pathlib import Path
from typing import Any


class BudgetError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits with `code`."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def refuse_torchrun(what: str = "this command") -> None:
    """Stop a one-process job that torchrun started on several ranks: each rank would do the whole
    job on the same data and write the same files."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1:
        raise BudgetError(f"{what} runs in one process, but torchrun started {world}: launch it without "
                          "torchrun (budgetlm train is the command that trains across processes)")


# --------------------------------------------------------------------------------------------------
# durations and sizes

_DURATION_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)([dhms])")


def parse_duration(text: str | float | int) -> float:
    """'90s', '10m', '2h', '1d', '1h30m' or a bare number of seconds -> seconds (float > 0)."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        s = str(text).strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(?:\.\d+)?", s):
            seconds = float(s)
        else:
            pos, seconds = 0, 0.0
            for m in _DURATION_RE.finditer(s):
                if m.start() != pos:
                    break
                seconds += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
                pos = m.end()
            if pos != len(s) or not s:
                raise BudgetError(
                    f"malformed duration {text!r}: write it like 90s, 10m, 2h, 1d or 1h30m"
                )
    if not seconds > 0:
        raise BudgetError(f"duration {text!r} must be positive")
    return seconds


def format_duration(seconds: float) -> str:
    """Seconds -> compact human text ('1h02m', '3m05s', '42s')."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    d, h = divmod(h, 24)
    if d:
        return f"{d}d{h:02d}h"
    if h:
        return f"{h}h{m:02d}m"
    return f"{m}m{s:02d}s"


# --------------------------------------------------------------------------------------------------
# ranges: every numeric setting says what it accepts, checked before any work starts


def ranged(default: Any, lo: float | None = None, hi: float | None = None, *, above: bool = False,
           also: tuple[Any, ...] = ()) -> Any:
    """A dataclass field whose value must lie in [lo, hi] ((lo, hi] with `above`), or be one of
    `also` (e.g. 0 = auto, -1 = auto). `check_ranges` enforces it; --help shows it."""
    return dataclasses.field(default=default, metadata={"range": (lo, hi, above, also)})


def range_text(lo, hi, above: bool, also: tuple) -> str:
    g = lambda x: f"{x:.10g}"  # noqa: E731 - enough digits that 0.99999999 does not read as 1
    parts = []
    if lo is not None and hi is not None:
        parts.append(f"{'(' if above else '['}{g(lo)}, {g(hi)}]")
    elif lo is not None:
        parts.append(f"{'>' if above else '>='} {g(lo)}")
    elif hi is not None:
        parts.append(f"<= {g(hi)}")
    parts += [g(a) for a in also]
    return " or ".join(parts)


def check_ranges(obj: Any, prefix: str = "--") -> None:
    """BudgetError naming the first field of `obj` outside its `ranged` bounds (NaN never passes)."""
    import math

    for f in dataclasses.fields(obj):
        spec = f.metadata.get("range")
        if spec is None:
            continue
        lo, hi, above, also = spec
        v = getattr(obj, f.name)
        if v in also and not (isinstance(v, float) and math.isnan(v)):
            continue
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        ok = ok and (lo is None or (v > lo if above else v >= lo)) and (hi is None or v <= hi)
        if not ok:
            flag = prefix + f.name.replace("_", "-") if prefix == "--" else f.name
            raise BudgetError(f"{flag} must be {range_text(lo, hi, above, also)}, got {v!r}")


# --------------------------------------------------------------------------------------------------
# field comments -> help text


@functools.lru_cache(maxsize=None)
def field_comments(cls: type) -> dict[str, str]:
    """Map each dataclass field name to the trailing `# comment` on its line in the source."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(textwrap.dedent(source)).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    out: dict[str, str] = {}
    tree = ast.parse(textwrap.dedent(source))
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            text = comments.get(node.end_lineno or node.lineno)
            if text:
                out[node.target.id] = text
    return out


def _resolve_type(cls: type, f: dataclasses.Field) -> Any:
    hints = typing.get_type_hints(cls)
    return hints.get(f.name, str)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0], True
    return tp, False


def add_dataclass_args(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    prefix: str = "",
    skip: tuple[str, ...] = (),
    defaults: dict[str, Any] | None = None,
    only_given: bool = False,
) -> None:
    """Add one `--flag` per field of `cls`; the field's trailing comment is its help text.

    bool fields become `--flag/--no-flag`; `Literal[...]` fields become `choices`; `list[X]` fields
    take several values. `defaults` overrides the dataclass defaults shown and used by this parser.
    With `only_given`, flags the user did not give stay out of the parsed namespace (their default
    is still shown in --help), so `from_args(..., base=...)` can tell them from given ones.
    """
    comments = field_comments(cls)
    defaults = defaults or {}
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        tp, optional = _unwrap_optional(_resolve_type(cls, f))
        if f.name in defaults:
            default = defaults[f.name]
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = None
        flag = "--" + (prefix + f.name).replace("_", "-")
        help_text = comments.get(f.name, "")
        if "range" in f.metadata:
            help_text += f"; {range_text(*f.metadata['range'])}"
        if "(default:" in help_text:
            pass  # the comment already says what the default means
        elif isinstance(default, bool):
            help_text += f" (default: {'on' if default else 'off'})"
        elif default in (None, "", []):
            help_text += " (default: none)"
        else:
            help_text += f" (default: {' '.join(map(str, default)) if isinstance(default, list) else default})"
        # argparse %-formats help strings: a literal "25%" in a comment must be escaped.
        help_text = help_text.replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": prefix + f.name, "help": help_text,
                                  "default": argparse.SUPPRESS if only_given else default}
        origin = typing.get_origin(tp)
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is typing.Literal:
            kwargs["choices"] = list(typing.get_args(tp))
            kwargs["type"] = type(typing.get_args(tp)[0])
        elif origin in (list, tuple):
            inner = (typing.get_args(tp) or (str,))[0]
            kwargs["nargs"] = "+"
            kwargs["type"] = inner
        elif tp in (int, float, str):
            kwargs["type"] = tp
        else:
            kwargs["type"] = str
        if kwargs.get("type") in (int, float) and "choices" not in kwargs:
            kwargs["metavar"] = "N" if kwargs["type"] is int else "X"
        parser.add_argument(flag, **kwargs)


def given_args(cls: type, args: argparse.Namespace, *, prefix: str = "") -> dict[str, Any]:
    """The fields of `cls` present in the parsed namespace (with `only_given`: the flags given)."""
    return {f.name: getattr(args, prefix + f.name) for f in dataclasses.fields(cls)
            if f.init and hasattr(args, prefix + f.name)}


def from_args(cls: type, args: argparse.Namespace, *, prefix: str = "", base: dict[str, Any] | None = None,
              **overrides: Any):
    """Build `cls` from the parsed namespace (fields missing from it keep `base`'s value, else
    their defaults)."""
    values = dict(base or {})
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key = prefix + f.name
        if hasattr(args, key):
            values[f.name] = getattr(args, key)
    values.update(overrides)
    return cls(**values)


# --------------------------------------------------------------------------------------------------
# config files


def load_config_file(path: str | Path, cls: type) -> dict[str, Any]:
    """Field values for `cls` from a JSON file (e.g. a run's config.json) or a TOML file a user wrote
    (`key = value` lines, or a table named like the command, e.g. [train]). Unknown keys are a
    one-line error, so a typo does not silently fall back to a default."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BudgetError(f"cannot read config file {path}: {e}") from None
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except ValueError as e:
        raise BudgetError(f"config file {path} is not valid {'TOML' if path.suffix.lower() == '.toml' else 'JSON'}: {e}") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), dict):
        data = next(iter(data.values()))  # one [section]
    if not isinstance(data, dict):
        raise BudgetError(f"config file {path} must hold one object of settings")
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise BudgetError(f"config file {path}: unknown setting(s) {', '.join(unknown[:5])}")
    return data


# --------------------------------------------------------------------------------------------------
# JSON io


def to_dict(obj: Any) -> Any:
    """Dataclasses (nested), paths and tuples -> JSON-serialisable builtins."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: to_dict(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def from_dict(cls: type, data: dict[str, Any]):
    """Build `cls` from a dict, ignoring keys the dataclass does not know (older/newer files)."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    return cls(**{k: v for k, v in data.items() if k in names})
