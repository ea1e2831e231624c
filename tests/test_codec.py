"""The codec: what can be stored, what comes back, and what is refused (no database)."""

from __future__ import annotations

import datetime as dt
import enum
import json
import uuid
from decimal import Decimal

import pytest
from django.db import models

from django_relay import codec
from django_relay.codec import TAG, TooLarge
from django_relay.exceptions import DecodeError, EncodeError
from tests.conftest import param_id


def roundtrip(value):
    return codec.loads(codec.dumps(value))


class Colour(models.TextChoices):
    RED = "red", "Red"
    BLUE = "blue", "Blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 7


UTC_PLUS_2 = dt.timezone(dt.timedelta(hours=2))


# -- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        0,
        -(2**70),
        1.5,
        "",
        "héllo ✓",
        [],
        {},
        {"a": [1, {"b": None}], "c": "d"},
    ],
    ids=repr,
)
def test_plain_json_round_trips_unchanged(value):
    assert codec.loads(codec.dumps(value)) == value
    # Plain JSON is stored as itself: no tags added.
    assert json.loads(codec.dumps(value)) == value


@pytest.mark.parametrize(
    "value",
    [
        dt.datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=dt.UTC),
        dt.datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=UTC_PLUS_2),
        dt.datetime(1999, 12, 31, 8, 30),
        dt.date(2024, 2, 29),
        dt.time(13, 14, 15, 16),
        dt.time(13, 14, tzinfo=UTC_PLUS_2),
        Decimal("0.1"),
        Decimal("-12345678901234567890.000000000001"),
        Decimal("1E+3"),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
    ],
    ids=repr,
)
def test_rich_scalars_round_trip_with_their_type(value):
    back = roundtrip(value)
    assert back == value
    assert type(back) is type(value)
    if isinstance(value, dt.datetime | dt.time):
        # Aware stays aware with the same offset, naive stays naive.
        assert back.utcoffset() == value.utcoffset()
        assert back.tzinfo is None if value.tzinfo is None else back.tzinfo is not None
    if isinstance(value, Decimal):
        assert str(back) == str(value)  # precision and exponent kept, no float on the way


def test_rich_values_round_trip_nested():
    value = {
        "when": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        "items": [
            {"price": Decimal("9.99"), "id": uuid.UUID(int=7)},
            [dt.date(2024, 1, 1), [dt.time(1, 2)]],
        ],
        "empty": {"list": [], "dict": {}},
    }
    assert roundtrip(value) == value


def test_tuples_come_back_as_lists():
    assert roundtrip((1, (2, 3), {"t": ("a",)})) == [1, [2, 3], {"t": ["a"]}]


def test_str_and_int_subclasses_are_stored_as_their_plain_values():
    value = {"colour": Colour.RED, "level": Level.HIGH, "levels": [Level.LOW]}
    encoded = codec.dumps(value)
    assert json.loads(encoded) == {"colour": "red", "level": 7, "levels": [1]}
    back = codec.loads(encoded)
    assert back == {"colour": "red", "level": 7, "levels": [1]}
    assert type(back["colour"]) is str
    assert type(back["level"]) is int


def test_bool_stays_bool():
    assert roundtrip([True, False]) == [True, False]
    assert type(roundtrip(True)) is bool


# -- the tag key cannot be forged -------------------------------------------------------------


@pytest.mark.parametrize(
    "user_dict",
    [
        {TAG: "datetime", "v": "2024-01-01T00:00:00"},
        {TAG: "dict", "v": [["x", 1]]},
        {TAG: "pickle", "v": "gASVAAAA"},
        {TAG: None},
        {TAG: {"nested": Decimal("1.5")}, "other": [1]},
    ],
    ids=repr,
)
def test_a_user_dict_carrying_the_tag_key_round_trips_intact(user_dict):
    back = roundtrip(user_dict)
    assert back == user_dict
    assert type(back) is dict


def test_a_user_dict_carrying_the_tag_key_cannot_forge_a_tagged_value():
    forged = {TAG: "uuid", "v": "12345678-1234-5678-1234-567812345678"}
    back = roundtrip({"payload": forged})["payload"]
    assert back == forged  # still the user's plain dict, not a UUID
    assert not isinstance(back, uuid.UUID)


# -- refusals name the path -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "path", "detail"),
    [
        ({"tags": {1, 2}}, "args.tags", "set"),
        ({"a": [1, object()]}, "args.a[1]", "object"),
        ({"x": {"y": float("nan")}}, "args.x.y", "nan"),
        ({"x": [float("inf")]}, "args.x[0]", "inf"),
        ({"x": -float("inf")}, "args.x", "inf"),
        ({"blob": b"\x00\x01"}, "args.blob", "bytes"),
        ({"d": {1: "one"}}, "args.d", "keys must be str"),
        ({"d": {("a", "b"): 1}}, "args.d", "keys must be str"),
        ({"d": {None: 1}}, "args.d", "keys must be str"),
        ({"c": 1 + 2j}, "args.c", "complex"),
        ({"s": frozenset()}, "args.s", "frozenset"),
    ],
    ids=lambda v: param_id(v, 40),
)
def test_unserializable_values_are_refused_naming_their_path(value, path, detail):
    with pytest.raises(EncodeError) as excinfo:
        codec.dumps(value, what="args")
    message = str(excinfo.value)
    assert message.startswith(f"{path}:")
    assert detail in message


