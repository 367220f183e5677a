"""How many partitions a queue should have: metrics in, decision out. A pure function.

The coordinator samples each queue's load now and then (``LoadSample``), keeps a
short history, and asks ``decide`` for the number of partitions. The policy:

- Load per partition is the larger of the send rate over its target and the
  backlog (visible + in flight) over its target, so a queue grows both when
  producers speed up and when consumers fall behind.
- Grow when the load over the whole window says more partitions are needed,
  straight to what the load asks for (capped at ``max_partitions``).
- Shrink one partition at a time, and only when even one fewer partition would
  stay under ``shrink_below`` of its target through the whole window.
- Hysteresis (the gap between growing at 100 % and shrinking below
  ``shrink_below``) and a cool-down after every change keep it from flapping.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rayqueue import defaults


@dataclass(frozen=True)
class LoadSample:
    """One observation of a queue, summed over its partitions."""

    at: float
    #: Messages sent per second since the previous sample.
    send_rate: float
    #: Messages stored and not deleted (visible + in flight).
    backlog: int


@dataclass(frozen=True)
class ScalingPolicy:
    min_partitions: int
    max_partitions: int
    #: Send rate one partition is meant to carry.
    target_send_rate: float = defaults.TARGET_SEND_RATE
    #: Backlog one partition is meant to hold.
    target_backlog: int = defaults.TARGET_BACKLOG
    #: Shrink only when one fewer partition would stay under this share of its target.
    shrink_below: float = 0.5
    #: How much history a decision looks at, and how long to wait after a change.
    window_s: float = defaults.SCALING_WINDOW_S
    cooldown_s: float = defaults.SCALING_COOLDOWN_S


def partitions_needed(sample: LoadSample, policy: ScalingPolicy) -> float:
    """Partitions this one sample asks for (fractional)."""
    return max(sample.send_rate / policy.target_send_rate, sample.backlog / policy.target_backlog)


def decide(
    history: Sequence[LoadSample],
    current: int,
    policy: ScalingPolicy,
    now: float,
    last_change: float,
) -> int:
    """The number of partitions the queue should have now (``current`` for no change)."""
    floor_, ceiling = policy.min_partitions, policy.max_partitions
    if current < floor_ or current > ceiling:
        return min(max(current, floor_), ceiling)  # settings changed: obey them at once
    window = [sample for sample in history if sample.at >= now - policy.window_s]
    # Decide only on a history that spans (most of) the window.
    covered = bool(window) and history[0].at <= now - policy.window_s * 0.8
    if now - last_change < policy.cooldown_s or not covered:
        return current
    # A NaN need (a sample without a usable rate) says nothing; an infinite one (a rate
    # over a vanishing target) asks for all that is allowed. Neither may raise: the
    # coordinator decides for every queue in one loop.
    needs = [need for need in (partitions_needed(sample, policy) for sample in window) if not math.isnan(need)]
    if not needs:
        return current
    least = min(needs)
    if least > current:  # the whole window asked for more
        return ceiling if least >= ceiling else math.ceil(least)
    most = max(needs)
    if current > floor_ and most < (current - 1) * policy.shrink_below:
        return current - 1
    return current
