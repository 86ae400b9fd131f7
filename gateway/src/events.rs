//! Each node's reader of the outbox (see ARCHITECTURE.md, "Several nodes"): the events
//! the other nodes' transactions wrote — takeovers, credit releases, hot-list versions,
//! registry changes — read after the last one handled, at every NOTIFY (PostgreSQL), on
//! (re)connecting and every `server.events_poll_interval_ms`; so a listener that was
//! disconnected misses nothing.
//!
//! Ids are taken before commit, so a later id can commit first. The reader keeps every
//! id it passed over without seeing as a gap for `server.events_gap_grace_ms` and reads
//! the gaps again; an id still missing then belonged to a transaction that rolled back.

use crate::metrics as m;
use crate::session::Shared;
use crate::store::cluster::{ClusterStore, Event, EventKind, parse_takeover};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Most events read at once.
pub const EVENTS_READ_MAX: i64 = 1_000;
/// Most open gaps held; beyond it the oldest are given up on.
pub const EVENT_GAPS_MAX: usize = 10_000;
/// Pause before re-opening a dropped LISTEN connection, in ms.
const LISTEN_RETRY_MS: u64 = 1_000;
/// How often old events are deleted, in ms.
const PRUNE_INTERVAL_MS: u64 = 60_000;

/// Where a reader is in the outbox: the highest id handled, and the ids below it not seen
/// yet, with when each was first missed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    /// The highest id handled.
    pub high: i64,
    /// Ids below `high` not seen yet → when first missed (ms).
    pub gaps: BTreeMap<i64, i64>,
}

impl Cursor {
    /// A reader that starts after `last` (a node starting now has no past to catch up).
    pub fn after(last: i64) -> Self {
        Self {
            high: last,
            gaps: BTreeMap::new(),
        }
    }

    /// Takes `events` (read after `high`, or for the gaps, in any order) at `now_ms`:
    /// returns those not handled before, oldest first, and moves on. Returns also how
    /// many gaps were given up on (older than `grace_ms`, or past [`EVENT_GAPS_MAX`]).
    pub fn take(
        &mut self,
        mut events: Vec<Event>,
        now_ms: i64,
        grace_ms: i64,
    ) -> (Vec<Event>, u64) {
        events.sort_by_key(|e| e.event_id);
        events.dedup_by_key(|e| e.event_id);
        let mut fresh = Vec::with_capacity(events.len());
        for e in events {
            if e.event_id > self.high {
                // At most EVENT_GAPS_MAX ids below it are waited for (a reader whose high
                // mark is far behind does not fill memory with gaps).
                let from = self.high.saturating_add(1).max(
                    e.event_id
                        .saturating_sub(i64::try_from(EVENT_GAPS_MAX).unwrap_or(i64::MAX)),
                );
                for missing in from..e.event_id {
                    self.gaps.insert(missing, now_ms);
                }
                self.high = e.event_id;
                fresh.push(e);
            } else if self.gaps.remove(&e.event_id).is_some() {
                fresh.push(e);
            }
        }
        let before = self.gaps.len();
        self.gaps
            .retain(|_, first| now_ms.saturating_sub(*first) < grace_ms);
        while self.gaps.len() > EVENT_GAPS_MAX {
            self.gaps.pop_first();
        }
        let given_up = u64::try_from(before - self.gaps.len()).unwrap_or(0);
        (fresh, given_up)
    }
}

/// Starts the reader (and the pruner) on the store runtime.
pub fn spawn(shared: Arc<Shared>) {
    let rt = shared.store_rt.clone();
    rt.spawn(run(Arc::clone(&shared)));
    rt.spawn(prune(shared));
}

async fn run(shared: Arc<Shared>) {
    let start = loop {
        match shared.store.last_event_id().await {
            Ok(id) => break id,
            Err(e) => {
                tracing::warn!(error = %e, "outbox: cannot read where it ends, trying again");
                tokio::time::sleep(Duration::from_millis(LISTEN_RETRY_MS)).await;
            }
        }
    };
    let mut cursor = Cursor::after(start);
    if shared.store.is_postgres() {
        listen(&shared, &mut cursor).await;
    } else {
        let every = Duration::from_millis(shared.config.server.events_poll_interval_ms);
        // Until the runtime stops: a draining node still hears of takeovers and releases
        // while its sessions are told, one at a time, to leave.
        loop {
            tokio::time::sleep(every).await;
            read(&shared, &mut cursor).await;
        }
    }
}

