"""connect()'s fast failures, without starting Ray: a dead address, unusable storage."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

import rayqueue
from rayqueue.client import session
from rayqueue.errors import RayQueueError, StorageUnavailable


def dead_address() -> str:
    """A loopback port that nothing listens at (bound, never listened, closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def ray_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Ray's temp folder, where it looks for the current cluster's address, moved here."""
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path


def test_a_stale_current_cluster_file_is_named_with_what_to_do(ray_temp: Path):
    address = dead_address()
    (ray_temp / "ray").mkdir()
    (ray_temp / "ray" / "ray_current_cluster").write_text(address)
    with pytest.raises(RayQueueError) as raised:
        rayqueue.connect()
    message = str(raised.value)
    assert address in message and "ray_current_cluster" in message
    assert "ray stop" in message and "RAY_ADDRESS=local" in message


def test_a_dead_ray_address_variable_says_to_fix_it_or_use_local(ray_temp: Path, monkeypatch: pytest.MonkeyPatch):
    address = dead_address()
    monkeypatch.setenv("RAY_ADDRESS", address)
    with pytest.raises(RayQueueError, match="RAY_ADDRESS=local") as raised:
        rayqueue.connect()
    assert address in str(raised.value)


def test_an_address_is_resolved_as_ray_does(ray_temp: Path, monkeypatch: pytest.MonkeyPatch):
    assert session.ray_target(None).address is None  # no file: a fresh local Ray
    assert session.ray_target("local").address is None
    (ray_temp / "ray").mkdir()
    (ray_temp / "ray" / "ray_current_cluster").write_text("10.0.0.1:6379\n")
    assert session.ray_target(None).address == "10.0.0.1:6379"
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert session.ray_target(None).address is None
    assert session.ray_target("1.2.3.4:5").source == "argument"


def test_a_fresh_local_ray_gets_an_explicit_auth_mode(monkeypatch: pytest.MonkeyPatch):
    set_modes: list[str] = []

    def set_mode(mode: str) -> None:  # without refreshing this test process's Ray config
        set_modes.append(mode)
        monkeypatch.setenv("RAY_AUTH_MODE", mode)

    monkeypatch.setattr(session, "_set_auth_mode", set_mode)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    session.choose_auth_mode(session.RayTarget(None, "none"))
    assert os.environ["RAY_AUTH_MODE"] == "token" and set_modes == ["token"]
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    session.choose_auth_mode(session.RayTarget(None, "none"))
    assert os.environ["RAY_AUTH_MODE"] == "disabled" and set_modes == ["token"]  # the user's choice stands


def test_local_storage_that_cannot_be_written_is_refused(tmp_path: Path):
    session.check_storage(f"file://{tmp_path}/new/folder", {})  # created later: fine
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(StorageUnavailable, match="not a folder"):
        session.check_storage(f"file://{blocker}/below", {})


def test_an_unknown_protocol_is_refused_at_once():
    with pytest.raises(StorageUnavailable, match="open"):
        session.check_storage("nosuchprotocol://bucket/prefix", {})


def test_s3_without_credentials_is_refused_naming_the_cause(monkeypatch: pytest.MonkeyPatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    endpoint = "http://" + dead_address()  # never reached: credentials are looked for first
    with pytest.raises(StorageUnavailable, match="NoCredentialsError"):
        session.check_storage("s3://bucket/prefix", {"client_kwargs": {"endpoint_url": endpoint}})


def test_storage_options_are_compared_by_digest():
    assert session.options_digest({"key": "a", "secret": "b"}) == session.options_digest({"secret": "b", "key": "a"})
    assert session.options_digest({"key": "a"}) != session.options_digest({"key": "b"})
