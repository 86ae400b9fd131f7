//! Metric names (a spec: see `docs/operations.md`) and the admin HTTP server.
//!
//! Label values are bounded sets: device kinds, message types, statuses and reasons.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// Gauge: live sessions, label `kind` (device kind).
pub const SESSIONS: &str = "wenxiao_sessions";
/// Counter: frames received, label `type`.
pub const FRAMES_RECEIVED_TOTAL: &str = "wenxiao_frames_received_total";
/// Counter: frames sent, label `type`.
pub const FRAMES_SENT_TOTAL: &str = "wenxiao_frames_sent_total";
/// Counter: TXNs answered, labels `status`, `reason`.
pub const TXNS_TOTAL: &str = "wenxiao_txns_total";
/// Histogram: rows per committed batch.
pub const INGEST_BATCH_ROWS: &str = "wenxiao_ingest_batch_rows";
/// Histogram: seconds per batch commit, retries included.
pub const STORE_COMMIT_SECONDS: &str = "wenxiao_store_commit_seconds";
/// Histogram: seconds from a TXN's receipt to its ack being queued for the socket.
pub const TXN_ACK_SECONDS: &str = "wenxiao_txn_ack_seconds";
/// Gauge: TXNs waiting in the ingest queue.
pub const INGEST_QUEUE_TXNS: &str = "wenxiao_ingest_queue_txns";
/// Counter: failed store commits (each retry counts).
pub const STORE_ERRORS_TOTAL: &str = "wenxiao_store_errors_total";
/// Counter: batches answered STORE_UNAVAILABLE, label `reason` (`store_error`: retries
/// ran out; `timeout`: an attempt outlived the store wait; `panic`: a bug, contained).
pub const INGEST_BATCHES_FAILED_TOTAL: &str = "wenxiao_ingest_batches_failed_total";
/// Counter: writer tasks that ended unexpectedly and were started again.
pub const INGEST_WRITER_RESTARTS_TOTAL: &str = "wenxiao_ingest_writer_restarts_total";
/// Gauge: 1 while the latest batch a writer finished failed, else 0.
pub const INGEST_WRITERS_FAILING: &str = "wenxiao_ingest_writers_failing";
/// Counter: sessions closed because their device did not read its answers within
/// `session.slow_reader_timeout_ms` of being pushed back.
pub const SESSIONS_CLOSED_SLOW_READER_TOTAL: &str = "wenxiao_sessions_closed_slow_reader_total";
/// Counter: connections refused before a session, label `reason`.
pub const CONNECTIONS_REFUSED_TOTAL: &str = "wenxiao_connections_refused_total";
/// Counter: ERROR frames sent, label `code`.
pub const ERRORS_SENT_TOTAL: &str = "wenxiao_errors_sent_total";

/// Gauge: the hot list's current version on this node.
pub const HOTLIST_VERSION: &str = "wenxiao_hotlist_version";
/// Gauge: cards on the hot list.
pub const HOTLIST_CARDS: &str = "wenxiao_hotlist_cards";
/// Gauge: online terminals by how many versions behind the current one they are, label
/// `behind` (`0`, `1`, `2-9`, `10-99`, `100+`).
pub const HOTLIST_DEVICES_BEHIND: &str = "wenxiao_hotlist_devices_behind";
/// Histogram: seconds from a hot-list version's creation to each terminal's
/// acknowledgement of it.
pub const HOTLIST_ACK_SECONDS: &str = "wenxiao_hotlist_ack_seconds";
/// Counter: hot-list updates sent, label `form` (`full`, `delta`).
pub const HOTLIST_UPDATES_SENT_TOTAL: &str = "wenxiao_hotlist_updates_sent_total";
/// Counter: HOTLIST_ACKs not for the update the session had sent (ignored).
pub const HOTLIST_ACKS_IGNORED_TOTAL: &str = "wenxiao_hotlist_acks_ignored_total";
/// Counter: acknowledgements not recorded because the record queue was full.
pub const HOTLIST_ACKS_UNRECORDED_TOTAL: &str = "wenxiao_hotlist_acks_unrecorded_total";

/// Counter: transactions the fraud rules evaluated.
pub const RISK_FACTS_TOTAL: &str = "wenxiao_risk_facts_total";
/// Histogram: seconds to evaluate one transaction against every rule.
pub const RISK_EVALUATION_SECONDS: &str = "wenxiao_risk_evaluation_seconds";
/// Counter: alerts raised, label `rule`.
pub const RISK_ALERTS_TOTAL: &str = "wenxiao_risk_alerts_total";
/// Counter: offers dropped because the rules' queue was full (caught up from the store).
pub const RISK_QUEUE_OVERFLOWS_TOTAL: &str = "wenxiao_risk_queue_overflows_total";
/// Counter: stored transactions read back from the store after an overflow.
pub const RISK_CAUGHT_UP_TOTAL: &str = "wenxiao_risk_caught_up_total";
/// Counter: alerts dropped because the store could not record them for too long.
pub const RISK_ALERTS_UNRECORDED_TOTAL: &str = "wenxiao_risk_alerts_unrecorded_total";
/// Gauge: transactions waiting for the rules.
pub const RISK_QUEUE_FACTS: &str = "wenxiao_risk_queue_facts";
/// Gauge: cards the rules hold state for.
pub const RISK_CARDS: &str = "wenxiao_risk_cards";

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder once per process (several gateways in one test
/// process share it). `None` if another recorder was installed first.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5, 5.0, 10.0, 100.0, 1_000.0, 10_000.0,
                ])
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            Some(handle)
        })
        .clone()
}
