"""The deterministic simulation, at length: many seeded schedules of one partition under faults.

    python jobs/simulate.py                      # 2,000 schedules from seed 0, a summary
    python jobs/simulate.py --seeds 100000 --start 5000 --heavy
    python jobs/simulate.py --seed 1234 --trace  # replay one schedule and print what happened
    python jobs/simulate.py --coordinator real   # the real Coordinator instead of its model

No Ray, no threads, no real time (see ``rayqueue.simulation``): a schedule takes
milliseconds, and a failing seed replays exactly. Exits non-zero if any schedule
lost an acknowledged message, served a deleted one or got stuck.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from rayqueue.simulation import run
from rayqueue.simulation.world import HEAVY, Faults


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=2000, help="schedules to play")
    parser.add_argument("--start", type=int, default=0, help="first seed")
    parser.add_argument("--seed", type=int, help="play this one seed only")
    parser.add_argument("--trace", action="store_true", help="print the schedule's log")
    parser.add_argument("--heavy", action="store_true", help="more storage and replica faults")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--coordinator",
        choices=["model", "real"],
        default="model",
        help="the coordinator: a model of its contract, or rayqueue.control.coordinator.Coordinator itself",
    )
    args = parser.parse_args()
    faults = HEAVY if args.heavy else Faults()
    seeds = [args.seed] if args.seed is not None else range(args.start, args.start + args.seeds)
    started = time.monotonic()
    totals = {"schedules": 0, "acknowledged": 0, "deleted": 0, "faults": 0, "failovers": 0, "failed": 0}
    failed = []
    for seed in seeds:
        outcome = run(seed, faults, coordinator=args.coordinator)
        totals["schedules"] += 1
        for key in ("acknowledged", "deleted", "faults", "failovers"):
            totals[key] += getattr(outcome, key)
        if args.trace:
            print("\n".join(outcome.log))
        if not outcome.ok:
            totals["failed"] += 1
            failed.append(outcome.summary())
            print(outcome.summary(), file=sys.stderr, flush=True)
    totals["seconds"] = round(time.monotonic() - started, 1)
    if args.json:
        print(json.dumps({**totals, "failures": failed}))
    else:
        print(
            f"{totals['schedules']} schedules in {totals['seconds']} s: {totals['acknowledged']} sends and "
            f"{totals['deleted']} deletes acknowledged, {totals['faults']} faults injected, "
            f"{totals['failovers']} failovers; {totals['failed']} schedules broke an invariant"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
