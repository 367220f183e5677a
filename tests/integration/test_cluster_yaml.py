"""cluster.yaml is a launcher config that `ray up` accepts, and carries what rayqueue needs on a cluster."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="install the test extra: pip install -e '.[test]'")

pytestmark = pytest.mark.integration

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"
#: Keys `ray up` needs from the file itself, before its provider's defaults are merged in.
REQUIRED = (
    "cluster_name",
    "max_workers",
    "provider",
    "auth",
    "available_node_types",
    "head_node_type",
    "file_mounts",
    "setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
    "idle_timeout_minutes",
)


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_it_has_the_keys_the_launcher_requires(config: dict):
    missing = [key for key in REQUIRED if key not in config]
    assert not missing, f"cluster.yaml lacks {missing}"
    assert config["provider"]["type"] == "aws" and config["provider"]["region"]
    assert config["head_node_type"] in config["available_node_types"]


def test_rays_own_schema_and_checks_accept_it(config: dict):
    """The same preparation and validation `ray up` runs, minus the cloud calls."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


def test_workers_carry_the_partition_resource_and_fit_max_workers(config: dict):
    workers = {name: node for name, node in config["available_node_types"].items() if name != config["head_node_type"]}
    assert any(node["resources"].get("rayqueue_partition", 0) > 0 for node in workers.values())
    assert sum(node.get("min_workers", 0) for node in workers.values()) <= config["max_workers"]


def test_every_node_installs_rayqueue_and_starts_ray_with_the_storage_settings(config: dict):
    assert any("pip install" in command and "rayqueue" in command for command in config["setup_commands"])
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [command for command in config[key] if "ray start" in command]
        assert start and all("rayqueue.env" in command for command in start), key
    assert "--head" in " ".join(config["head_start_ray_commands"])
    assert "$RAY_HEAD_IP" in " ".join(config["worker_start_ray_commands"])


def test_no_secret_is_written_into_it():
    text = CLUSTER_YAML.read_text()
    for secret in ("AWS_SECRET_ACCESS_KEY=", "AWS_ACCESS_KEY_ID=", "RAY_AUTH_TOKEN="):
        for line in text.splitlines():
            if secret in line:
                assert line.lstrip().startswith("#"), f"a value for {secret} outside a comment: {line}"
                value = line.split(secret, 1)[1].split()
                assert not value or value[0] == "...", f"a real-looking value: {line}"
