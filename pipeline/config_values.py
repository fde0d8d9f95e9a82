"""Values of the training config, read by each field's declared type.

Two sources: YAML files and ``section.key=value`` overrides. Overrides are text and are parsed by
the field's type, never as YAML: YAML 1.1 turns ``no``, ``yes``, ``on`` and ``off`` into booleans,
so ``run.mixed_precision=no`` would arrive as ``False``. Files are YAML, read with a loader whose
booleans are only ``true``/``false`` (YAML 1.2), for the same reason.
"""

from __future__ import annotations

import math
import re
import sys
import types
import typing
from typing import Any, Union

import yaml

from .errors import ConfigError

TRUE, FALSE = ("true", "yes", "on"), ("false", "no", "off")
NONE = ("null", "none", "~", "")


class _Yaml12Booleans(yaml.SafeLoader):
    """SafeLoader with YAML 1.2's booleans: only true/false (any case), not yes/no/on/off; and a
    key given twice in one mapping refused, as YAML says (PyYAML keeps the last one without a word,
    so `image_size: 32` ... `image_size: 64` trained at 64 px)."""

    def flatten_mapping(self, node):
        # Before PyYAML flattens merge keys (`<<: *anchor`), which rewrites a merged node in place:
        # each mapping's own keys, once, compared by their node (two on one line are two keys).
        checked = self.__dict__.setdefault("_checked_mappings", set())
        if id(node) not in checked:
            checked.add(id(node))
            first: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node)
                try:
                    earlier = first.setdefault(key, key_node)
                except TypeError:  # an unhashable key: SafeLoader's own error follows
                    continue
                if earlier is not key_node:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found the key {key!r} twice (first on line {earlier.start_mark.line + 1})",
                        key_node.start_mark)
        super().flatten_mapping(node)


_Yaml12Booleans.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Booleans.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                      list("tTfF"))


def load_yaml(text: str) -> Any:
    """Parse YAML with 1.2 booleans (``no`` stays the string "no")."""
    return yaml.load(text, Loader=_Yaml12Booleans)  # noqa: S506 - a SafeLoader subclass


def coerce(value: Any, expected: Any, *, name: str) -> Any:
    """``value`` (from YAML, or text from the command line) as the annotation ``expected``: text is
    parsed by the type (ints pass as floats, lists as tuples); anything else is a ConfigError
    naming ``name``."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (Union, types.UnionType):
        if type(None) in args and (value is None or (isinstance(value, str) and value.strip().lower() in NONE)):
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], name=name)
    if origin is tuple:
        return _coerce_tuple(value, args, name=name)
    if expected is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{name}: expected text, got {value!r} ({type(value).__name__}); quote it in YAML")
    if isinstance(value, str):
        return _from_text(value.strip(), expected, name=name)
    if expected is bool and isinstance(value, bool):
        return value
    if expected in (int, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, int):  # YAML's ints have no size limit: float() of a 400-digit one overflowed
            if expected is float and abs(value) > sys.float_info.max:
                raise ConfigError(f"{name}: expected a finite number, got a {len(str(abs(value)))}-digit one")
            return expected(value)
        if expected is int and not value.is_integer():
            raise ConfigError(f"{name}: expected a whole number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{name}: expected a finite number, got {value!r}")
        return expected(value)
    raise ConfigError(f"{name}: expected {_describe(expected)}, got {value!r} ({type(value).__name__})")


def _from_text(text: str, expected: Any, *, name: str) -> Any:
    if expected is bool:
        if text.lower() in TRUE:
            return True
        if text.lower() in FALSE:
            return False
    elif expected is int:
        try:
            return int(text)
        except ValueError:
            pass
    elif expected is float:
        try:
            number = float(text)
        except ValueError:
            pass
        else:
            if math.isfinite(number):
                return number
    raise ConfigError(f"{name}: expected {_describe(expected)}, got {text!r}")


def _coerce_tuple(value: Any, args: tuple, *, name: str) -> tuple:
    if isinstance(value, str):  # "0.08,1" or "[0.08, 1]" on the command line
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        value = [item.strip() for item in text.split(",")] if text.strip() else []
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{name}: expected a list, got {value!r}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(coerce(item, args[0], name=name) for item in value)
    if len(value) != len(args):
        raise ConfigError(f"{name}: expected a list of {len(args)} values, got {list(value)!r}")
    return tuple(coerce(item, arg, name=name) for item, arg in zip(value, args))


def _describe(expected: Any) -> str:
    return {bool: "true or false", int: "a whole number", float: "a number"}.get(expected, str(expected))
