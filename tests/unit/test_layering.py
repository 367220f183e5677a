"""The tree's rules, as checks: which code may import Ray, and what the client may import.

The partition, the control plane and storage are pure logic, tested without Ray;
the client talks to them only through the shared types (``routes``, ``schemas``,
``message``, ``config``, ``errors``) and the transport.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "rayqueue"

#: Folders and modules that must never import Ray, directly or through another module.
PURE = ["partition", "control", "storage", "simulation", "transport/wire.py", "transport/safe_pickle.py",
        "transport/tls.py", "schemas.py", "routes.py", "message.py", "config.py", "errors.py",
        "defaults.py", "backoff.py", "validation.py"]  # fmt: skip

#: Server logic that the client side must not import.
SERVER = ("rayqueue.partition", "rayqueue.control", "rayqueue.storage")


def modules(*places: str) -> list[Path]:
    found: list[Path] = []
    for place in places:
        path = PACKAGE / place
        found += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return found


def imported(path: Path) -> set[str]:
    """Every module name an import statement in ``path`` names, wherever it sits."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def dotted(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")


@pytest.mark.parametrize("path", modules(*PURE), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_pure_code_never_imports_ray(path: Path) -> None:
    ray_imports = {name for name in imported(path) if name == "ray" or name.startswith("ray.")}
    assert not ray_imports, f"{path.relative_to(PACKAGE.parent)} imports {sorted(ray_imports)}"


@pytest.mark.parametrize("path", modules("client"), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_the_client_imports_no_server_logic(path: Path) -> None:
    server = {name for name in imported(path) if name.startswith(SERVER)}
    assert not server, f"{path.relative_to(PACKAGE.parent)} imports {sorted(server)}: move the shared type out"


def test_importing_the_pure_modules_does_not_import_ray() -> None:
    # In a fresh interpreter: this one has imported Ray already (the unit conftest does).
    pure = [dotted(path) for path in modules(*PURE)]
    script = (
        f"import sys\nfor name in {pure!r}:\n    __import__(name)\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", f"importing {pure} imported Ray: {result.stdout.strip()}"


def test_import_rayqueue_and_its_storage_leave_ray_out() -> None:
    script = "import sys, rayqueue, rayqueue.storage, rayqueue.config; print('ray' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_no_two_modules_share_a_name() -> None:
    names: dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__init__.py":
            continue
        assert path.stem not in names, f"{path.relative_to(PACKAGE)} and {names[path.stem].relative_to(PACKAGE)}"
        names[path.stem] = path


def test_every_error_a_user_can_meet_is_exported_from_the_package() -> None:
    import rayqueue
    from rayqueue import errors

    # storage's put-once signal, and a channel that cannot use TLS: neither leaves the partition or coordinator
    internal = {"ObjectExists", "TlsUnavailable"}
    for name in set(errors.__all__) - internal:
        assert getattr(rayqueue, name) is getattr(errors, name), name
        assert name in rayqueue.__all__, name
