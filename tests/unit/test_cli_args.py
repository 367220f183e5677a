"""The ``rayqueue`` command's checks, help and tables, without Ray."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rayqueue import cli


def test_a_bad_queue_name_is_refused_before_ray_is_even_imported():
    code = (
        "import sys\n"
        "from rayqueue.cli import main\n"
        "code = main(['create', 'my.queue'])\n"
        "assert 'ray' not in sys.modules and 'pyarrow' not in sys.modules, 'imported Ray'\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "queue name 'my.queue'" in result.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["create", "ok", "--max-messages", "0"],
        ["create", "ok", "--partitions", "1000"],
        ["send", "ok", "x", "--batch", "0"],
        ["receive", "ok", "--max", "0"],
        ["receive", "ok", "--wait", "99"],
        ["describe", "bad name"],
        ["top", "--interval", "0"],
    ],
)
def test_values_rayqueue_would_refuse_exit_2_without_ray(argv: list[str], capsys: pytest.CaptureFixture[str]):
    assert cli.main(argv) == cli.EXIT_USAGE
    assert "rayqueue: error:" in capsys.readouterr().err


def test_errors_under_json_are_one_json_document(capsys: pytest.CaptureFixture[str]):
    assert cli.main(["create", "my.queue", "--json"]) == 2
    out = capsys.readouterr()
    error = json.loads(out.out)["error"]
    assert error["type"] == "InvalidArgument" and error["exit_code"] == 2 and "my.queue" in error["message"]
    assert out.err == ""


def test_usage_errors_under_json_are_json_too(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exited:
        cli.main(["receive", "q", "--max", "many", "--json"])
    assert exited.value.code == 2
    assert "invalid int value" in json.loads(capsys.readouterr().out)["error"]["message"]


def test_help_is_plain_text(capsys: pytest.CaptureFixture[str]):
    for argv in (["--help"], ["top", "--help"], ["create", "--help"]):
        with pytest.raises(SystemExit):
            cli.main(argv)
        text = capsys.readouterr().out
        assert "``" not in text and "usage: rayqueue" in text


def test_describe_aligns_every_value_even_after_the_longest_key():
    result = {
        "queue": "q",
        "config": {"max_messages": 5000, "partition_memory_bytes": 268435456, "durability": "storage"},
        "stats": {
            "visible": 2, "in_flight": 0, "stored": 2, "stored_bytes": 10,
            "partitions": [{"partition": 0, "visible": 2, "in_flight": 0, "stored_bytes": 10}],
        },
    }  # fmt: skip
    lines = cli.format_describe(result).splitlines()
    config = [line for line in lines if line.startswith("  ")][:3]
    assert "partition_memory_bytes  268,435,456" in config[1]
    starts = {len(line) - len(line.split()[-1]) for line in config}
    assert len(starts) == 1, config  # one column of values


def test_top_renders_rates_backlog_and_replicas():
    sample = {
        "at": 0.0,
        "queues": [
            {
                "queue": "orders", "partitions": 2, "send_per_s": 1234.5, "delete_per_s": None, "visible": 10,
                "in_flight": 3, "stored": 13, "stored_bytes": 2_500_000, "replicas_in_sync": 1, "replicas": 2,
            }
        ],
    }  # fmt: skip
    header, row = cli.format_top(sample).splitlines()[1:]
    assert header.split()[:4] == ["queue", "parts", "sent/s", "deleted/s"]
    assert row.split() == ["orders", "2", "1,234", "-", "10", "3", "13", "2.5", "1/2"]
    assert "no queues" in cli.format_top({"at": 0.0, "queues": []})
