"""Every Python snippet in the README runs as pasted: each in a fresh namespace (nothing
carried over from the one before), in one process with a local Ray and file:// storage
in a temporary folder, as a new user would paste them into a Python prompt."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"

RUNNER = """
import json, sys, traceback
snippets = json.load(open(sys.argv[1]))
for number, code in enumerate(snippets, 1):
    print(f"--- snippet {number}", flush=True)
    try:
        exec(compile(code, f"README snippet {number}", "exec"), {"__name__": "__main__"})
    except BaseException:
        traceback.print_exc()
        sys.exit(number)
print("--- all ran", flush=True)
"""


def python_snippets(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.M | re.S)


def test_the_readme_has_python_snippets():
    snippets = python_snippets(README.read_text())
    assert len(snippets) >= 3
    assert any("consumer(" in code for code in snippets)  # the consumer's methods are shown


def test_every_readme_python_snippet_runs_as_pasted(tmp_path: Path):
    snippets = tmp_path / "snippets.json"
    snippets.write_text(json.dumps(python_snippets(README.read_text())))
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_AUTH")}
    env.update(
        RAY_ADDRESS="local",  # a Ray of its own, never someone else's
        RAYQUEUE_STORAGE=f"file://{tmp_path / 'storage'}",
        RAY_USAGE_STATS_ENABLED="0",
    )
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, str(snippets)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "--- all ran" in result.stdout
    assert "b'hello'" in result.stdout  # handle() prints bodies: bytes, as the README says
    # the auth mode is chosen explicitly, so Ray has nothing to warn about
    assert "Token authentication is" not in result.stderr
