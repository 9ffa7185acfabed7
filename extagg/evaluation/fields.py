"""Checked reading of annotation files: every problem is an :class:`~extagg.errors.InputError` that names the file,
the record and the field, and no path read from data leaves the data root."""
from __future__ import annotations

import json
import math
import os
import sys
import xml.etree.ElementTree as ET
from typing import Any, Union

from ..errors import InputError

MAX_SIDE = 1 << 16
"""Largest image height or width an annotation may declare."""
MAX_DEPTH = 64
"""Deepest nesting of XML elements an annotation file may have (a VOC annotation is 4 deep: ``annotation``,
``object``, ``bndbox``, ``xmin``); deeper is an :class:`~extagg.errors.InputError` naming the file. JSON nested
deeper than Python's parser goes is refused the same way."""


class TooLong:
    """A JSON integer with more digits than Python converts (``sys.get_int_max_str_digits()``, 4,300 by default),
    kept as a marker: every field check refuses it, naming the file and the field, and a field never read costs
    nothing."""

    def __init__(self, digits: int):
        self.digits = digits

    def __repr__(self) -> str:
        return f"<{self.digits}-digit number>"

    __str__ = __repr__


def _parse_int(text: str):
    try:
        return int(text)
    except ValueError:  # Python's digit limit (int() of a 10,000-digit text)
        return TooLong(len(text.lstrip("-")))


class Where:
    """A place in an annotation file, for error messages: ``Where(file, record)`` then ``.error(field, problem)``."""

    def __init__(self, file: Union[str, os.PathLike], record: str = ""):
        self.file, self.record = os.fspath(file), record

    def at(self, record: str) -> "Where":
        return Where(self.file, record)

    def error(self, field: str, problem: str) -> InputError:
        where = f"{self.file}: {self.record}: " if self.record else f"{self.file}: "
        return InputError(f"{where}field {field!r}: {problem}")


def need(record: Any, key: str, where: Where) -> Any:
    """``record[key]``, or an error naming the missing field."""
    if not isinstance(record, dict):
        raise where.error(key, f"expected a record with this field, got {type(record).__name__} {str(record)[:60]!r}")
    if key not in record or record[key] is None:
        raise where.error(key, f"missing (fields present: {', '.join(map(str, record)) or 'none'})")
    if isinstance(record[key], TooLong):
        limit = getattr(sys, "get_int_max_str_digits", lambda: 4300)()
        raise where.error(key, f"a number of {record[key].digits} digits; at most {limit} digits are read "
                               "(Python's integer digit limit)")
    return record[key]


def number(value: Any, where: Where, field: str) -> float:
    """A finite number from a JSON number or an XML text."""
    try:
        if isinstance(value, bool):
            raise TypeError
        x = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise where.error(field, f"expected a number, got {str(value)[:40]!r}") from None
    if not math.isfinite(x):
        raise where.error(field, f"expected a finite number, got {x!r}")
    return x


def side(value: Any, where: Where, field: str) -> int:
    """An image height or width: a whole number in 1..MAX_SIDE."""
    x = number(value, where, field)
    if x != int(x) or not 1 <= x <= MAX_SIDE:
        raise where.error(field, f"expected a whole number of pixels in 1..{MAX_SIDE}, got {value!r}")
    return int(x)


def flag(value: Any, where: Where, field: str) -> bool:
    """A 0/1 flag (VOC ``difficult``; absent is 0)."""
    text = str(value).strip()
    if text not in ("0", "1"):
        raise where.error(field, f"expected 0 or 1, got {text[:40]!r}")
    return text == "1"


def inside(root: Union[str, os.PathLike], relative: str, where: Where, field: str) -> str:
    """``root/relative`` resolved (symbolic links followed), refused unless it stays inside ``root`` (resolved)."""
    if not isinstance(relative, str) or not relative or "\0" in relative:
        raise where.error(field, f"expected a relative file name, got {str(relative)[:60]!r}")
    if os.path.isabs(relative):
        raise where.error(field, f"{relative!r} is an absolute path; paths in the data must be relative to "
                                 f"{os.fspath(root)!r}")
    base = os.path.realpath(root)
    path = os.path.realpath(os.path.join(base, relative))
    if os.path.commonpath([base, path]) != base:
        raise where.error(field, f"{relative!r} resolves to {path!r}, outside the data root {base!r}")
    return path


def read_json(path: Union[str, os.PathLike]) -> dict:
    """A JSON file whose top level is an object."""
    where = Where(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f, parse_int=_parse_int)
    except RecursionError:
        raise InputError(f"{os.fspath(path)}: JSON nested too deeply to read (arrays or objects inside each other "
                         "more than Python's recursion limit); an annotation file is a few levels deep") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{os.fspath(path)}: not valid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{os.fspath(path)}: cannot be read: {e}") from None
    if not isinstance(data, dict):
        raise where.error("(top level)", f"expected a JSON object, got {type(data).__name__}")
    return data


def read_voc_xml(path: Union[str, os.PathLike]) -> dict:
    """A VOC annotation file as ``VOCDetection`` gives it: ``{'annotation': {...}}``, each repeated tag a list and
    ``object`` always a list."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise InputError(f"{os.fspath(path)}: not valid XML ({e})") from None
    except OSError as e:
        raise InputError(f"{os.fspath(path)}: cannot be read: {e}") from None
    if root.tag != "annotation":
        raise Where(path).error("annotation", f"expected an <annotation> root element, got <{root.tag}>")
    content = _element(root, Where(path))
    content = content if isinstance(content, dict) else {}
    objects = content.get("object", [])
    content["object"] = objects if isinstance(objects, list) else [objects]
    return {"annotation": content}


def _element(node: ET.Element, where: Where, depth: int = 1) -> Any:
    children = list(node)
    if not children:
        return (node.text or "").strip()
    if depth >= MAX_DEPTH:
        raise InputError(f"{where.file}: XML elements nested more than {MAX_DEPTH} deep (at <{str(node.tag)[:40]}>); "
                         "a VOC annotation is 4 deep")
    grouped: dict[str, list] = {}
    for child in children:
        grouped.setdefault(child.tag, []).append(_element(child, where, depth + 1))
    return {tag: values[0] if len(values) == 1 else values for tag, values in grouped.items()}
