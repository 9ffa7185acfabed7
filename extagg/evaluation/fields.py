"""Checked reading of annotation files: every problem is an :class:`~extagg.errors.InputError` that names the file,
the record and the field, and no path read from data leaves the data root."""
from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from typing import Any, Union

from ..errors import InputError

MAX_SIDE = 1 << 16
"""Largest image height or width an annotation may declare."""


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
            data = json.load(f)
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
    content = _element(root)
    content = content if isinstance(content, dict) else {}
    objects = content.get("object", [])
    content["object"] = objects if isinstance(objects, list) else [objects]
    return {"annotation": content}


def _element(node: ET.Element) -> Any:
    children = list(node)
    if not children:
        return (node.text or "").strip()
    grouped: dict[str, list] = {}
    for child in children:
        grouped.setdefault(child.tag, []).append(_element(child))
    return {tag: values[0] if len(values) == 1 else values for tag, values in grouped.items()}
