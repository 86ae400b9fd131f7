//! Metric names (a spec: see `docs/operations.md`) and the admin HTTP server.
//!
//! Label values are bounded sets: device kinds, message types, statuses and reasons.

use metrics::Unit;
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
/// Counter: TXNs the store refused because their session's device lease was taken over.
pub const TXNS_FENCED_TOTAL: &str = "wenxiao_txns_fenced_total";
/// Counter: device CRL reloads, label `outcome` (loaded, refused).
pub const CRL_RELOADS_TOTAL: &str = "wenxiao_crl_reloads_total";
/// Counter: outbox events handled, label `kind`.
pub const EVENTS_TOTAL: &str = "wenxiao_events_total";
/// Counter: outbox ids given up on after the gap grace.
pub const EVENT_GAPS_SKIPPED_TOTAL: &str = "wenxiao_event_gaps_skipped_total";
/// Histogram: rows per committed batch.
pub const INGEST_BATCH_ROWS: &str = "wenxiao_ingest_batch_rows";
/// Histogram: HELLOs per lease transaction.
pub const WELCOME_BATCH_HELLOS: &str = "wenxiao_welcome_batch_hellos";
/// Counter: lease transactions that failed, label `reason` (`store_error`, `panic`); their
/// HELLOs got STORE_UNAVAILABLE.
pub const WELCOME_BATCHES_FAILED_TOTAL: &str = "wenxiao_welcome_batches_failed_total";
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
/// Counter: batches whose decided-first write met a row that was not new (a re-send or
/// a card-counter replay), rolled back and written again inserted first.
pub const INGEST_REWRITTEN_TOTAL: &str = "wenxiao_ingest_rewritten_total";
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

/// Gauge: the budget's grants so far in fen, label `budget` (a month `yyyymm`, or
/// `programme` for the whole programme's cap).
pub const BUDGET_GRANTED_FEN: &str = "wenxiao_budget_granted_fen";
/// Gauge: fen the budget can still grant (cap minus granted, never below 0), label
/// `budget` as in [`BUDGET_GRANTED_FEN`].
pub const BUDGET_LEFT_FEN: &str = "wenxiao_budget_left_fen";
/// Gauge: credits by state, label `state` (`released`, `bound`, `in_doubt`, `parked`,
/// `loaded`).
pub const CREDITS: &str = "wenxiao_credits";
/// Gauge: the fen those credits hold, label `state` as in [`CREDITS`].
pub const CREDITS_FEN: &str = "wenxiao_credits_fen";
/// Counter: store transactions retried, label `cause` (`deadlock`, `serialization`,
/// `busy`, `other`).
pub const STORE_RETRIES_TOTAL: &str = "wenxiao_store_retries_total";
/// Counter: device sessions closed, label `reason` (a bounded set named by the session).
pub const SESSIONS_CLOSED_TOTAL: &str = "wenxiao_sessions_closed_total";
/// Counter: console HTTP requests answered, labels `route` (the route pattern, not the
/// path) and `status` (the HTTP status code).
pub const CONSOLE_REQUESTS_TOTAL: &str = "wenxiao_console_requests_total";
/// Counter: console requests refused for a missing permission, label `permission`.
pub const CONSOLE_FORBIDDEN_TOTAL: &str = "wenxiao_console_forbidden_total";

// The process metrics keep the names every Prometheus client library uses, so stock
// dashboards and alerts work on the gateway too; they are sampled by `crate::observe`.

/// Gauge: resident set size of the gateway process, in bytes.
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "process_resident_memory_bytes";
/// Gauge: file descriptors the process has open (sockets included).
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
/// Gauge: the process's soft limit on open file descriptors.
pub const PROCESS_MAX_FDS: &str = "process_max_fds";
/// Counter: user plus system CPU time the process has used, in whole seconds.
///
/// A counter, not a gauge, although `metrics` counters are integers: promtool rejects a
/// non-counter whose name ends in `_total`, and the name is the conventional one. Whole
/// seconds are set with `absolute`, so `rate()` over a few minutes is still accurate to
/// well under one percent of a core.
pub const PROCESS_CPU_SECONDS_TOTAL: &str = "process_cpu_seconds_total";

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
            // Descriptions go to the global recorder, so only now; inside `get_or_init`,
            // so once per process.
            describe_all();
            Some(handle)
        })
        .clone()
}

