"""Settings: one object built at start-up from POLEGW_* variables and passed down."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.core.maintenance import DEFAULT_DEADLINES, deadline_table
from gateway.errors import ConfigError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="POLEGW_", extra="ignore", frozen=True)

    database_url: str | None = None
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    mqtt_topic_prefix: str = "poles"
    mqtt_client_id: str = "polegw-gateway"
    # MQTT 5 lets the gateway set Receive Maximum (how many unacknowledged QoS 1
    # messages the broker may send it), which ack-after-commit needs for
    # throughput; 3.1.1 is for brokers without MQTT 5 (the embedded demo broker).
    mqtt_protocol: Literal["5", "3.1.1"] = "5"
    mqtt_receive_maximum: Annotated[int, Field(ge=1, le=65535)] = 2000
    mqtt_session_expiry_s: Annotated[int, Field(ge=0)] = 7 * 24 * 3600
    mqtt_keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    # Replicas (docs/scaling.md): set on every replica of one installation, each
    # with its own POLEGW_MQTT_CLIENT_ID. Subscriptions become `$share/{group}/…`
    # (MQTT 5 shared subscriptions: each message goes to one replica), and the
    # work that must happen once is owned through leases in PostgreSQL, taken
    # over by another replica within POLEGW_LEASE_TTL_S of a replica's loss.
    mqtt_share_group: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    lease_ttl_s: Annotated[float, Field(ge=2, le=120)] = 6.0
    # Replicas: the alarm leader evaluates readings from the database once they
    # have been committed this long (so a reading another replica committed a
    # little later is evaluated in its time order, not skipped).
    alarm_settle_s: Annotated[float, Field(ge=0, le=60)] = 2.0
    # TLS (mqtts://): the CA that signed the broker's certificate (unset: the
    # system's CAs), and a client certificate and key for brokers that ask for one
    # (a pole's CN is its id; the listener uses it as the user name).
    mqtt_ca_file: Path | None = None
    mqtt_cert_file: Path | None = None
    mqtt_key_file: Path | None = None
    # Defence in depth behind the broker's ACL: messages a pole may send per
    # second on average, and in one burst (a pole uploading its backlog after an
    # outage). Beyond that its messages are dead-lettered (reason rate_limited)
    # and counted, so one pole cannot crowd out the others. 0 turns it off.
    mqtt_pole_rate_per_s: Annotated[float, Field(ge=0)] = 50.0
    mqtt_pole_burst: Annotated[int, Field(ge=1)] = 10_000
    api_host: str = "127.0.0.1"
    api_port: Annotated[int, Field(ge=0, le=65535)] = 8000
    # Signs the API's access tokens. No default: `polegw run` refuses to serve
    # the API without one (`polegw demo` makes one in its data folder).
    secret_key: SecretStr | None = None
    # Access tokens are short-lived; machine clients use API keys instead.
    token_ttl_s: Annotated[int, Field(ge=60, le=24 * 3600)] = 900
    # A browser session (the console) ends after this long without a request; it
    # is renewed while in use, so a console kept open through a shift stays in.
    session_idle_s: Annotated[int, Field(ge=300, le=7 * 24 * 3600)] = 8 * 3600
    # Browser origins allowed to call the API from their pages (CORS), e.g.
    # POLEGW_CORS_ORIGINS='["https://ops.example.net"]'; empty: no CORS at all.
    cors_origins: list[str] = []
    # Exports and bill runs per user: this many a minute on average, and in a burst;
    # beyond that 429 with Retry-After. 0 turns the limit off.
    api_expensive_per_min: Annotated[float, Field(ge=0)] = 12.0
    api_expensive_burst: Annotated[int, Field(ge=1)] = 10
    # /metrics and /readyz's details without login: only from these networks
    # (JSON list of CIDRs; default loopback), or on POLEGW_METRICS_PORT, a listener
    # of their own (with /healthz) on POLEGW_API_HOST for the monitoring network.
    metrics_allow: list[str] = ["127.0.0.1/32", "::1/128"]
    metrics_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    # Failed logins allowed per user name and per client address in the window.
    login_max_failures: Annotated[int, Field(ge=1)] = 5
    login_window_s: Annotated[float, Field(gt=0)] = 300.0
    spool_dir: Path = Path("spool")
    # The spool's bound on stored batch bytes; 0 turns spooling off (a batch the
    # database refuses is then held and retried, unacknowledged).
    spool_max_bytes: Annotated[int, Field(ge=0)] = 1024**3
    # block: stop acknowledging (the broker keeps the messages); drop_oldest: make room (counted).
    spool_full_policy: Literal["block", "drop_oldest"] = "block"
    # A database write slower than this sends the batch to the spool instead.
    spool_after_s: Annotated[float, Field(gt=0, le=300)] = 5.0
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    profiles_dir: Path | None = None
    # A batch is committed when it holds this many readings or is this old.
    batch_max_readings: Annotated[int, Field(ge=1)] = 5000
    batch_max_delay_s: Annotated[float, Field(gt=0, le=10)] = 0.05
    registry_refresh_s: Annotated[float, Field(gt=0)] = 10.0
    # Readings stamped further ahead than this, or older than this, are stored
    # with a quality flag and counted (a pole's clock is wrong, or it uploads
    # a long backlog). 35 days matches the rollups' refresh window.
    clock_max_ahead_s: Annotated[float, Field(gt=0)] = 300.0
    clock_max_age_s: Annotated[float, Field(gt=0)] = 35 * 24 * 3600.0
    # Clocks (README "Clocks"): a pole whose readings are stamped further off the
    # gateway's time than this is sent `set_time`, at most once per interval.
    clock_sync_max_skew_s: Annotated[float, Field(gt=0)] = 60.0
    clock_sync_interval_s: Annotated[float, Field(gt=0)] = 3600.0
    # Where pg_dump and pg_restore are (`polegw backup`); unset: the newest
    # /usr/lib/postgresql/*/bin, else PATH.
    pg_bin_dir: Path | None = None
    # Modbus polling: per-request timeout, quiet gap between RTU frames, failed
    # polls before a device is offline and quarantined, longest quarantine.
    modbus_timeout_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    modbus_rtu_gap_s: Annotated[float, Field(ge=0, le=1)] = 0.005
    modbus_offline_after: Annotated[int, Field(ge=1, le=100)] = 3
    modbus_quarantine_cap_s: Annotated[float, Field(gt=0)] = 300.0
    # How long a command may take: the Modbus write and readback, or the wait
    # for the pole's reply over MQTT.
    command_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    # Telemetry queries: the widest time range one request may ask for.
    api_max_raw_range_h: Annotated[int, Field(ge=1)] = 7 * 24
    api_max_bucket_range_d: Annotated[int, Field(ge=1)] = 400
    # The site's civil time zone ("today" on the dashboard starts at its midnight;
    # lighting schedules' clock times are in it). Lighting (节能): the site's
    # location (for a group whose poles have no coordinates), a lamp's rated power
    # when no full-power reading is known, and how often the lighting dispatcher
    # re-reads groups and schedules.
    site_timezone: str = "Asia/Shanghai"
    # The console's map: with no tile server the poles and roads are drawn on a
    # plain background (works with no internet); a URL template such as
    # https://tiles.example.net/{z}/{x}/{y}.png adds the operator's own tiles.
    map_tile_url: str | None = None
    map_tile_attribution: str = ""
    site_lat: Annotated[float, Field(ge=-90, le=90)] = 39.9042
    site_lon: Annotated[float, Field(ge=-180, le=180)] = 116.4074
    lighting_rated_w: Annotated[float, Field(gt=0)] = 100.0
    lighting_reload_s: Annotated[float, Field(gt=0)] = 30.0
    # The metering worker looks for queued counter readings this often (the
    # ledger's lag target is 30 s at p99).
    metering_every_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    # Data management: raw readings and rollups older than these are deleted
    # (TimescaleDB retention policies, else a periodic batched delete of raw
    # readings; rollups are then views). Rollups outlive their 35-day refresh window.
    retention_raw_days: Annotated[int, Field(ge=1)] = 400
    retention_rollup_days: Annotated[int, Field(ge=36)] = 1100
    retention_every_s: Annotated[float, Field(gt=0)] = 3600.0
    # CSV exports: the widest time range one request may ask for.
    # The operator as printed on invoices (GET /bills/{id}/invoice.html): "name",
    # then any details in the order given ("address", "tax id", "bank account",
    # "phone"...). From the environment as JSON, e.g.
    # POLEGW_INVOICE_ISSUER='{"name": "Metro Poles Co.", "address": "1 Renmin Rd"}'.
    invoice_issuer: dict[str, str] = {}
    # Days from a bill's issue to its due date, printed on the invoice.
    invoice_due_days: Annotated[int, Field(ge=0, le=365)] = 30
    export_max_range_d: Annotated[int, Field(ge=1)] = 31
    # Maintenance (gateway/core/maintenance.py has the rules): work-order time
    # limits per priority ("<priority>.respond|resolve": "90m" | "1h" | "2d" |
    # "3wd" working days, "" for none), working days off (holidays) and weekend
    # days worked (调休) as YYYY-MM-DD in site_timezone, the alarm -> priority
    # policy ("fault:<fault>" or "severity:<level>": priority | "none"), the
    # largest attachment, and how often inspection plans are checked.
    # POLEGW_WORKORDER_DEADLINES is merged over these defaults (a key given replaces
    # that key only; "" removes a limit); an unknown key or a bad span is refused.
    workorder_deadlines: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_DEADLINES))
    workorder_holidays: list[str] = []
    workorder_workdays: list[str] = []
    workorder_auto_open: dict[str, str] = {
        "fault:lamp_failure": "single_lamp_out",
        "severity:critical": "urgent",
        "severity:major": "serious",
        "severity:minor": "general",
        "severity:warning": "none",
    }
    workorder_attachment_max_bytes: Annotated[int, Field(ge=1024)] = 5 * 1024 * 1024
    inspection_check_s: Annotated[float, Field(gt=0)] = 300.0

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) else v

    @field_validator("workorder_deadlines")
    @classmethod
    def _deadlines(cls, v: dict[str, str]) -> dict[str, str]:
        merged = {**DEFAULT_DEADLINES, **v}
        deadline_table(merged)  # raises ValueError naming the key or span at fault
        return merged

    @field_validator("mqtt_topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        v = v.strip("/")
        if not v or any(c in v for c in "+#"):
            raise ValueError("must be a non-empty topic without wildcards")
        return v

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt_url(cls, v: str) -> str:
        try:
            MqttEndpoint(v)
        except (ConfigError, ValueError) as exc:  # ValueError: a port that is not a number
            raise ValueError(str(exc)) from None
        return v

    @field_validator("metrics_allow")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for net in v:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"{net!r} is not a network (e.g. 10.0.0.0/8)") from None
        return [str(ipaddress.ip_network(net, strict=False)) for net in v]

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        for origin in v:
            parts = urlsplit(origin)
            if origin == "*" or parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{origin!r} is not an origin (https://host[:port])")
            if parts.path or parts.query:
                raise ValueError(f"{origin!r}: an origin has no path")
        return v

    @field_validator("mqtt_share_group", mode="before")
    @classmethod
    def _share_group_empty(cls, v: object) -> object:
        return None if v == "" else v  # set but empty (a compose default): not replicated

    @field_validator("mqtt_share_group")
    @classmethod
    def _share_group(cls, v: str | None) -> str | None:
        if v is not None and any(c in v for c in "/+#$ "):
            raise ValueError("a share group name has no '/', '+', '#', '$' or spaces")
        return v

    @property
    def replicated(self) -> bool:
        """Running as one of several replicas (POLEGW_MQTT_SHARE_GROUP set)."""
        return self.mqtt_share_group is not None

    @model_validator(mode="after")
    def _share_group_needs_mqtt5(self) -> Settings:
        if self.mqtt_share_group is not None and self.mqtt_protocol != "5":
            raise ValueError(
                "POLEGW_MQTT_SHARE_GROUP needs POLEGW_MQTT_PROTOCOL=5:"
                " shared subscriptions ($share/…) are MQTT 5"
            )
        return self

    @model_validator(mode="after")
    def _client_cert_pair(self) -> Settings:
        if (self.mqtt_cert_file is None) != (self.mqtt_key_file is None):
            raise ValueError(
                "POLEGW_MQTT_CERT_FILE and POLEGW_MQTT_KEY_FILE go together: set both or neither"
            )
        return self

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, v: str | None) -> str | None:
        if v:
            from gateway.adapters.db import libpq_url

            try:
                libpq_url(v)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return v

    @field_validator("secret_key")
    @classmethod
    def _secret(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < 32:
            raise ValueError("needs at least 32 characters (e.g. `openssl rand -hex 32`)")
        return v

    def require_secret_key(self) -> str:
        if self.secret_key is None:
            raise ConfigError(
                "POLEGW_SECRET_KEY is not set: the API signs its access tokens with it"
                " (make one with `openssl rand -hex 32`)"
            )
        return self.secret_key.get_secret_value()

    def require_database_url(self) -> str:
        if not self.database_url:
            raise ConfigError("POLEGW_DATABASE_URL is not set (postgresql://user@host:5432/db)")
        return self.database_url


class MqttEndpoint:
    """An mqtt:// or mqtts:// URL taken apart."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ConfigError(f"MQTT URL must start with mqtt:// or mqtts://, got {url!r}")
        if not parts.hostname:
            raise ConfigError(f"MQTT URL has no host: {url!r}")
        self.tls = parts.scheme == "mqtts"
        self.host = parts.hostname
        self.port = parts.port or (8883 if self.tls else 1883)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None

    def __repr__(self) -> str:
        return f"MqttEndpoint({'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port})"


def redacted_mqtt(url: str) -> str:
    """An MQTT URL without its password, for messages and logs."""
    e = MqttEndpoint(url)
    user = f"{e.username}@" if e.username else ""
    return f"{'mqtts' if e.tls else 'mqtt'}://{user}{e.host}:{e.port}"
