"""Settings every test run needs: no usage reporting (there is no outside network)."""

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