def _nested(levels: int) -> list:
    value: list = []
    for _ in range(levels - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("value", "path", "detail"),
    [
        # What PostgreSQL's jsonb refuses (DataError, UnicodeEncodeError) ...
        ({"items": [0, 1, 2, {"name": "a\x00b"}]}, "args.items[3].name", "NUL"),
        ({"s": "x\udc80"}, "args.s", "lone surrogate"),
        ({"s": ["ok", "\ud800"]}, "args.s[1]", "lone surrogate"),
        # ... and in keys, where the path names the dict holding the key.
        ({"d": {"k\x00": 1}}, "args.d", "NUL"),
        ({"d": {"\udfff": 1}}, "args.d", "lone surrogate"),
        # What json.dumps or json.loads cannot convert (ValueError, RecursionError).
        ({"n": 10**5000}, "args.n", "4300 digits"),
        ({"n": [-(10**4300)]}, "args.n[0]", "4300 digits"),
        ({"deep": _nested(1000)}, "args.deep" + "[0]" * 99, "deeper than 100"),
        # A key that is not a plain name is quoted in the path.
        ({"a.b": {"c d": "\x00"}}, 'args["a.b"]["c d"]', "NUL"),
    ],
    ids=[
        "nul",
        "surrogate",
        "surrogate-in-list",
        "nul-key",
        "surrogate-key",
        "huge-int",
        "huge-negative-int",
        "deep",
        "quoted-keys",
    ],
)
def test_values_postgresql_or_a_reader_would_refuse_are_refused_naming_their_path(
    value, path, detail
):
    with pytest.raises(EncodeError) as excinfo:
        codec.dumps(value, what="args")
    message = str(excinfo.value)
    assert message.startswith(f"{path}: ")
    assert detail in message
    assert "\x00" not in message and "\udc80" not in message  # the message itself is storable
    message.encode()


def test_the_depth_and_int_limits_are_inclusive_and_round_trip():
    assert roundtrip(_nested(codec.MAX_DEPTH)) == _nested(codec.MAX_DEPTH)
    with pytest.raises(EncodeError, match="deeper than"):
        codec.dumps(_nested(codec.MAX_DEPTH + 1))
    biggest = 10**codec.MAX_INT_DIGITS - 1
    assert roundtrip([biggest, -biggest]) == [biggest, -biggest]


def test_the_jsonfield_encoder_refuses_a_nul_too():
    with pytest.raises(EncodeError, match=r"^\$\.a: .*NUL"):
        json.dumps({"a": "\x00"}, cls=codec.JSONEncoder)


def test_the_path_root_defaults_to_value():
    with pytest.raises(EncodeError, match=r"^value\[0\]: set is not serializable"):
        codec.dumps([set()])


def test_encode_error_is_a_value_error_for_callers_that_catch_those():
    with pytest.raises(ValueError):
        codec.dumps(object())


# -- size caps --------------------------------------------------------------------------------


def test_values_within_the_limit_pass():
    text = codec.dumps({"s": "x" * 10}, limit=100)
    assert codec.loads(text) == {"s": "x" * 10}
    exact = codec.dumps("y" * 8)
    assert codec.dumps("y" * 8, limit=len(exact.encode())) == exact  # the limit is inclusive


def test_oversized_values_raise_too_large_with_size_and_limit():
    with pytest.raises(TooLarge) as excinfo:
        codec.dumps({"s": "x" * 200}, limit=100, what="args")
    exc = excinfo.value
    assert isinstance(exc, EncodeError)
    assert exc.limit == 100
    assert exc.size == len(codec.dumps({"s": "x" * 200}).encode())
    assert "args" in str(exc) and "100" in str(exc) and str(exc.size) in str(exc)


def test_the_size_is_counted_in_utf8_bytes_not_characters():
    value = "é" * 60  # 60 characters, 120 bytes (+2 quotes)
    with pytest.raises(TooLarge) as excinfo:
        codec.dumps(value, limit=100)
    assert excinfo.value.size == 122


# -- decoding refusals ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"__relay__": "pickle", "v": "gASV"}',
        '{"__relay__": "os.system", "v": "rm -rf /"}',
        '{"__relay__": 3, "v": 1}',
        '{"__relay__": null, "v": 1}',
        '{"__relay__": null}',
        '{"__relay__": ["datetime"], "v": "2024-01-01"}',
        '[{"ok": {"__relay__": "nope", "v": 1}}]',
    ],
)
def test_loads_refuses_unknown_tags(text):
    with pytest.raises(DecodeError):
        codec.loads(text)