/// PostgreSQL: a connection of its own LISTENs (over TLS when the URL asks for it); a
/// notification, or the poll interval, has the outbox read. When the connection drops it
/// is opened again, and the first read catches up.
async fn listen(shared: &Arc<Shared>, cursor: &mut Cursor) {
    let url = shared.config.store.postgres_url.clone();
    // Until the runtime stops (a draining node still needs the events).
    loop {
        let config: Result<tokio_postgres::Config, _> = url.parse();
        match config {
            Ok(mut config) => {
                // A host that black-holes packets is given up on, not waited for.
                config
                    .connect_timeout(Duration::from_millis(
                        shared.config.store.postgres_pool_wait_ms,
                    ))
                    .keepalives(true)
                    .keepalives_idle(Duration::from_secs(
                        shared.config.store.postgres_keepalive_idle_s,
                    ));
                let ca = shared.config.store.postgres_ca_cert_path.as_deref();
                match crate::store::tls_connector(&config, ca) {
                    Ok(Some(tls)) => match config.connect(tls).await {
                        Ok((client, connection)) => {
                            listen_on(shared, cursor, &client, connection).await;
                        }
                        Err(e) => tracing::warn!(error = %e, "outbox: cannot LISTEN"),
                    },
                    Ok(None) => match config.connect(tokio_postgres::NoTls).await {
                        Ok((client, connection)) => {
                            listen_on(shared, cursor, &client, connection).await;
                        }
                        Err(e) => tracing::warn!(error = %e, "outbox: cannot LISTEN"),
                    },
                    Err(e) => tracing::error!(error = %e, "outbox: cannot LISTEN"),
                }
            }
            Err(e) => tracing::error!(error = %e, "outbox: postgres_url"),
        }
        tokio::time::sleep(Duration::from_millis(LISTEN_RETRY_MS)).await;
    }
}

/// One LISTEN connection's life: read at each notification and every poll interval,
/// until it drops.
async fn listen_on<S, T>(
    shared: &Arc<Shared>,
    cursor: &mut Cursor,
    client: &tokio_postgres::Client,
    mut connection: tokio_postgres::Connection<S, T>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use futures_util::StreamExt;
    let every = Duration::from_millis(shared.config.server.events_poll_interval_ms);
    // One pending signal is as good as many.
    let (signal, mut signals) = tokio::sync::mpsc::channel::<()>(1);
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(msg)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(_) = msg {
                let _ = signal.try_send(());
            }
        }
    });
    let listen = format!(
        "SET application_name = 'wenxiao-events {}'; LISTEN {}",
        shared.node_id.replace('\'', ""),
        crate::store::cluster::EVENTS_CHANNEL
    );
    if client.batch_execute(&listen).await.is_ok() {
        // What was written while nobody listened here.
        read(shared, cursor).await;
        // Anything released or listed meanwhile (state the others re-read).
        shared.hotlist_wake.notify_one();
        shared.registry_wake.notify_one();
        loop {
            match tokio::time::timeout(every, signals.recv()).await {
                Ok(None) => break,
                Ok(Some(())) | Err(_) => read(shared, cursor).await,
            }
        }
    }
    driver.abort();
    tracing::warn!("outbox listener disconnected: opening it again");
}

/// Reads what is new and what the gaps may now hold, and handles it.
async fn read(shared: &Arc<Shared>, cursor: &mut Cursor) {
    let grace = i64::try_from(shared.config.server.events_gap_grace_ms).unwrap_or(i64::MAX);
    loop {
        let mut events = match shared
            .store
            .events_after(cursor.high, EVENTS_READ_MAX)
            .await
        {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "outbox not read");
                return;
            }
        };
        let full = i64::try_from(events.len()).unwrap_or(i64::MAX) >= EVENTS_READ_MAX;
        if !cursor.gaps.is_empty() {
            // The open gaps, by id: whatever has committed in them since.
            let ids: Vec<i64> = cursor.gaps.keys().copied().collect();
            match shared.store.events_in(ids).await {
                Ok(older) => events.extend(older),
                Err(e) => tracing::warn!(error = %e, "outbox gaps not read"),
            }
        }
        let (fresh, given_up) = cursor.take(events, crate::clock::now_ms(), grace);
        if given_up > 0 {
            metrics::counter!(m::EVENT_GAPS_SKIPPED_TOTAL).increment(given_up);
        }
        for e in &fresh {
            handle(shared, e);
        }
        if !full {
            return;
        }
    }
}

