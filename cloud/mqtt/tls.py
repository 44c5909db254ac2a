"""TLS for MQTT clients: which CA to trust (and which client certificate to show), as a context.

Example::

    tls = MqttTls(ca_file=Path("/etc/batterytwin/mqtt-ca.pem"))
    async with aiomqtt.Client("broker", 8883, tls_context=tls_context(tls)) as client:
        ...
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from pydantic import BaseModel, ConfigDict, model_validator

__all__ = ["MQTTS_PORT", "MqttTls", "tls_context"]

MQTTS_PORT = 8883
"""The IANA port of MQTT over TLS."""


class MqttTls(BaseModel):
    """The broker's certificate is verified against ``ca_file``, host name included."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ca_file: Path
    """PEM bundle of the CA(s) that signed the broker's certificate."""
    certfile: Path | None = None
    """Client certificate (PEM), for brokers that require one; needs ``keyfile``."""
    keyfile: Path | None = None
    """Unencrypted private key (PEM) of ``certfile``."""
    server_hostname: str | None = None
    """Name the broker's certificate must carry, when it is not the host dialled (e.g. an IP)."""

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> MqttTls:
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("a client certificate needs both certfile and keyfile: give both")
        return self


def tls_context(tls: MqttTls) -> ssl.SSLContext:
    """A client context that requires a certificate chaining to ``tls.ca_file`` for the host.

    The files are read here, so a context built per connection picks up renewed certificates.

    Raises:
        FileNotFoundError: If one of the files does not exist (the message names it).
        ssl.SSLError: If a file is not valid PEM or the key does not match the certificate.
    """
    for what, path in (
        ("CA file", tls.ca_file),
        ("client certificate", tls.certfile),
        ("client key", tls.keyfile),
    ):
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"MQTT TLS {what} {path} does not exist")
    context = (
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if tls.server_hostname is None
        else _FixedHostnameContext(ssl.PROTOCOL_TLS_CLIENT, tls.server_hostname)
    )
    context.sslsocket_class = _ClosingSSLSocket
    context.verify_mode = ssl.CERT_REQUIRED  # already the default of TLS_CLIENT: kept explicit
    context.check_hostname = True
    context.load_verify_locations(cafile=tls.ca_file)
    if tls.certfile is not None:
        context.load_cert_chain(certfile=tls.certfile, keyfile=tls.keyfile)
    return context


class _ClosingSSLSocket(ssl.SSLSocket):
    """Closes itself when the handshake fails, which paho leaves to the garbage collector."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


class _FixedHostnameContext(ssl.SSLContext):
    """Checks the certificate against a fixed name: paho passes the host dialled instead."""

    def __init__(self, protocol: int, server_hostname: str) -> None:
        # ssl.SSLContext.__new__ has taken the protocol already
        self._server_hostname = server_hostname

    def wrap_socket(
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        return super().wrap_socket(
            sock,
            server_side=server_side,
            do_handshake_on_connect=do_handshake_on_connect,
            suppress_ragged_eofs=suppress_ragged_eofs,
            server_hostname=self._server_hostname,
            session=session,
        )
