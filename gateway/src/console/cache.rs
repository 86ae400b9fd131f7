//! Figures read from the store at most every `console.dashboard_refresh_ms`, served stale
//! while a refresh runs: only the first reader of a value waits for the store. Over a
//! city's store the dashboard's and a clearing day's aggregates take seconds; no request
//! waits for them once they have been read once.

use crate::httpapi::ApiError;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// One value and when it was read.
#[derive(Debug, Default)]
pub(crate) struct Fresh<T> {
    slot: Mutex<Option<(i64, Arc<T>)>>,
    /// A background refresh is running.
    refreshing: AtomicBool,
    /// Bumped by [`Fresh::expire`]: a refresh that began before it stores its value as
    /// already old, so the next read refreshes again.
    generation: std::sync::atomic::AtomicU64,
    /// The first read: later readers wait for it rather than read the store too.
    first: tokio::sync::Mutex<()>,
}

impl<T: 'static> Fresh<T> {
    /// An empty slot.
    pub(crate) fn new() -> Self {
        Self {
            slot: Mutex::new(None),
            refreshing: AtomicBool::new(false),
            generation: std::sync::atomic::AtomicU64::new(0),
            first: tokio::sync::Mutex::new(()),
        }
    }

    fn current(&self) -> Option<(i64, Arc<T>)> {
        self.slot
            .lock()
            .ok()
            .and_then(|s| s.as_ref().map(|(at, v)| (*at, Arc::clone(v))))
    }

    fn put(&self, at: i64, v: Arc<T>) {
        if let Ok(mut s) = self.slot.lock() {
            *s = Some((at, v));
        }
    }

    /// The value: the one held when it is younger than `refresh_ms`; the one held while
    /// `load` runs in the background when it is older (one refresh at a time); `load`'s,
    /// awaited, when none is held yet.
    pub(crate) async fn get<F, Fut>(
        self: &Arc<Self>,
        refresh_ms: i64,
        load: F,
    ) -> Result<Arc<T>, ApiError>
    where
        F: FnOnce() -> Fut + 'static,
        Fut: Future<Output = Result<T, ApiError>> + 'static,
    {
        let now = crate::clock::now_ms();
        if let Some((at, v)) = self.current() {
            if now.saturating_sub(at) >= refresh_ms && !self.refreshing.swap(true, Ordering::AcqRel)
            {
                let me = Arc::clone(self);
                let generation = self.generation.load(Ordering::Acquire);
                actix_web::rt::spawn(async move {
                    // Cleared however the refresh ends (a panic in `load` included).
                    struct Done<'a>(&'a AtomicBool);
                    impl Drop for Done<'_> {
                        fn drop(&mut self) {
                            self.0.store(false, Ordering::Release);
                        }
                    }
                    let _done = Done(&me.refreshing);
                    let started = crate::clock::now_ms();
                    match load().await {
                        Ok(v) => {
                            // Expired meanwhile: what was read may predate the change.
                            let at = if me.generation.load(Ordering::Acquire) == generation {
                                started
                            } else {
                                i64::MIN
                            };
                            me.put(at, Arc::new(v));
                        }
                        Err(e) => tracing::warn!(error = ?e, "console figures not refreshed"),
                    }
                });
            }
            return Ok(v);
        }
        let _first = self.first.lock().await;
        if let Some((_, v)) = self.current() {
            return Ok(v);
        }
        let v = Arc::new(load().await?);
        self.put(now, Arc::clone(&v));
        Ok(v)
    }

    /// Marks the value for a refresh at its next read (it is still served meanwhile).
    pub(crate) fn expire(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut s) = self.slot.lock()
            && let Some((at, _)) = s.as_mut()
        {
            *at = i64::MIN;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::Fresh;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[actix_rt::test]
    async fn a_held_value_is_served_while_it_is_refreshed_and_only_once_read_at_first() {
        let loads = Arc::new(AtomicU32::new(0));
        let f = Arc::new(Fresh::<u32>::new());
        let load = |v: u32, loads: Arc<AtomicU32>| {
            move || async move {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok(v)
            }
        };
        // The first read waits for the store; a fresh value is not read again.
        assert_eq!(
            *f.get(60_000, load(1, Arc::clone(&loads))).await.unwrap(),
            1
        );
        assert_eq!(
            *f.get(60_000, load(2, Arc::clone(&loads))).await.unwrap(),
            1
        );
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        // Expired: the held value is served at once while one refresh runs behind it.
        f.expire();
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let slow = {
            let loads = Arc::clone(&loads);
            move || async move {
                let _ = wait.await;
                loads.fetch_add(1, Ordering::SeqCst);
                Ok(3)
            }
        };
        assert_eq!(*f.get(0, slow).await.unwrap(), 1);
        // A second stale read does not start a second refresh.
        assert_eq!(*f.get(0, load(4, Arc::clone(&loads))).await.unwrap(), 1);
        go.send(()).unwrap();
        let mut landed = false;
        for _ in 0..100 {
            if *f.get(60_000, load(5, Arc::clone(&loads))).await.unwrap() == 3 {
                assert_eq!(loads.load(Ordering::SeqCst), 2);
                landed = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(landed, "the refresh never landed");
        // Expired again while a refresh runs: its value lands as already old, and the
        // next read refreshes once more.
        f.expire();
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let slow = move || async move {
            let _ = wait.await;
            Ok(6)
        };
        assert_eq!(*f.get(0, slow).await.unwrap(), 3);
        f.expire();
        go.send(()).unwrap();
        for _ in 0..100 {
            if *f.get(60_000, load(7, Arc::clone(&loads))).await.unwrap() == 7 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("a value read before an expiry was kept as fresh");
    }
}
