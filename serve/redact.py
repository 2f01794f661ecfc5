"""What the server writes for its clients: valid JSON only, no server paths, no tokens in logs.

* :func:`loads` parses request bodies strictly: ``NaN``, ``Infinity`` and numbers that overflow
  to infinity (``1e400``) are refused, as the JSON standard has no such values; Python's
  ``json`` accepts them and they used to reach the history, whose every read then failed.
* :func:`dumps` writes standard JSON (``allow_nan=False``); should a non-finite number slip in
  anyway (a timing, a result), it is written as ``null`` rather than failing the response.
* :class:`Redactor` replaces the server's own folders in messages by ``<output>``,
  ``<input>``, ``<models>``, ``<cache>`` … and shortens any other absolute path to its file
  name, so error messages and tracebacks sent to clients reveal no layout of the server.
* :class:`TokenFilter` masks ``token=…`` in log records (uvicorn's, Ray Serve's access logs).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["NonFiniteNumber", "Redactor", "TokenFilter", "dumps", "json_safe", "loads"]

# An absolute POSIX path of two or more parts (not the tail of a URL or of a relative path):
# everything up to its last part is dropped.
_ABSOLUTE = re.compile(r"(?<![\w.:/<>~-])/(?:[^\s/'\"<>():,;]+/)+(?=[^\s/'\"<>():,;]+)")
_TOKEN = re.compile(r"(token=)[^&\s'\"]+", re.IGNORECASE)


class NonFiniteNumber(ValueError):
    """A request body holds NaN, Infinity or a number too large for a float."""


def _constant(name: str) -> Any:
    raise NonFiniteNumber(f"{name} is not a JSON number; send a finite number")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NonFiniteNumber(f"{text[:40]} is too large for a floating-point number")
    return value


def loads(raw: bytes | str) -> Any:
    """Parse JSON strictly.

    Raises:
        NonFiniteNumber: ``NaN``, ``Infinity`` or an overflowing number.
        ValueError: Not JSON (``json.JSONDecodeError``, ``UnicodeDecodeError``), nested too
            deeply, or an integer with too many digits.
    """
    try:
        return json.loads(raw, parse_constant=_constant, parse_float=_float)
    except RecursionError:
        raise ValueError("the JSON is nested too deeply") from None


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def dumps(value: Any) -> str:
    """Standard JSON text of ``value`` (non-finite numbers written as null)."""
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":"))
    except ValueError:
        return json.dumps(json_safe(value), allow_nan=False, separators=(",", ":"))


class Redactor:
    """Replaces server paths in text sent to clients.

    Args:
        roots: Label → folder (``{"output": Path("/srv/out")}``); the folder becomes
            ``<label>``. Longer folders are replaced first, so nested ones keep their label.
    """

    def __init__(self, roots: Mapping[str, str | Path | None]) -> None:
        pairs: list[tuple[str, str]] = []
        for label, root in roots.items():
            if not root:
                continue
            path = Path(root).expanduser()
            for form in {str(path), str(path.absolute()), str(path.resolve())}:
                if len(form) > 1:
                    pairs.append((form.rstrip("/"), f"<{label}>"))
        self._pairs = sorted(pairs, key=lambda p: -len(p[0]))

    def text(self, text: str) -> str:
        """``text`` with the known folders labelled and other absolute paths shortened."""
        for form, label in self._pairs:
            text = text.replace(form, label)
        return _ABSOLUTE.sub("…/", text)

    def value(self, value: Any) -> Any:
        """:meth:`text` applied to every string inside ``value`` (dicts, lists)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.value(v) for v in value]
        return value


class TokenFilter(logging.Filter):
    """Masks ``token=…`` in log records, so bearer tokens given in a URL never reach logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and "token=" in record.msg.lower():
            record.msg = _TOKEN.sub(r"\1***", record.msg)
        if isinstance(record.args, Mapping):
            record.args = {k: _mask(v) for k, v in record.args.items()}
        elif isinstance(record.args, tuple):
            record.args = tuple(_mask(a) for a in record.args)
        return True


def _mask(value: Any) -> Any:
    return _TOKEN.sub(r"\1***", value) if isinstance(value, str) else value
