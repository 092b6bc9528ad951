"""Every Prometheus metric polegw exports, declared once, with fixed label values."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway.core.readings import DeadLetterReason

TOPIC_KINDS = ("telemetry", "device_telemetry", "events", "status", "modbus", "unknown")


class Metrics:
    """Owns a registry so that several gateways (tests) can live in one process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.messages_received = Counter(
            "polegw_mqtt_messages_received",
            "Messages received (MQTT by topic kind; modbus: one per poll)",
            ["kind"],
            registry=r,
        )
        self.messages_acked = Counter(
            "polegw_mqtt_messages_acked", "QoS 1 messages acknowledged after commit", registry=r
        )
        self.readings_received = Counter(
            "polegw_readings_received", "Valid readings decoded from messages", registry=r
        )
        self.readings_stored = Counter(
            "polegw_readings_stored",
            "Readings committed to the database (replays of stored readings included)",
            registry=r,
        )
        self.readings_duplicate = Counter(
            "polegw_readings_duplicate",
            "Readings already stored (replays, redeliveries)",
            registry=r,
        )
        self.readings_clock_flagged = Counter(
            "polegw_readings_clock_flagged",
            "Readings stored with a clock flag (ahead: in the future; stale: too old)",
            ["flag"],
            registry=r,
        )
        for flag in ("ahead", "stale"):
            self.readings_clock_flagged.labels(flag)
        # Clock corrections (README "Clocks"): the total, and per pole only for the
        # poles that were ever corrected (the label values are registered poles,
        # never more than the site has; a site of right clocks adds none).
        self.clock_corrections = Counter(
            "polegw_clock_corrections", "set_time commands sent to poles", registry=r
        )
        self.pole_clock_corrections = Counter(
            "polegw_pole_clock_corrections",
            "set_time commands sent to this pole (poles ever corrected only)",
            ["pole"],
            registry=r,
        )
        self.pole_clock_skew = Gauge(
            "polegw_pole_clock_skew_seconds",
            "The pole's clock minus the gateway's at its last message (poles ever corrected only)",
            ["pole"],
            registry=r,
        )
        self.clock_skew_poles: set[str] = set()
        self.dead_letters = Counter(
            "polegw_dead_letters", "Parts of messages refused, by reason", ["reason"], registry=r
        )
        self.batch_readings = Histogram(
            "polegw_batch_readings",
            "Readings per committed batch",
            buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000, 10000, 20000),
            registry=r,
        )
        self.commit_seconds = Histogram(
            "polegw_commit_seconds",
            "Time to commit one batch",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.ingest_lag_seconds = Histogram(
            "polegw_ingest_lag_seconds",
            "Commit time minus the message's ts",
            buckets=(
                0.01,
                0.025,
                0.05,
                0.075,
                0.1,
                0.15,
                0.2,
                0.3,
                0.4,
                0.5,
                0.75,
                1,
                2.5,
                5,
                10,
                30,
                60,
                300,
                3600,
            ),
            registry=r,
        )
        # The meter-data ledger (gateway/metering_worker.py).
        self.metering_lag_seconds = Histogram(
            "polegw_metering_lag_seconds",
            "From a counter reading's commit (queued) to the ledger step that metered it",
            buckets=(0.5, 1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 900),
            registry=r,
        )
        self.metering_pending_seconds = Gauge(
            "polegw_metering_pending_seconds",
            "How long the oldest reading not yet in the ledger has waited (0: none)",
            registry=r,
        )
        self.metering_changes = Counter(
            "polegw_metering_changes",
            "Ledger pieces already counted complete that late or corrected readings changed",
            registry=r,
        )
        self.db_write_failures = Counter(
            "polegw_db_write_failures", "Batches whose commit failed and was retried", registry=r
        )
        self.pending_messages = Gauge(
            "polegw_ingest_pending_messages",
            "Messages received but not yet committed and acknowledged",
            registry=r,
        )
        self.mqtt_connected = Gauge(
            "polegw_mqtt_connected", "1 while connected to the MQTT broker", registry=r
        )
        self.mqtt_reconnects = Counter(
            "polegw_mqtt_reconnects", "Connection attempts after a lost connection", registry=r
        )
        self.registry_devices = Gauge(
            "polegw_registry_devices", "Devices known to the gateway", registry=r
        )
        # Modbus: labelled by bus ("host:port/framer"), one series per configured bus.
        self.modbus_polls = Counter(
            "polegw_modbus_polls",
            "Device polls by outcome (ok, timeout, exception, connection, protocol)",
            ["bus", "result"],
            registry=r,
        )
        self.modbus_poll_seconds = Histogram(
            "polegw_modbus_poll_seconds",
            "Time to read all blocks of one device",
            ["bus"],
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.modbus_poll_lateness = Histogram(
            "polegw_modbus_poll_lateness_seconds",
            "How late a poll started against its schedule",
            ["bus"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
            registry=r,
        )
        self.modbus_skipped_cycles = Counter(
            "polegw_modbus_skipped_cycles",
            "Poll cycles skipped because they were a whole interval late",
            ["bus"],
            registry=r,
        )
        self.modbus_quarantined = Gauge(
            "polegw_modbus_quarantined_devices",
            "Devices offline and retried with back-off",
            ["bus"],
            registry=r,
        )
        self.modbus_connect_failures = Counter(
            "polegw_modbus_connect_failures",
            "Failed connection attempts to a bus",
            ["bus"],
            registry=r,
        )
        self.modbus_points_read = Counter(
            "polegw_modbus_points_read", "Values read from Modbus devices", registry=r
        )
        # The on-disk spool (gateway/adapters/spool.py): depth, flow and what its bound cost.
        self.spool_batches = Gauge("polegw_spool_batches", "Batches in the spool", registry=r)
        self.spool_readings = Gauge(
            "polegw_spool_readings", "Readings in the spool, waiting for the database", registry=r
        )
        self.spool_bytes = Gauge(
            "polegw_spool_bytes", "Bytes of spooled batches (the bound applies to this)", registry=r
        )
        self.spool_appended_readings = Counter(
            "polegw_spool_appended_readings",
            "Readings written to the spool (acknowledged before reaching the database)",
            registry=r,
        )
        self.spool_drained_readings = Counter(
            "polegw_spool_drained_readings",
            "Readings moved from the spool into the database",
            registry=r,
        )
        self.spool_drain_rate = Gauge(
            "polegw_spool_drain_rate",
            "Readings per second drained from the spool over the last 10 s",
            registry=r,
        )
        self.spool_full = Gauge(
            "polegw_spool_full",
            "1 while the spool is full and the policy blocks: messages are not acknowledged",
            registry=r,
        )
        self.spool_dropped_readings = Counter(
            "polegw_spool_dropped_readings",
            "Readings deleted from a full spool (policy drop_oldest): lost for good",
            registry=r,
        )
        self.spool_dropped_batches = Counter(
            "polegw_spool_dropped_batches",
            "Batches deleted from a full spool (policy drop_oldest)",
            registry=r,
        )
        self.spool_errors = Counter(
            "polegw_spool_errors", "Failed writes to the spool (disk full, I/O error)", registry=r
        )
        # Scale-out (docs/scaling.md): what this replica owns, and how often leases moved.
        self.lease_held = Gauge(
            "polegw_lease_held",
            "1 while this replica holds the lease (leader/<role>, bus/<address>)",
            ["lease"],
            registry=r,
        )
        self.lease_changes = Counter(
            "polegw_lease_changes",
            "Leases taken, handed back or lost by this replica",
            ["group", "change"],
            registry=r,
        )
        self.sessions_adopted = Counter(
            "polegw_mqtt_sessions_adopted",
            "MQTT sessions of gone replicas this replica adopted, by outcome (ended:"
            " drained and deleted; interrupted: the replica came back or the connection"
            " was lost, the session kept)",
            ["outcome"],
            registry=r,
        )
        self.adopted_messages = Counter(
            "polegw_mqtt_adopted_messages",
            "Messages ingested from the MQTT sessions of gone replicas",
            registry=r,
        )
        self.replicas_live = Gauge(
            "polegw_replicas_live", "Gateway replicas alive (heartbeat leases)", registry=r
        )
        self.replicas_live.set(1)
        self.replica = Gauge(
            "polegw_replica",
            "1, labelled with this process's replica id (its MQTT client id) and share group",
            ["replica", "share_group"],
            registry=r,
        )
        for kind in TOPIC_KINDS:
            self.messages_received.labels(kind)
        for reason in DeadLetterReason:
            self.dead_letters.labels(reason.value)

    def count_clock_correction(self, pole_id: str, skew_s: float) -> None:
        self.clock_corrections.inc()
        self.pole_clock_corrections.labels(pole_id).inc()
        self.pole_clock_skew.labels(pole_id).set(skew_s)
        self.clock_skew_poles.add(pole_id)
