"""Safe encoding of args, results and signal payloads: JSON only, never pickle.

Plain JSON values pass through. A fixed allow-list of Python types that JSON
lacks is written as a tagged object ``{"__relay__": tag, "v": ...}`` and read
back intact; an unknown tag is refused. A user dict that happens to carry the
tag key is escaped, so no stored value can forge a tag.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import uuid
from collections.abc import Callable
from decimal import Decimal
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from json.scanner import c_make_scanner  # type: ignore[attr-defined]
from typing import Any

from django_relay.exceptions import DecodeError, EncodeError

TAG = "__relay__"

_ENCODERS: dict[type, tuple[str, Callable[[Any], Any]]] = {
    dt.datetime: ("datetime", lambda v: v.isoformat()),
    dt.date: ("date", lambda v: v.isoformat()),
    dt.time: ("time", lambda v: v.isoformat()),
    Decimal: ("decimal", str),
    uuid.UUID: ("uuid", str),
}


def _text(parse: Callable[[str], Any]) -> Callable[[Any], Any]:
    # The parsers accept more than dumps() writes (uuid.UUID(5) even raises
    # AttributeError): take strings only, so stored data decodes one way or is refused.
    def decode(value: Any) -> Any:
        if type(value) is not str:
            raise TypeError(f"expected a string, not {type(value).__name__}")
        return parse(value)

    return decode


def _pairs(value: Any) -> dict[str, Any]:
    if type(value) is not list or not all(
        type(pair) is list and len(pair) == 2 and type(pair[0]) is str for pair in value
    ):
        raise TypeError("expected a list of [key, value] pairs")
    return dict(value)


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "datetime": _text(dt.datetime.fromisoformat),
    "date": _text(dt.date.fromisoformat),
    "time": _text(dt.time.fromisoformat),
    "decimal": _text(Decimal),
    "uuid": _text(uuid.UUID),
    # An escaped user dict, stored as key/value pairs so it is never re-tagged.
    "dict": _pairs,
}


#: Deepest nesting of lists and dicts stored (the value itself is level 1). Python's
#: json and PostgreSQL's jsonb both recurse once per level: a deeper value could be
#: refused by the database, or stored and then kill every process that reads it.
MAX_DEPTH = 100
#: Longest int stored, in decimal digits: Python refuses by default to convert a
#: longer one to or from text (``sys.get_int_max_str_digits()``), so no runner could
#: read it back.
MAX_INT_DIGITS = 4300
_INT_BOUND = 10**MAX_INT_DIGITS
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _Refused(Exception):
    """A value :func:`to_json` refuses; each level it passes through adds its step of the path."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.steps: list[str] = []


def _check_text(text: str, what: str) -> None:
    # jsonb has no way to hold NUL (even escaped), nor UTF-8 for a lone surrogate.
    if "\x00" in text:
        raise _Refused(f"{what} holds a NUL character (\\u0000), which PostgreSQL cannot store")
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError as exc:
            raise _Refused(
                f"{what} holds a lone surrogate ({text[exc.start]!r}), which is not valid UTF-8"
            ) from None


def _key_step(key: str) -> str:
    return f".{key}" if _NAME.fullmatch(key) else f"[{json.dumps(key)}]"


def _walk(value: Any, depth: int) -> Any:
    kind = type(value)
    if value is None or kind is bool:
        return value
    if kind is str:
        if "\x00" in value or not value.isascii():
            _check_text(value, "the string")
        return value
    if kind is int:
        if -_INT_BOUND < value < _INT_BOUND:
            return value
        raise _Refused(f"an int of more than {MAX_INT_DIGITS} digits cannot be stored")
    if kind is float:
        if not math.isfinite(value):
            raise _Refused(f"{value!r} is not valid JSON (only finite floats are)")
        return value
    if kind is dict or kind is list or kind is tuple:
        if depth >= MAX_DEPTH:
            raise _Refused(f"nested deeper than {MAX_DEPTH} levels (lists and dicts)")
        depth += 1
        if kind is not dict:
            items: list[Any] = []
            try:
                for item in value:
                    items.append(_walk(item, depth))
            except _Refused as exc:
                exc.steps.append(f"[{len(items)}]")
                raise
            return items
        out = {}
        for key, item in value.items():
            if type(key) is not str:
                raise _Refused(f"dict keys must be str, not {type(key).__name__}")
            if "\x00" in key or not key.isascii():
                _check_text(key, f"the dict key {key!r}")
            try:
                out[key] = _walk(item, depth)
            except _Refused as exc:
                exc.steps.append(_key_step(key))
                raise
        if TAG in out:
            return {TAG: "dict", "v": list(out.items())}
        return out
    encoder = _ENCODERS.get(kind)
    if encoder is None and isinstance(value, (str, int)):
        # str/int subclasses, such as Django's TextChoices and IntEnum members.
        return _walk(str(value) if isinstance(value, str) else int(value), depth)
    if encoder is None:
        raise _Refused(
            f"{kind.__name__} is not serializable; use JSON types, datetime, "
            "date, time, Decimal or UUID"
        )
    tag, encode = encoder
    return {TAG: tag, "v": encode(value)}