/// Gives every metric the gateway emits its HELP text (and unit) on the global recorder.
///
/// Called by [`install`] once the recorder is set. Calling it again is harmless: the
/// Prometheus recorder keeps the first description of each name. A metric appears on
/// `/metrics` only once it has been emitted; its description waits until then.
pub fn describe_all() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};

    // Sessions and frames.
    describe_gauge!(
        SESSIONS,
        Unit::Count,
        "Device sessions past WELCOME on this node, by device kind (label kind: POS, KIOSK, OTA_ENDPOINT, SIGNIN_READER)."
    );
    describe_counter!(
        FRAMES_RECEIVED_TOTAL,
        Unit::Count,
        "Frames decoded from devices, by message type (label type)."
    );
    describe_counter!(
        FRAMES_SENT_TOTAL,
        Unit::Count,
        "Frames queued to devices, by message type (label type); each hot-list chunk counts once."
    );
    describe_counter!(
        ERRORS_SENT_TOTAL,
        Unit::Count,
        "ERROR frames sent to devices, by error code name (label code)."
    );
    describe_counter!(
        SESSIONS_CLOSED_SLOW_READER_TOTAL,
        Unit::Count,
        "Sessions closed because the device did not read its answers within session.slow_reader_timeout_ms of being pushed back."
    );
    describe_counter!(
        SESSIONS_CLOSED_TOTAL,
        Unit::Count,
        "Device sessions closed, by why they ended (label reason)."
    );
    describe_counter!(
        CONNECTIONS_REFUSED_TOTAL,
        Unit::Count,
        "Connections closed before a session began (label reason: connections_max = node full, tls = handshake failed, tls_timeout = handshake too slow)."
    );

    // Transactions and ingest.
    describe_counter!(
        TXNS_FENCED_TOTAL,
        Unit::Count,
        "TXNs refused unanswered because another session took their device's lease."
    );
    describe_counter!(
        CRL_RELOADS_TOTAL,
        Unit::Count,
        "Device CRL reloads (label outcome: loaded, refused = the previous list stays)."
    );
    describe_counter!(
        EVENTS_TOTAL,
        Unit::Count,
        "Outbox events this node handled (label kind)."
    );
    describe_counter!(
        EVENT_GAPS_SKIPPED_TOTAL,
        Unit::Count,
        "Outbox ids never committed within the gap grace (a rolled-back transaction's)."
    );
    describe_counter!(
        TXNS_TOTAL,
        Unit::Count,
        "TXNs answered, by the answer's status and reason (labels status, reason)."
    );
    describe_histogram!(
        TXN_ACK_SECONDS,
        Unit::Seconds,
        "Seconds from a TXN's receipt to its TXN_ACK being queued for the socket; the latency a terminal sees, minus the network."
    );
    describe_gauge!(
        INGEST_QUEUE_TXNS,
        Unit::Count,
        "TXNs waiting for an ingest writer, sampled at each batch; growth means the store is not keeping up."
    );
    describe_histogram!(
        INGEST_BATCH_ROWS,
        Unit::Count,
        "Rows in each batch the ingest writers committed."
    );
    describe_histogram!(
        WELCOME_BATCH_HELLOS,
        Unit::Count,
        "HELLOs in each transaction that took their device leases and read their stored_seq."
    );
    describe_counter!(
        WELCOME_BATCHES_FAILED_TOTAL,
        Unit::Count,
        "Lease transactions that failed (label reason: store_error, panic); their HELLOs got STORE_UNAVAILABLE."
    );
    describe_histogram!(
        STORE_COMMIT_SECONDS,
        Unit::Seconds,
        "Seconds to commit one ingest batch to the store, retries included."
    );
    describe_counter!(
        STORE_ERRORS_TOTAL,
        Unit::Count,
        "Failed batch commit attempts against the store; each retry that fails counts again."
    );
    describe_counter!(
        STORE_RETRIES_TOTAL,
        Unit::Count,
        "Store transactions retried, by cause (label cause: deadlock, serialization, connection, other)."
    );
    describe_counter!(
        INGEST_BATCHES_FAILED_TOTAL,
        Unit::Count,
        "Batches answered STORE_UNAVAILABLE (label reason: store_error = retries ran out, timeout = an attempt outlived the store wait, panic = a contained bug)."
    );
    describe_counter!(
        INGEST_REWRITTEN_TOTAL,
        Unit::Count,
        "Batches written twice: decided first, they held a re-send or a card-counter replay, were rolled back and written again inserted first."
    );
    describe_counter!(
        INGEST_WRITER_RESTARTS_TOTAL,
        Unit::Count,
        "Ingest writer tasks that ended unexpectedly and were started again; any increase is a bug to report."
    );
    describe_gauge!(
        INGEST_WRITERS_FAILING,
        "1 while the latest batch an ingest writer finished failed, else 0."
    );

    // Hot list.
    describe_gauge!(
        HOTLIST_VERSION,
        "The hot-list version this node currently holds."
    );
    describe_gauge!(
        HOTLIST_CARDS,
        Unit::Count,
        "Cards on the hot list this node holds."
    );
    describe_gauge!(
        HOTLIST_DEVICES_BEHIND,
        Unit::Count,
        "Card-screening terminals in session on this node, by how many hot-list versions they are behind (label behind: 0, 1, 2-9, 10-99, 100+)."
    );
    describe_histogram!(
        HOTLIST_ACK_SECONDS,
        Unit::Seconds,
        "Seconds from a hot-list version's creation to a terminal's HOTLIST_ACK of it, time offline included."
    );
    describe_counter!(
        HOTLIST_UPDATES_SENT_TOTAL,
        Unit::Count,
        "Hot-list updates started to terminals (label form: full = the whole list, delta = changes only)."
    );
    describe_counter!(
        HOTLIST_ACKS_IGNORED_TOTAL,
        Unit::Count,
        "HOTLIST_ACKs ignored because they were not for the update the session had sent."
    );
    describe_counter!(
        HOTLIST_ACKS_UNRECORDED_TOTAL,
        Unit::Count,
        "Hot-list acknowledgements not recorded in the store because their queue (hotlist.ack_queue_devices) was full."
    );

    // Fraud rules.
    describe_counter!(
        RISK_FACTS_TOTAL,
        Unit::Count,
        "Stored TXNs the fraud rules evaluated, each device and sequence number once."
    );
    describe_histogram!(
        RISK_EVALUATION_SECONDS,
        Unit::Seconds,
        "Seconds to evaluate one TXN against every fraud rule."
    );
    describe_counter!(
        RISK_ALERTS_TOTAL,
        Unit::Count,
        "Fraud-rule hits found, by rule (label rule); a hit found again after a restart counts again."
    );
    describe_counter!(
        RISK_QUEUE_OVERFLOWS_TOTAL,
        Unit::Count,
        "TXNs the fraud rules' queue (risk.queue_txns_max) had no room for; they are caught up later from the store."
    );
    describe_counter!(
        RISK_CAUGHT_UP_TOTAL,
        Unit::Count,
        "Stored TXNs read back from the store by fraud-rule catch-ups after an overflow."
    );
    describe_counter!(
        RISK_ALERTS_UNRECORDED_TOTAL,
        Unit::Count,
        "Fraud alerts dropped because the store could not record them for too long."
    );
    describe_gauge!(
        RISK_QUEUE_FACTS,
        Unit::Count,
        "TXNs waiting for the fraud rules, sampled every second."
    );
    describe_gauge!(
        RISK_CARDS,
        Unit::Count,
        "Cards the fraud rules hold state for."
    );

    // Budget and credits (amounts in fen, 1/100 yuan; no `Unit` fits).
    describe_gauge!(
        BUDGET_GRANTED_FEN,
        "Subsidy granted so far in fen, by budget (label budget: a month as yyyymm, or programme for the whole programme)."
    );
    describe_gauge!(
        BUDGET_LEFT_FEN,
        "Subsidy the budget can still grant in fen, cap minus granted and never below 0 (label budget: yyyymm or programme)."
    );
    describe_gauge!(
        CREDITS,
        Unit::Count,
        "Credits by state (label state: cleared, released, bound, in_doubt, parked, loaded); in_doubt or parked that keep growing need a look."
    );
    describe_gauge!(
        CREDITS_FEN,
        "Fen held by credits in each state (label state: cleared, released, bound, in_doubt, parked, loaded)."
    );

    // Console.
    describe_counter!(
        CONSOLE_REQUESTS_TOTAL,
        Unit::Count,
        "Console HTTP requests answered, by route pattern and HTTP status code (labels route, status)."
    );
    describe_counter!(
        CONSOLE_FORBIDDEN_TOTAL,
        Unit::Count,
        "Console requests refused because the user lacked a permission (label permission: the one missing)."
    );

    // Process.
    describe_gauge!(
        PROCESS_RESIDENT_MEMORY_BYTES,
        Unit::Bytes,
        "Resident memory of the gateway process in bytes."
    );
    describe_gauge!(
        PROCESS_OPEN_FDS,
        Unit::Count,
        "File descriptors the gateway process has open, sockets included."
    );
    describe_gauge!(
        PROCESS_MAX_FDS,
        Unit::Count,
        "The gateway process's soft limit on open file descriptors; new connections fail near it."
    );
    describe_counter!(
        PROCESS_CPU_SECONDS_TOTAL,
        Unit::Seconds,
        "User plus system CPU time the gateway process has used, in whole seconds."
    );
}
