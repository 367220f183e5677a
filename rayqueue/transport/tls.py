"""TLS for the direct channel, with Ray's own certificates, whenever Ray uses TLS.

Ray encrypts its own traffic when ``RAY_USE_TLS`` is ``1`` or ``true``, with the
files named by ``RAY_TLS_SERVER_CERT``, ``RAY_TLS_SERVER_KEY`` and ``RAY_TLS_CA_CERT``
(its clients present the server certificate too). The channel then does the same:
mutual TLS, each side shows a certificate that Ray's CA signed. Hostnames are not
checked, because nodes are addressed by IP and Ray's certificates need not name
them; the chain is.

Contexts are built once per process and set of files.
"""

from __future__ import annotations

import functools
import os
import ssl
from collections.abc import Mapping

from rayqueue.errors import TlsUnavailable

_FILES = ("RAY_TLS_SERVER_CERT", "RAY_TLS_SERVER_KEY", "RAY_TLS_CA_CERT")


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether Ray runs with TLS in this process (read as Ray reads it)."""
    return environ.get("RAY_USE_TLS", "0").lower() in ("1", "true")


def server_context(environ: Mapping[str, str] = os.environ) -> ssl.SSLContext:
    """For a server that asks every client for a certificate from Ray's CA; raises ``TlsUnavailable``."""
    return _context(True, *_files(environ))


def client_context(environ: Mapping[str, str] = os.environ) -> ssl.SSLContext:
    """For a client that checks the server's chain against Ray's CA; raises ``TlsUnavailable``."""
    return _context(False, *_files(environ))


def _files(environ: Mapping[str, str]) -> tuple[str, str, str]:
    missing = [name for name in _FILES if not environ.get(name)]
    if missing:
        raise TlsUnavailable(f"{', '.join(missing)} not set")
    cert, key, ca = (environ[name] for name in _FILES)
    return cert, key, ca


@functools.lru_cache(maxsize=8)
def _context(server_side: bool, cert: str, key: str, ca: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False  # nodes are addressed by IP; the chain below is still verified
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_cert_chain(cert, key)
        context.load_verify_locations(cafile=ca)
    except (OSError, ValueError) as error:  # the error names the file, never its contents
        raise TlsUnavailable(f"cannot load {cert}, {key} or {ca}: {error}") from None
    return context
