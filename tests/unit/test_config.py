"""QueueConfig.build: range checks that quote the value, name rules, quotas, differences."""

from __future__ import annotations

import math
from typing import Any

import pydantic
import pytest

from rayqueue import defaults
from rayqueue.config import QueueConfig, check_queue_name
from rayqueue.errors import InvalidArgument, shown

REQUIRED: dict[str, Any] = {"name": "orders", "max_messages": 100, "max_message_bytes": 1024}


def build(**overrides: Any) -> QueueConfig:
    return QueueConfig.build(**{**REQUIRED, **overrides})


def test_defaults_are_the_named_defaults():
    config = build()

    assert config.partitions == 1
    assert config.visibility_timeout_s == defaults.VISIBILITY_TIMEOUT_S
    assert config.retention_s == defaults.RETENTION_S
    assert config.durability == "storage"


# ------------------------------------------------------------------ ranges

OUT_OF_RANGE = [
    ("max_messages", 0),
    ("max_messages", -1),
    ("max_messages", defaults.MAX_QUEUE_MESSAGES + 1),
    ("max_message_bytes", 0),
    ("max_message_bytes", defaults.MAX_MESSAGE_BYTES_LIMIT + 1),
    ("partitions", 0),
    ("partitions", defaults.MAX_PARTITIONS + 1),
    ("visibility_timeout_s", -0.5),
    ("visibility_timeout_s", defaults.MAX_VISIBILITY_TIMEOUT_S + 1),
    ("visibility_timeout_s", math.inf),
    ("visibility_timeout_s", math.nan),
    ("retention_s", defaults.MIN_RETENTION_S - 1),
    ("retention_s", defaults.MAX_RETENTION_S + 1),
    ("retention_s", math.nan),
]


@pytest.mark.parametrize(("field", "value"), OUT_OF_RANGE)
def test_out_of_range_setting_is_rejected_quoting_field_and_value(field, value):
    with pytest.raises(InvalidArgument) as caught:
        build(**{field: value})

    assert f"{field} ({value!r})" in str(caught.value)


WRONG_TYPE = [
    ("max_messages", 1.5),
    ("max_messages", "100"),
    ("max_messages", True),
    ("max_message_bytes", None),
    ("partitions", 2.0),
    ("visibility_timeout_s", "30"),
    ("retention_s", None),
    ("durability", "disk"),
]


@pytest.mark.parametrize(("field", "value"), WRONG_TYPE)
def test_wrong_type_is_rejected_quoting_field_and_value(field, value):
    with pytest.raises(InvalidArgument) as caught:
        build(**{field: value})

    assert f"{field} ({value!r})" in str(caught.value)


IN_RANGE = [
    ("max_messages", 1),
    ("max_messages", defaults.MAX_QUEUE_MESSAGES),
    ("max_message_bytes", 1),
    ("max_message_bytes", defaults.MAX_MESSAGE_BYTES_LIMIT),
    ("partitions", 1),
    ("partitions", defaults.MAX_PARTITIONS),
    ("visibility_timeout_s", 0.0),
    ("visibility_timeout_s", defaults.MAX_VISIBILITY_TIMEOUT_S),
    ("retention_s", defaults.MIN_RETENTION_S),
    ("retention_s", defaults.MAX_RETENTION_S),
]


@pytest.mark.parametrize(("field", "value"), IN_RANGE)
def test_bounds_are_accepted(field, value):
    # Room for a share of max_messages in each of the most partitions.
    settings = {"max_messages": defaults.MAX_PARTITIONS, field: value}
    assert getattr(build(**settings), field) == value


def test_whole_numbers_are_accepted_for_seconds():
    config = build(visibility_timeout_s=5, retention_s=3600)

    assert config.visibility_timeout_s == 5.0
    assert config.retention_s == 3600.0


def test_invalid_argument_is_a_value_error():
    with pytest.raises(ValueError):
        build(max_messages=0)


def test_every_bad_setting_is_named_in_one_error():
    with pytest.raises(InvalidArgument) as caught:
        build(max_messages=0, partitions=0)

    assert "max_messages (0)" in str(caught.value)
    assert "partitions (0)" in str(caught.value)


def test_missing_setting_is_named():
    with pytest.raises(InvalidArgument, match="max_messages is required"):
        QueueConfig.build(name="orders", max_message_bytes=10)


def test_unknown_setting_is_rejected():
    with pytest.raises(InvalidArgument, match="colour"):
        build(colour="red")


def test_replicas_durability_is_refused_until_replicas_exist():
    with pytest.raises(InvalidArgument, match="durability"):
        build(durability="replicas")


def test_config_is_frozen():
    config = build()

    with pytest.raises(pydantic.ValidationError):
        config.max_messages = 5  # type: ignore[misc]


# ------------------------------------------------------------------- names

VALID_NAMES = ["a", "Z", "0", "orders", "my-queue_2", "-", "_", "a" * defaults.MAX_NAME_LENGTH]
INVALID_NAMES = [
    "",
    "a" * (defaults.MAX_NAME_LENGTH + 1),
    "with space",
    " leading",
    "trailing\n",
    "dot.name",
    "slash/name",
    "star*",
    "naïve",
    "日本",
    "٣",  # a non-ASCII digit
]


@pytest.mark.parametrize("name", VALID_NAMES)
def test_valid_names_are_accepted(name):
    assert build(name=name).name == name


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_invalid_names_are_rejected_quoting_the_name(name):
    with pytest.raises(InvalidArgument) as caught:
        build(name=name)

    assert shown(repr(name)) in str(caught.value)


@pytest.mark.parametrize("name", [None, 5, b"orders"])
def test_name_must_be_a_string(name):
    with pytest.raises(InvalidArgument):
        build(name=name)


@pytest.mark.parametrize("name", INVALID_NAMES + [None, 7])
def test_check_queue_name_rejects_what_build_rejects(name):
    with pytest.raises(InvalidArgument) as caught:
        check_queue_name(name)

    assert caught.value.name == name


# ------------------------------------------------------------------ quotas


@pytest.mark.parametrize(
    ("max_messages", "partitions"),
    [(1, 1), (10, 3), (7, 7), (4, 4), (257, 256), (1_000_003, 16), (defaults.MAX_QUEUE_MESSAGES, 256)],
)
def test_partition_quotas_add_up_to_max_messages(max_messages, partitions):
    config = build(max_messages=max_messages, partitions=partitions)

    quotas = [config.partition_quota(p) for p in range(partitions)]

    assert sum(quotas) == max_messages
    assert max(quotas) - min(quotas) <= 1


# ------------------------------------------------------------- differences


def test_equal_configs_have_no_differences():
    assert build().differences(build()) == {}


def test_differences_name_each_field_with_both_values():
    mine = build(partitions=2)
    theirs = build(partitions=4, visibility_timeout_s=60.0)

    assert mine.differences(theirs) == {
        "partitions": (2, 4),
        "visibility_timeout_s": (defaults.VISIBILITY_TIMEOUT_S, 60.0),
    }


def test_equal_settings_make_equal_configs():
    assert build(partitions=3) == build(partitions=3)
    assert build(partitions=3) != build(partitions=4)
