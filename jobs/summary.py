"""How every job prints its summary: aligned lines for people, one JSON line for scripts."""

from __future__ import annotations

import json
from typing import Any


def print_summary(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary), flush=True)
        return
    print("summary:")
    width = max(map(len, summary), default=0) + 2
    for key, value in summary.items():
        shown = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else value
        print(f"  {key:{width}} {shown}", flush=True)