@pytest.mark.parametrize(
    "text",
    [
        '{"__relay__": "datetime", "v": "yesterday"}',
        '{"__relay__": "datetime", "v": 5}',
        '{"__relay__": "date", "v": []}',
        '{"__relay__": "time", "v": "25:00"}',
        '{"__relay__": "decimal", "v": "twelve"}',
        '{"__relay__": "decimal", "v": 1.5}',
        '{"__relay__": "uuid", "v": "not-a-uuid"}',
        '{"__relay__": "uuid", "v": 5}',
        '{"__relay__": "dict", "v": 5}',
        '{"__relay__": "dict", "v": ["ab"]}',
        '{"__relay__": "dict", "v": [[1, 2]]}',
        '{"__relay__": "dict", "v": [["a", 1, 2]]}',
        '{"__relay__": "datetime"}',
        '{"__relay__": "datetime", "v": "2024-01-01T00:00:00", "extra": 1}',
    ],
)
def test_loads_refuses_malformed_tagged_values(text):
    with pytest.raises(DecodeError):
        codec.loads(text)


@pytest.mark.parametrize("text", ["", "{", "[1,", "{'a': 1}", "NaNx", b"\xff", b"\xff\xfe"])
def test_loads_refuses_bad_json_with_decode_error(text):
    with pytest.raises(DecodeError):
        codec.loads(text)


@pytest.mark.parametrize("text", ["{} x", "[] []", "1 2", '"a"b', "{}}", "tru"])
def test_loads_refuses_trailing_data_or_a_partial_value(text):
    with pytest.raises(DecodeError):
        codec.loads(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [(" {} ", {}), ('\n{"a": [1, 2.5, null]}\t', {"a": [1, 2.5, None]}), ("7", 7), ('"x"', "x")],
)
def test_loads_reads_any_json_text_around_whitespace_or_not(text, value):
    assert codec.loads(text) == value


def test_loads_gives_a_fresh_object_for_empty_containers_each_time():
    first, second = codec.loads("{}"), codec.loads("{}")
    first["changed"] = True
    assert second == {} and codec.loads("{}") == {}
    items = codec.loads("[]")
    items.append(1)
    assert codec.loads("[]") == []


def test_loads_of_none_is_none_and_bytes_are_accepted():
    assert codec.loads(None) is None
    assert codec.loads(codec.dumps({"d": Decimal("2.5")}).encode()) == {"d": Decimal("2.5")}


# -- Django JSONField classes follow the same rules -------------------------------------------


def test_jsonfield_encoder_tags_like_dumps():
    value = {"at": dt.datetime(2024, 5, 6, tzinfo=dt.UTC), "n": Decimal("3.30"), TAG: "x"}
    text = json.dumps(value, cls=codec.JSONEncoder)
    assert json.loads(text) == json.loads(codec.dumps(value))
    assert json.loads(text, cls=codec.JSONDecoder) == value
    assert codec.loads(text) == value


@pytest.mark.parametrize(
    ("value", "path"), [({"s": {1}}, "$.s"), ([float("nan")], "$[0]"), ({2: 1}, "$")]
)
def test_jsonfield_encoder_refuses_what_dumps_refuses(value, path):
    with pytest.raises(EncodeError) as excinfo:
        json.dumps(value, cls=codec.JSONEncoder)
    assert str(excinfo.value).startswith(f"{path}:")


def test_jsonfield_decoder_shows_unknown_and_malformed_tags_as_plain_json():
    # The ORM (the admin) must not break on one bad row; nothing is built from it,
    # and the strict loads() used to run jobs still refuses it.
    for text in ('{"__relay__": "pickle", "v": ""}', '{"__relay__": "uuid", "v": 5}'):
        assert json.loads(text, cls=codec.JSONDecoder) == json.loads(text)
        with pytest.raises(DecodeError):
            codec.loads(text)
    assert json.loads(codec.dumps({"u": uuid.UUID(int=1)}), cls=codec.JSONDecoder) == {
        "u": uuid.UUID(int=1)
    }


def test_job_model_json_fields_use_the_codec():
    from django_relay.models import Job

    for name in ("args", "meta", "result", "errors"):
        field = Job._meta.get_field(name)
        assert field.encoder is codec.JSONEncoder
        assert field.decoder is codec.JSONDecoder


def test_loads_refuses_nesting_deeper_than_its_limit_on_every_python():
    # Python 3.12 raises RecursionError near 1,000 levels, 3.13 builds 3,000: the
    # limit must not depend on that.
    deep = "[" * (codec.MAX_DECODE_DEPTH + 50) + "]" * (codec.MAX_DECODE_DEPTH + 50)
    with pytest.raises(DecodeError, match="nested deeper"):
        codec.loads(deep)
    fine = "[" * codec.MAX_DEPTH + "]" * codec.MAX_DEPTH
    assert codec.loads(fine) is not None