/// Acts on one event.
pub fn handle(shared: &Shared, e: &Event) {
    let Some(kind) = e.kind else {
        return;
    };
    metrics::counter!(m::EVENTS_TOTAL, "kind" => kind.name()).increment(1);
    match kind {
        EventKind::Takeover => {
            // This node's own takeovers too: its session of that epoch stays, an older
            // one (two nodes misconfigured with one node_id) is closed.
            if let Some((device, epoch, _node)) = parse_takeover(&e.body) {
                shared.taken_over(device, epoch);
            }
        }
        EventKind::CreditsReleased => {
            for s in shared.ota_sessions.iter() {
                s.value().do_send(crate::session::PushNow);
            }
        }
        EventKind::Hotlist => shared.hotlist_wake.notify_one(),
        EventKind::Registry => shared.registry_wake.notify_one(),
    }
}

async fn prune(shared: Arc<Shared>) {
    let retention = i64::try_from(shared.config.server.events_retention_ms).unwrap_or(i64::MAX);
    loop {
        tokio::time::sleep(Duration::from_millis(PRUNE_INTERVAL_MS)).await;
        let before = crate::clock::now_ms().saturating_sub(retention);
        match shared.store.prune_events(before).await {
            Ok(n) if n > 0 => tracing::debug!(events = n, "outbox pruned"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "outbox not pruned"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use rand::{RngExt, SeedableRng};

    fn ev(id: i64) -> Event {
        Event {
            event_id: id,
            kind: Some(EventKind::Registry),
            body: String::new(),
            at_ms: 0,
        }
    }

    /// A reference model: ids taken in order, each committed (or rolled back) within
    /// half the gap grace of being taken, so later ids often commit first; the reader
    /// runs at random moments and sees what has committed. Every committed event is
    /// handled exactly once, none that rolled back, and the gaps close.
    #[test]
    fn every_committed_event_is_handled_once_whatever_the_commit_order() {
        const GRACE_MS: i64 = 2_000;
        for seed in 0..300u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let n: i64 = rng.random_range(1..300);
            // (id, commit time, committed)
            let mut taken = 0i64;
            let ids: Vec<(i64, i64, bool)> = (1..=n)
                .map(|id| {
                    taken += rng.random_range(0..20);
                    let at = taken + rng.random_range(0..GRACE_MS / 2);
                    (id, at, rng.random_range(0..20) != 0)
                })
                .collect();
            let end = ids.iter().map(|x| x.1).max().unwrap_or(0) + 3 * GRACE_MS;
            let mut cursor = Cursor::after(0);
            let mut handled: Vec<i64> = Vec::new();
            let mut now = 0i64;
            while now <= end {
                let low = cursor
                    .gaps
                    .keys()
                    .next()
                    .copied()
                    .unwrap_or(cursor.high + 1);
                // The reader's two queries: after the high mark, and from the lowest gap.
                let visible: Vec<Event> = ids
                    .iter()
                    .filter(|(id, at, ok)| *ok && *at <= now && (*id > cursor.high || *id >= low))
                    .map(|(id, _, _)| ev(*id))
                    .collect();
                let (fresh, _) = cursor.take(visible, now, GRACE_MS);
                handled.extend(fresh.iter().map(|e| e.event_id));
                now += rng.random_range(1..400);
            }
            let want: Vec<i64> = ids.iter().filter(|x| x.2).map(|x| x.0).collect();
            handled.sort_unstable();
            assert_eq!(handled, want, "seed {seed}");
            assert!(cursor.gaps.is_empty(), "seed {seed}: {:?}", cursor.gaps);
        }
    }

    #[test]
    fn a_gap_is_given_up_after_its_grace_and_bounded() {
        let mut c = Cursor::after(10);
        let (fresh, skipped) = c.take(vec![ev(13)], 0, 100);
        assert_eq!(fresh.len(), 1);
        assert_eq!(skipped, 0);
        assert_eq!(c.gaps.keys().copied().collect::<Vec<_>>(), vec![11, 12]);
        let (fresh, _) = c.take(vec![ev(12), ev(13)], 50, 100);
        assert_eq!(
            fresh.iter().map(|e| e.event_id).collect::<Vec<_>>(),
            vec![12]
        );
        let (_, skipped) = c.take(vec![], 100, 100);
        assert_eq!(skipped, 1);
        assert!(c.gaps.is_empty());
        // A jump past the bound keeps the newest gaps only.
        let (_, _) = c.take(vec![ev(13 + 20_000)], 200, 1_000);
        assert_eq!(c.gaps.len(), EVENT_GAPS_MAX);
    }
}
