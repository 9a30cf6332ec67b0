"""Your own architecture: a factory function you name, ``mypkg.models:build_net``.

permerge imports model code only because the user named it, on the command line
(``--arch-code``), in an experiment config (``model: code:mypkg.models:build_net``) or in
an API call: those entry points call :func:`allow`. A ``model.json`` may record which
factory built a model, but building from it is refused unless that factory was named by
the user in this process, so no model file can make permerge import or run code.

The factory is called with the ``--arch-arg key=value`` pairs as keyword arguments (JSON
scalars) and must return an ``nn.Module``; the module is imported from the current folder
or the installed environment.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from ..errors import ModelError
from .config import ModelConfig
from .registry import register

PREFIX = "code:"
ArgValue = str | int | float | bool
_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
_ALLOWED: set[str] = set()


def check_code(code: str) -> str:
    if not _PATTERN.match(code):
        raise ModelError(f"--arch-code {code!r}: expected module.path:function, e.g. mypkg.models:build_net")
    return code


def allow(code: str) -> str:
    """Record that the user named ``code`` (only entry points taking user input call this)."""
    _ALLOWED.add(check_code(code))
    return code


def parse_args(pairs: Iterable[str] | Mapping[str, Any] | None) -> tuple[tuple[str, ArgValue], ...]:
    """``["depth=4", "act=gelu"]`` or ``{"depth": 4}`` -> sorted (key, JSON scalar) pairs."""
    if pairs is None:
        return ()
    items: list[tuple[str, Any]] = []
    if isinstance(pairs, Mapping):
        items = list(pairs.items())
    else:
        for p in pairs:
            k, sep, v = p.partition("=")
            if not sep or not k.strip().isidentifier():
                raise ModelError(f"--arch-arg expects name=value, got {p!r}")
            try:
                items.append((k.strip(), json.loads(v)))
            except json.JSONDecodeError:
                items.append((k.strip(), v))
    for k, v in items:
        if not isinstance(v, (str, int, float, bool)):
            raise ModelError(f"--arch-arg {k}: values must be numbers, strings or true/false, got {json.dumps(v)}")
    return tuple(sorted(items))


def code_config(code: str, args: Any, in_shape: tuple[int, int, int]) -> ModelConfig:
    """The config of a user-named factory (and permission to import it in this process)."""
    return ModelConfig(arch="code", code=allow(code), code_args=parse_args(args), in_shape=in_shape)


def _resolve(code: str) -> Any:
    module, _, attr = code.partition(":")
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:  # the module may live in the current folder (console scripts do not look there)
        sys.path.insert(0, cwd)
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # ImportError, or the module's own code failing
        raise ModelError(f"--arch-code {code}: cannot import {module} ({type(e).__name__}: {_first(e)})") from None
    finally:
        if added:
            sys.path.remove(cwd)
    fn = getattr(mod, attr, None)
    if not callable(fn):
        raise ModelError(f"--arch-code {code}: {module} has no function {attr}")
    return fn


@register("code")
def build_code(cfg: ModelConfig) -> nn.Module:
    """Call the named factory; refused unless the user named it in this process."""
    code = cfg.code or ""
    if code not in _ALLOWED:
        raise ModelError(
            f"model built by {code or 'user code'}: permerge imports model code only when you name it "
            f"(pass --arch-code {code or 'module:function'})"
        )
    args = dict(cfg.code_args)
    try:
        model = _resolve(code)(**args)
    except ModelError:
        raise
    except Exception as e:  # the user's code: any exception, reported on one line
        call = ", ".join(f"{k}={v!r}" for k, v in args.items())
        raise ModelError(f"--arch-code {code}({call}) failed: {type(e).__name__}: {_first(e)}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"--arch-code {code} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _first(e: BaseException) -> str:
    return " ".join(str(e).split())[:200] or type(e).__name__
