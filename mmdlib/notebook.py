"""What the book's notebooks call around their parameters cell: ``check_parameters`` refuses, under papermill,
a parameter the notebook does not have or a value of the wrong type, before anything else runs."""
from __future__ import annotations

import ast

from .errors import MMDLibError


KINDS = {"int": "an integer", "float": "a number", "str": "a string", "list": "a list", "tuple": "a list",
         "bool": "True or False"}


def _defaults(source: str) -> dict[str, object]:
    """The names a cell assigns, with their values where they are literals (else ``...``)."""
    out = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                value = ...
            out.update({t.id: value for t in node.targets if isinstance(t, ast.Name)})
    return out


def _fits(value, default) -> bool:
    """Whether ``value`` has the kind of ``default`` (a number for a number, a list for a list, ...); a default
    of None or of no literal value takes anything."""
    if default is None or default is ...:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and (
            isinstance(default, float) or float(value).is_integer())
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def check_parameters() -> None:
    """Under papermill, refuse a parameter the notebook does not have (``-p`` injects any name it is given, so a
    misspelt or renamed one would leave the default silently in force) and a value whose type is not its
    default's (``-p iterations abc``). Called right after the parameters cell; reads the two cells run before
    it (papermill's injected "# Parameters" cell and the notebook's parameters cell). Elsewhere (Jupyter,
    Colab) it does nothing."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    history = shell.user_ns.get("In", []) if shell is not None else []
    if len(history) < 3 or not history[-2].startswith("# Parameters"):
        return
    known, given = _defaults(history[-3]), _defaults(history[-2])
    if set(given) - set(known):
        raise MMDLibError(f"unknown notebook parameter(s): {', '.join(sorted(set(given) - set(known)))}; this "
                          f"notebook's parameters are {', '.join(sorted(known))}.")
    for name in sorted(given):
        value = shell.user_ns.get(name)
        if not _fits(value, known[name]):
            kind = KINDS.get(type(known[name]).__name__, f"a {type(known[name]).__name__}")
            raise MMDLibError(f"notebook parameter {name} must be {kind} like its default {known[name]!r}, got "
                              f"{value!r}.")
