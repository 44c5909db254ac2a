"""The API serves HTTPS with a given certificate, verified against its CA."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.cloud.mqtt_fixtures import free_port
from tests.cloud.tls import make_ca_and_server_cert


def test_serve_https_with_a_throwaway_ca(tmp_path: Path) -> None:
    ca, cert, key = make_ca_and_server_cert(tmp_path)
    port = free_port()
    env = {**os.environ, "BATTERYTWIN_JWT_SECRET": "tls-test-secret-" + "y" * 32}
    cmd = [sys.executable, "-m", "batterytwin", "cloud", "serve", "--port", str(port)]
    cmd += [
        "--db",
        f"sqlite:///{tmp_path / 'tls.db'}",
        "--broker",
        "none",
        "--certfile",
        str(cert),
        "--keyfile",
        str(key),
    ]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        verify = ssl.create_default_context(cafile=str(ca))
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.get(f"https://127.0.0.1:{port}/health", verify=verify, timeout=2)
                break
            except httpx.ConnectError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert response.status_code == 200 and response.json() == {"database": "ok"}
        # Without the CA the certificate is not trusted; plain HTTP is not served.
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"https://127.0.0.1:{port}/health", timeout=2)
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_production_refuses_the_default_secret() -> None:
    from cloud.settings import CloudSettings

    with pytest.raises(ValueError, match="JWT_SECRET must be set in production"):
        CloudSettings(environment="production")
    with pytest.raises(ValueError, match="at least 32 characters"):
        CloudSettings(jwt_secret="short")
