"""Settings of the cloud service: one object, built at the entry point and passed down."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SECRET = "dev-secret-change-me-dev-secret-change-me"


class CloudSettings(BaseSettings):
    """Read from ``BATTERYTWIN_*`` environment variables; tests pass their own."""

    model_config = SettingsConfigDict(env_prefix="BATTERYTWIN_", frozen=True)

    environment: Literal["development", "production"] = "development"
    database_url: str = "sqlite:///batterytwin.db"
    broker: str = Field(
        default="embedded",
        description="'embedded' (in-process amqtt), mqtt://host:port (e.g. Mosquitto), or 'none'",
    )
    embedded_broker_port: int = Field(default=1884, ge=0, le=65535)
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    jwt_secret: str = DEV_SECRET
    access_token_minutes: int = Field(default=60, gt=0)
    refresh_token_minutes: int = Field(default=24 * 60, gt=0)
    page_size_max: int = Field(default=1000, gt=0)
    token_rate_per_minute: int = Field(default=20, gt=0)

    def broker_address(self) -> tuple[str, int] | None:
        """``(host, port)`` of an external broker, None for 'embedded' or 'none'."""
        if self.broker in ("embedded", "none"):
            return None
        host, _, port = self.broker.removeprefix("mqtt://").partition(":")
        return host, int(port or 1883)

    @model_validator(mode="after")
    def _no_default_secret_in_production(self) -> CloudSettings:
        if self.broker not in ("embedded", "none") and not self.broker.startswith("mqtt://"):
            raise ValueError(
                f"broker must be 'embedded', 'none' or mqtt://host:port, got {self.broker!r}"
            )
        if self.environment == "production" and self.jwt_secret == DEV_SECRET:
            raise ValueError(
                "BATTERYTWIN_JWT_SECRET must be set in production: the default secret would "
                "let anyone sign tokens"
            )
        if len(self.jwt_secret) < 32:
            raise ValueError("BATTERYTWIN_JWT_SECRET must be at least 32 characters (HS256 key)")
        return self
