"""The chaos job's verdict: lost, resurrected (by the exact rule) and duplicates, from a
ledger written by hand (no Ray, no cluster)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "jobs"))

from chaos import Delivery, Ledger, verdict  # noqa: E402


def delivery(started: float, returned: float, epoch: int = 1) -> Delivery:
    return Delivery(started=started, returned=returned, partition=0, epoch=epoch, receipt=f"0.{epoch}.0.1")


def ledger_with(deliveries: dict[str, list[Delivery]], deleted_at: dict[str, float], acknowledged: list[str]) -> Ledger:
    ledger = Ledger()
    for message_id in acknowledged:
        ledger.acknowledged[message_id] = (0, 0.0)
    ledger.deliveries.update(deliveries)
    ledger.deleted_at.update(deleted_at)
    return ledger


def test_a_delivery_returned_after_the_delete_but_started_before_it_is_a_duplicate():
    # The review's F11: the receive was served before the delete was acknowledged,
    # and returned after it. Under at-least-once that is a duplicate, not a resurrection.
    ledger = ledger_with({"m": [delivery(1.0, 1.1), delivery(1.2, 3.0)]}, {"m": 2.0}, ["m"])

    summary = verdict(ledger)

    assert (summary["resurrected"], summary["duplicates"], summary["lost"]) == (0, 1, 0)


def test_a_delivery_whose_receive_started_after_the_acknowledged_delete_is_a_resurrection():
    ledger = ledger_with({"m": [delivery(1.0, 1.1), delivery(2.5, 2.6, epoch=2)]}, {"m": 2.0}, ["m"])

    summary = verdict(ledger)

    assert (summary["resurrected"], summary["duplicates"]) == (1, 0)


def test_a_message_never_deleted_and_delivered_twice_is_a_duplicate():
    ledger = ledger_with({"m": [delivery(1.0, 1.1), delivery(9.0, 9.1)]}, {}, ["m"])

    assert (verdict(ledger)["resurrected"], verdict(ledger)["duplicates"]) == (0, 1)


def test_an_acknowledged_message_never_delivered_is_lost_and_an_unacknowledged_one_is_not():
    ledger = ledger_with({"sent-not-acknowledged": [delivery(1.0, 1.1)]}, {}, ["m", "n"])
    ledger.deliveries["n"].append(delivery(1.0, 1.1))

    assert verdict(ledger)["lost"] == 1