def to_json(value: Any, path: str = "$") -> Any:
    """Return ``value`` as plain JSON data, tagging the allow-listed types.

    Refused, besides types the codec does not know: what PostgreSQL's ``jsonb``
    cannot hold or a reader could not parse back, namely NaN and infinities, a
    NUL character or a lone surrogate in a string or a dict key, an int of more
    than :data:`MAX_INT_DIGITS` digits, and nesting deeper than :data:`MAX_DEPTH`.

    Args:
        value: The value to encode.
        path: The name of the value's root in error messages (``args``, ``result``).

    Raises:
        EncodeError: naming the path of the first value that cannot be stored,
            e.g. ``args.items[3].name: the string holds a NUL character ...``.
    """
    try:
        return _walk(value, 0)
    except _Refused as exc:
        where = path + "".join(reversed(exc.steps))
        raise EncodeError(f"{where}: {exc.reason}") from None


def _from_object(obj: dict[str, Any]) -> Any:
    if TAG not in obj:
        return obj
    tag = obj[TAG]
    decode = _DECODERS.get(tag) if isinstance(tag, str) else None
    if decode is None or set(obj) != {TAG, "v"}:
        raise DecodeError(f"refusing to decode unknown tagged value {tag!r}")
    try:
        return decode(obj["v"])
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise DecodeError(f"malformed {tag!r} value: {exc}") from exc


def _plain_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _encoder(default: Callable[[Any], Any] | None) -> Callable[[Any], str]:
    # JSONEncoder.encode() builds the C encoder anew at every call, which costs
    # more than encoding a small dict: build it once. Values reaching it are
    # acyclic (to_json() copies, refusing deep nesting), so no circular check.
    python = json.JSONEncoder(
        separators=(",", ":"),
        ensure_ascii=False,
        check_circular=False,
        allow_nan=False,
        default=default,
    ).encode
    if c_make_encoder is None:  # pragma: no cover  (CPython always has _json)
        return python
    try:
        chunks = c_make_encoder(
            None, default, encode_basestring, None, ":", ",", False, False, False
        )
        if "".join(chunks({"a": [1, "é"]}, 0)) != '{"a":[1,"é"]}':
            return python  # pragma: no cover
    except Exception:  # pragma: no cover  (a future signature: stay correct, if slower)
        return python
    return lambda value: "".join(chunks(value, 0))


#: JSON text of values :func:`to_json` returned (plain JSON data).
_encode = _encoder(None)
#: JSON text of plain data the caller vouches for (rows of job columns), ``datetime``
#: values as ISO 8601 text. No walk: nothing user-supplied goes through it unchecked.
encode_plain = _encoder(_plain_default)


def dumps(value: Any, *, limit: int | None = None, what: str = "value") -> str:
    """Encode ``value`` to JSON text, refusing it if it exceeds ``limit`` bytes.

    Raises:
        EncodeError: the value is not serializable, or is too large.
    """
    # Most jobs' meta is {}: nothing to walk or encode.
    empty = type(value) is dict and not value
    text = "{}" if empty else _encode(to_json(value, what))
    if limit is not None:
        size = len(text) if text.isascii() else len(text.encode())
        if size > limit:
            raise TooLarge(f"{what} is {size} bytes encoded; the limit is {limit}", size, limit)
    return text


