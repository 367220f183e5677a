"""The scaling policy on metric series, without Ray."""

from __future__ import annotations

from rayqueue.control.autoscale import LoadSample, ScalingPolicy, decide

POLICY = ScalingPolicy(
    min_partitions=1, max_partitions=8, target_send_rate=1000, target_backlog=10_000, window_s=30, cooldown_s=60
)


def series(rates: list[float], backlog: int = 0, start: float = 0.0, step: float = 5.0) -> list[LoadSample]:
    return [LoadSample(at=start + i * step, send_rate=rate, backlog=backlog) for i, rate in enumerate(rates)]


def test_sustained_load_grows_straight_to_what_it_needs():
    history = series([3500] * 8)  # 0..35 s at 3.5 partitions' worth
    assert decide(history, current=1, policy=POLICY, now=35, last_change=-1000) == 4


def test_growth_is_capped_at_max_partitions():
    history = series([50_000] * 8)
    assert decide(history, current=2, policy=POLICY, now=35, last_change=-1000) == 8


def test_a_spike_shorter_than_the_window_changes_nothing():
    history = series([100] * 6 + [9000, 9000])
    assert decide(history, current=1, policy=POLICY, now=35, last_change=-1000) == 1


def test_backlog_alone_grows_the_queue():
    history = series([0] * 8, backlog=25_000)
    assert decide(history, current=1, policy=POLICY, now=35, last_change=-1000) == 3


def test_idle_queue_shrinks_one_partition_at_a_time_down_to_the_minimum():
    history = series([0] * 8)
    assert decide(history, current=4, policy=POLICY, now=35, last_change=-1000) == 3
    assert decide(history, current=1, policy=POLICY, now=35, last_change=-1000) == 1


def test_hysteresis_keeps_a_load_between_the_thresholds_where_it_is():
    # 4 partitions carry 2,000 msg/s: 3 would be at 67 % of target, above the 50 % shrink line.
    history = series([2000] * 8)
    assert decide(history, current=4, policy=POLICY, now=35, last_change=-1000) == 4


def test_cooldown_after_a_change():
    history = series([9000] * 8)
    assert decide(history, current=2, policy=POLICY, now=35, last_change=0) == 2
    assert decide(history, current=2, policy=POLICY, now=61, last_change=0) == 8


def test_no_decision_without_a_full_window_of_history():
    assert decide(series([9000] * 2, start=30), current=1, policy=POLICY, now=35, last_change=-1000) == 1
    assert decide([], current=1, policy=POLICY, now=35, last_change=-1000) == 1


def test_settings_out_of_range_are_obeyed_at_once():
    policy = ScalingPolicy(min_partitions=2, max_partitions=4)
    assert decide([], current=1, policy=policy, now=0, last_change=0) == 2
    assert decide([], current=6, policy=policy, now=0, last_change=0) == 4


def test_a_load_ramp_up_and_down_never_flaps():
    """Simulate a ramp with the decisions applied: the count rises, then falls, and
    never reverses direction within a cool-down."""
    rates = [i * 400.0 for i in range(30)] + [12_000 - i * 400.0 for i in range(31)] + [0.0] * 120
    history: list[LoadSample] = []
    current, last_change, changes = 1, -1000.0, []
    for step, rate in enumerate(rates):
        now = step * 5.0
        history.append(LoadSample(now, rate, 0))
        wanted = decide(history, current, POLICY, now, last_change)
        if wanted != current:
            changes.append((now, current, wanted))
            current, last_change = wanted, now
    assert max(b for _, _, b in changes) == 8 and current == 1
    for (t1, _, _), (t2, _, _) in zip(changes, changes[1:]):
        assert t2 - t1 >= POLICY.cooldown_s
    ups = [b > a for _, a, b in changes]
    assert ups == sorted(ups, reverse=True)  # all the growing, then all the shrinking
