"""Queue settings: frozen, validated, persisted in the catalog as they are."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rayqueue import defaults
from rayqueue.errors import InvalidArgument, shown

_NAME = re.compile(rf"[A-Za-z0-9_-]{{1,{defaults.MAX_NAME_LENGTH}}}")

Durability = Literal["storage", "replicas"]
#: A quantity of a custom resource, as Ray takes it (see ``_ray_precision`` for the rest).
ResourceQuantity = Annotated[float, Field(ge=0.0, le=defaults.MAX_RESOURCE_QUANTITY, allow_inf_nan=False)]


def check_queue_name(name: object) -> str:
    """Return ``name`` if it is a valid queue name, else raise :class:`InvalidArgument`."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"queue name {shown(repr(name))} must be 1 to {defaults.MAX_NAME_LENGTH} characters "
            "of letters, digits, '-' and '_'",
            name=name,
        )
    return name


class QueueConfig(BaseModel):
    """The settings of one queue. Equal configs mean "the same queue"."""

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    name: str
    #: Messages stored and not yet deleted, across all partitions; more are refused with QueueFull.
    max_messages: int = Field(ge=1, le=defaults.MAX_QUEUE_MESSAGES)
    #: Longest body accepted; longer ones are refused with MessageTooLarge.
    max_message_bytes: int = Field(ge=1, le=defaults.MAX_MESSAGE_BYTES_LIMIT)
    #: Partitions to start with (and always, unless min_partitions/max_partitions let it change).
    partitions: int = Field(default=1, ge=1, le=defaults.MAX_PARTITIONS)
    #: The coordinator grows and shrinks the queue between these with load (None: ``partitions``).
    #: Keys and message ids are spread over ``min_partitions`` only: those never retire, so a
    #: key's messages stay in one partition, in order, whatever the scaling does.
    min_partitions: int | None = Field(default=None, ge=1, le=defaults.MAX_PARTITIONS)
    max_partitions: int | None = Field(default=None, ge=1, le=defaults.MAX_PARTITIONS)
    #: Load one partition is meant to carry: sends per second, and messages stored.
    target_send_rate: float = Field(
        default=defaults.TARGET_SEND_RATE,
        ge=defaults.MIN_TARGET_SEND_RATE,
        le=defaults.MAX_TARGET_SEND_RATE,
        allow_inf_nan=False,
    )
    target_backlog: int = Field(default=defaults.TARGET_BACKLOG, ge=1)
    #: History a scaling decision looks at, and the pause after each change.
    scaling_window_s: float = Field(default=defaults.SCALING_WINDOW_S, ge=1.0, le=3600.0)
    scaling_cooldown_s: float = Field(default=defaults.SCALING_COOLDOWN_S, ge=0.0, le=86400.0)
    visibility_timeout_s: float = Field(
        default=defaults.VISIBILITY_TIMEOUT_S, ge=0.0, le=defaults.MAX_VISIBILITY_TIMEOUT_S
    )
    retention_s: float = Field(default=defaults.RETENTION_S, ge=defaults.MIN_RETENTION_S, le=defaults.MAX_RETENTION_S)
    #: Message data each partition keeps in memory; a larger backlog waits on storage.
    partition_memory_bytes: int = Field(
        default=defaults.PARTITION_MEMORY_BYTES, ge=defaults.MIN_PARTITION_MEMORY_BYTES, le=64 << 30
    )
    #: What each partition actor asks Ray for. A custom resource that only worker node
    #: types carry (cluster.yaml: ``rayqueue_partition``) makes Ray's autoscaler add
    #: nodes when partitions do not fit, and remove them when partitions retire.
    partition_num_cpus: float = Field(default=0.0, ge=0.0, le=64.0)
    partition_resources: dict[str, ResourceQuantity] = Field(default_factory=dict)
    #: "dedicated": each partition (and replica) is an actor of its own. "shared": partitions
    #: live in a few host actors, for many small queues (thousands fit on one node).
    hosting: Literal["dedicated", "shared"] = "dedicated"
    #: Replica actors per partition, on other nodes where the cluster has them.
    replicas: int = Field(default=0, ge=0, le=defaults.MAX_REPLICAS)
    durability: Durability = "storage"

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        return check_queue_name(name)

    @field_validator("partition_num_cpus")
    @classmethod
    def _cpus_as_ray_takes_them(cls, cpus: float) -> float:
        return _ray_precision(cpus)

    @field_validator("partition_resources")
    @classmethod
    def _resources_as_ray_takes_them(cls, resources: dict[str, float]) -> dict[str, float]:
        # Checked here, not by Ray when the partition starts: by then the queue is in the
        # catalog, and each start fails again.
        for name, quantity in resources.items():
            if not name:
                raise ValueError("a resource name must not be empty")
            if name in defaults.RESERVED_RESOURCES:
                raise ValueError(
                    f"{name!r} is one of Ray's own resources ({', '.join(sorted(defaults.RESERVED_RESOURCES))}), "
                    "not a custom one; partition_num_cpus sets the CPUs a partition takes"
                )
            try:
                _ray_precision(quantity)
            except ValueError as error:
                raise ValueError(f"{shown(repr(name))} ({quantity!r}) {error}") from None
        return resources

    @model_validator(mode="before")
    @classmethod
    def _fixed_unless_told(cls, settings: Any) -> Any:
        if isinstance(settings, dict):
            partitions = settings.get("partitions", 1)
            if type(partitions) is not int or not 1 <= partitions <= defaults.MAX_PARTITIONS:
                return settings  # partitions' own error says it all; unset bounds add nothing
            for bound in ("min_partitions", "max_partitions"):
                if settings.get(bound) is None:
                    settings = {**settings, bound: partitions}
        return settings

    @model_validator(mode="after")
    def _partition_bounds(self) -> QueueConfig:
        if not self.min_partitions <= self.partitions <= self.max_partitions:  # type: ignore[operator]
            raise ValueError(
                f"partitions must lie within min_partitions and max_partitions: "
                f"{self.min_partitions} <= {self.partitions} <= {self.max_partitions} does not hold"
            )
        return self

    @property
    def scales(self) -> bool:
        return self.min_partitions != self.max_partitions

    @property
    def keyed_partitions(self) -> int:
        """Partitions that keys and message ids are spread over: those that never retire."""
        return self.min_partitions  # type: ignore[return-value]

    @model_validator(mode="after")
    def _a_share_for_every_partition(self) -> QueueConfig:
        # Each partition holds its share of max_messages (partition_quota). A share of 0
        # would refuse, with QueueFull, every send whose key or message id maps there,
        # even with the queue empty.
        if self.max_messages < self.max_partitions:  # type: ignore[operator]
            raise ValueError(
                f"max_messages ({self.max_messages}) must be at least max_partitions ({self.max_partitions}): "
                "each partition holds a share of max_messages, and a share of 0 would refuse every send to it"
            )
        return self

    @model_validator(mode="after")
    def _replicas_for_durability(self) -> QueueConfig:
        if self.durability == "replicas" and self.replicas < 1:
            # Acknowledging "on the replicas" with no replica would promise a copy that does not exist.
            raise ValueError(f"durability 'replicas' needs replicas >= 1, not {self.replicas}")
        return self

    @classmethod
    def build(cls, **settings: Any) -> QueueConfig:
        """Validate ``settings``; raise :class:`InvalidArgument` naming each bad value."""
        try:
            return cls(**settings)
        except pydantic.ValidationError as error:
            raise InvalidArgument(describe_validation_error(error)) from None

    def partition_quota(self, partition: int, count: int | None = None) -> int:
        """This partition's share of ``max_messages`` among ``count`` partitions (by
        default ``partitions``); the shares add up to it exactly."""
        share, remainder = divmod(self.max_messages, count or self.partitions)
        return share + (1 if partition < remainder else 0)

    def differences(self, other: QueueConfig) -> dict[str, tuple[Any, Any]]:
        """Settings that differ, as ``{field: (self's value, other's value)}``."""
        mine, theirs = self.model_dump(), other.model_dump()
        differing = {key: (mine[key], theirs[key]) for key in mine if mine[key] != theirs[key]}
        if not self.scales and not other.scales:
            # Bounds that only follow ``partitions`` would just repeat its difference.
            differing.pop("min_partitions", None)
            differing.pop("max_partitions", None)
        return differing


def describe_validation_error(error: pydantic.ValidationError) -> str:
    """One line per bad field, quoting the value: ``max_messages (0): ...``."""
    parts = []
    for item in error.errors(include_url=False):
        field = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "missing":
            parts.append(f"{field} is required")
        elif not item["loc"]:  # a rule across fields: its message names the values
            parts.append(message)
        else:
            parts.append(f"{field} ({shown(repr(item.get('input')))}): {message[0].lower()}{message[1:]}")
    return "; ".join(parts)


def _ray_precision(quantity: float) -> float:
    """``quantity`` if Ray takes it as it is: a multiple of ``defaults.RESOURCE_UNIT``."""
    units = quantity / defaults.RESOURCE_UNIT
    # A float such as 0.3 is not an exact multiple; anything within a millionth of a unit is.
    if not math.isclose(units, round(units), abs_tol=1e-6) or (quantity and not round(units)):
        raise ValueError(f"must be a multiple of {defaults.RESOURCE_UNIT:g}, the finest fraction Ray takes")
    return quantity
