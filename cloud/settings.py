"""Settings of the cloud service: one object, built at the entry point and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cloud.mqtt.tls import MQTTS_PORT, MqttTls

DEV_SECRET = "dev-secret-change-me-dev-secret-change-me"


class CloudSettings(BaseSettings):
    """Read from ``BATTERYTWIN_*`` environment variables; tests pass their own.

    ``broker = mqtts://host[:port]`` (port 8883 by default) connects the ingest and the
    command publisher over TLS and needs ``mqtt_ca_file``: the system trust store is not
    used implicitly, so a private CA is always named and a typo cannot fall back to trusting
    every public CA. For a broker with a publicly signed certificate, name the system bundle
    (e.g. ``/etc/ssl/certs/ca-certificates.crt``).
    """

    model_config = SettingsConfigDict(env_prefix="BATTERYTWIN_", frozen=True)

    environment: Literal["development", "production"] = "development"
    database_url: str = "sqlite:///batterytwin.db"
    broker: str = Field(
        default="embedded",
        description="'embedded' (in-process amqtt), mqtt://host[:port] (e.g. Mosquitto, 1883), "
        "mqtts://host[:port] (TLS, 8883), or 'none'",
    )
    embedded_broker_port: int = Field(default=1884, ge=0, le=65535)
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    mqtt_ca_file: Path | None = None
    """PEM CA bundle that the broker's certificate must chain to (required by mqtts://)."""
    mqtt_client_certfile: Path | None = None
    """Client certificate (PEM) for brokers that require one; needs mqtt_client_keyfile."""
    mqtt_client_keyfile: Path | None = None
    jwt_secret: str = DEV_SECRET
    access_token_minutes: int = Field(default=60, gt=0)
    refresh_token_minutes: int = Field(default=24 * 60, gt=0)
    page_size_max: int = Field(default=1000, gt=0)
    token_rate_per_minute: int = Field(default=20, gt=0)
    estimator_interval_s: float = Field(default=300.0, ge=0)
    """How often the estimator scheduler looks for due work; 0 turns it off."""
    fmu_max_bytes: int = Field(default=50 * 2**20, gt=0)
    """The largest FMU the models exchange accepts (the seed's FMUs are about 5 MB)."""
    api_workers: int = Field(default=1, ge=1, le=64)
    """API processes serving this app (``serve --workers N`` sets it): with more than one,
    the test bench shares its MQTT topics among them."""
    ingest_in_api: bool = True
    """Run the MQTT ingest inside the API process; False when ``batterytwin cloud ingest``
    runs it beside the API (needed for ``cloud serve --workers N`` with N > 1)."""

    def broker_address(self) -> tuple[str, int] | None:
        """``(host, port)`` of an external broker, None for 'embedded' or 'none'."""
        if self.broker in ("embedded", "none"):
            return None
        scheme, _, rest = self.broker.partition("://")
        host, _, port = rest.partition(":")
        return host, int(port) if port else (MQTTS_PORT if scheme == "mqtts" else 1883)

    def mqtt_tls(self) -> MqttTls | None:
        """TLS of an ``mqtts://`` broker, None for any other."""
        if not self.broker.startswith("mqtts://") or self.mqtt_ca_file is None:
            return None
        return MqttTls(
            ca_file=self.mqtt_ca_file,
            certfile=self.mqtt_client_certfile,
            keyfile=self.mqtt_client_keyfile,
        )

    @model_validator(mode="after")
    def _no_default_secret_in_production(self) -> CloudSettings:
        if self.broker not in ("embedded", "none") and not self.broker.startswith(
            ("mqtt://", "mqtts://")
        ):
            raise ValueError(
                "broker must be 'embedded', 'none', mqtt://host[:port] or mqtts://host[:port], "
                f"got {self.broker!r}"
            )
        if self.environment == "production" and self.jwt_secret == DEV_SECRET:
            raise ValueError(
                "BATTERYTWIN_JWT_SECRET must be set in production: the default secret would "
                "let anyone sign tokens"
            )
        if len(self.jwt_secret) < 32:
            raise ValueError("BATTERYTWIN_JWT_SECRET must be at least 32 characters (HS256 key)")
        return self

    @model_validator(mode="after")
    def _ingest_elsewhere_needs_an_external_broker(self) -> CloudSettings:
        if not self.ingest_in_api and self.broker == "embedded":
            raise ValueError(
                "the ingest can run outside the API (ingest_in_api false, --no-ingest) only "
                "with an external broker: nothing else can log in to the embedded one, so "
                "devices' messages would be dropped; use --broker mqtt://host[:port]"
            )
        return self

    @model_validator(mode="after")
    def _tls_needs_mqtts_and_a_ca(self) -> CloudSettings:
        tls_files = (self.mqtt_ca_file, self.mqtt_client_certfile, self.mqtt_client_keyfile)
        if not self.broker.startswith("mqtts://"):
            if any(path is not None for path in tls_files):
                raise ValueError(
                    f"BATTERYTWIN_MQTT_CA_FILE / _CLIENT_CERTFILE / _CLIENT_KEYFILE apply to an "
                    f"mqtts:// broker only, but broker is {self.broker!r}: use "
                    "mqtts://host[:port] for TLS, or unset them"
                )
            return self
        if self.mqtt_ca_file is None:
            raise ValueError(
                f"broker {self.broker!r} (TLS) needs BATTERYTWIN_MQTT_CA_FILE, the CA that signed "
                "the broker's certificate (for a public CA, the system bundle such as "
                "/etc/ssl/certs/ca-certificates.crt)"
            )
        if (self.mqtt_client_certfile is None) != (self.mqtt_client_keyfile is None):
            raise ValueError(
                "a client certificate needs both BATTERYTWIN_MQTT_CLIENT_CERTFILE and "
                "BATTERYTWIN_MQTT_CLIENT_KEYFILE"
            )
        return self