_STRICT = json.JSONDecoder(object_hook=_from_object)
_scan = c_make_scanner(json.JSONDecoder()) if c_make_scanner is not None else None


def _parse_plain(text: str) -> Any:
    """``json.loads(text)``, without its Python layers when the text is one bare value.

    Text PostgreSQL writes (``jsonb::text``) has no whitespace around the value, so
    the C scanner reads it all at once; anything else (surrounding whitespace,
    trailing data, not JSON at all) goes to ``json.loads``, which decides as ever.
    """
    if _scan is not None:
        try:
            value, end = _scan(text, 0)
        except StopIteration:
            pass
        else:
            if end == len(text):
                return value
    return json.loads(text)


def loads(text: str | bytes | None) -> Any:
    """Decode JSON text written by :func:`dumps`.

    Raises:
        DecodeError: bad JSON or an unknown tag.
    """
    if text is None:
        return None
    # Most jobs' meta is {}, and their errors and deps []: the runner reads four JSON
    # columns per job, so these skip the parser (a fresh object each, as it returns).
    if text == "{}":
        return {}
    if text == "[]":
        return []
    try:
        if isinstance(text, bytes):
            text = text.decode()
        # The runner decodes several columns per job: skip the hook when no tag can
        # be in the text (a tag key is spelt literally, or with \\u escapes).
        tagless = TAG not in text and "\\u" not in text
        value = _parse_plain(text) if tagless else _STRICT.decode(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DecodeError(f"stored data is not valid JSON: {exc}") from exc
    except (ValueError, RecursionError) as exc:
        # Valid JSON Python will not build: an int past sys.get_int_max_str_digits(),
        # or nesting deeper than the recursion limit.
        raise DecodeError(f"stored data cannot be decoded: {exc}") from exc
    # Whether deep nesting raises RecursionError depends on the Python version (3.13
    # builds 3,000 levels): refuse it explicitly, well past what dumps() writes (its
    # tags add a level). Text this short cannot nest that deep, so it skips the walk.
    if len(text) > 2 * MAX_DECODE_DEPTH and _deeper_than(value, MAX_DECODE_DEPTH):
        raise DecodeError(
            f"stored data cannot be decoded: nested deeper than {MAX_DECODE_DEPTH} levels"
        )
    return value


#: Nesting that :func:`loads` refuses: twice what :func:`dumps` accepts.
MAX_DECODE_DEPTH = 2 * MAX_DEPTH


def _deeper_than(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


class TooLarge(EncodeError):
    """An encoded value exceeded its size cap."""

    def __init__(self, message: str, size: int, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class JSONEncoder(json.JSONEncoder):
    """For Django's ``JSONField(encoder=...)``: the same tagged encoding."""

    def encode(self, o: Any) -> str:
        return super().encode(to_json(o))


def _from_object_for_display(obj: dict[str, Any]) -> Any:
    try:
        return _from_object(obj)
    except DecodeError:
        return obj


class JSONDecoder(json.JSONDecoder):
    """For Django's ``JSONField(decoder=...)``: the same tags, read for display.

    Reading a row through the ORM (the admin, your queries) must not break on one
    bad row, so a tagged value this codec refuses stays the plain JSON object it
    is; nothing is ever built from it. Running a job, or reading a result for
    ``relay``, goes through :func:`loads`, which refuses it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["object_hook"] = _from_object_for_display
        super().__init__(*args, **kwargs)

    def decode(self, s: str, *args: Any, **kwargs: Any) -> Any:
        try:
            value = super().decode(s, *args, **kwargs)
        except (RecursionError, ValueError) as exc:
            if isinstance(exc, json.JSONDecodeError):
                raise
            # Valid JSON that Python will not build (a 5,000-digit int, nesting past
            # the recursion limit): Django's JSONField then shows the stored text.
            raise json.JSONDecodeError(f"cannot be decoded: {exc}", s, 0) from exc
        # The same depth limit as loads(), whatever this Python's recursion allows.
        if len(s) > 2 * MAX_DECODE_DEPTH and _deeper_than(value, MAX_DECODE_DEPTH):
            raise json.JSONDecodeError(f"nested deeper than {MAX_DECODE_DEPTH} levels", s, 0)
        return value
