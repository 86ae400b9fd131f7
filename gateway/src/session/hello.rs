//! HELLO and WELCOME: authentication against the certificate and the registry, the
//! device's `stored_seq`, and which of two sessions of one device wins.

use super::{Phase, Replaced, Session};
use crate::clock;
use crate::metrics as m;
use crate::registry::{Device, Merchant};
use actix::prelude::*;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use wenxiao_protocol::{ErrorCode, Hello, Message, Seq, UnixMillis, Welcome};

impl Session {
    pub(super) fn on_hello(&mut self, hello: Hello, ctx: &mut Context<Self>) {
        let shared = Arc::clone(&self.shared);
        if shared.draining.load(Ordering::Relaxed) {
            return self.fail(ctx, ErrorCode::ShuttingDown, "gateway is shutting down");
        }
        match self.cert_device.clone() {
            Ok(id) if id == hello.device_id => {}
            Ok(id) => {
                let text = format!(
                    "certificate is for device {id}, HELLO says {}",
                    hello.device_id
                );
                return self.fail(ctx, ErrorCode::AuthFailed, &text);
            }
            Err(e) => return self.fail(ctx, ErrorCode::AuthFailed, &e),
        }
        let registry = shared.registry();
        let device = match registry.device(hello.device_id) {
            Some(d) if d.kind == hello.kind => *d,
            Some(d) => {
                let text = format!("device {} is registered as {}", hello.device_id, d.kind);
                return self.fail(ctx, ErrorCode::DeviceUnknown, &text);
            }
            None => return self.fail(ctx, ErrorCode::DeviceUnknown, "device not registered"),
        };
        if !device.active {
            return self.fail(ctx, ErrorCode::DeviceDisabled, "device is disabled");
        }
        let merchant = device
            .merchant_id
            .and_then(|id| registry.merchant(id).cloned());
        if super::screens_cards(device.kind) {
            self.hotlist = Some(super::hotlist::HotlistState::new(
                hello.hotlist_version.get(),
            ));
        }
        self.phase = Phase::Welcoming;
        self.device_id = Some(device.device_id);
        let floor = shared
            .watermarks
            .get(&device.device_id)
            .and_then(|w| Seq::new(*w));
        // The lease first: once it is ours, whatever the previous holder committed is in
        // the store, and whatever it writes later is refused; then `stored_seq`. The lease
        // writers do both for every HELLO queued meanwhile at once.
        let (reply, answer) = tokio::sync::oneshot::channel();
        let ask = super::leases::WelcomeAsk {
            device: device.device_id,
            floor,
            reply,
        };
        match shared.welcomes.try_send(ask) {
            Ok(()) => {}
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!(m::CONNECTIONS_REFUSED_TOTAL, "reason" => "hello_queue_full")
                    .increment(1);
                return self.fail(
                    ctx,
                    ErrorCode::StoreUnavailable,
                    "too many HELLOs are waiting for the store",
                );
            }
            // The lease writers have ended: the gateway is stopping.
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                return self.fail(ctx, ErrorCode::ShuttingDown, "gateway is shutting down");
            }
        }
        // `wait`: no other frame is handled before WELCOME is out.
        ctx.wait(
            actix::fut::wrap_future(answer).map(move |res, act: &mut Session, ctx| {
                if matches!(act.phase, Phase::Closing) {
                    return;
                }
                let Ok(Some((epoch, stored))) = res else {
                    return act.fail(ctx, ErrorCode::StoreUnavailable, "store unavailable");
                };
                act.lease_epoch = epoch;
                act.welcome(device, merchant, stored, ctx);
            }),
        );
    }

    pub(super) fn welcome(
        &mut self,
        device: Device,
        merchant: Option<Merchant>,
        stored: Option<Seq>,
        ctx: &mut Context<Self>,
    ) {
        let w = Seq::wire(stored);
        self.seqs.watermark = w;
        self.seqs.checkpointed = w;
        // Another node (or a later HELLO here) took the device after this one did.
        let stale = !self.shared.saw_lease(device.device_id, self.lease_epoch) || {
            use dashmap::mapref::entry::Entry;
            let me = (self.session_id, ctx.address(), self.lease_epoch);
            match self.shared.sessions.entry(device.device_id) {
                // A later HELLO of this device got its WELCOME first: this one is stale.
                Entry::Occupied(e) if !newer_lease_wins(Some(e.get().2), self.lease_epoch) => true,
                Entry::Occupied(mut e) => {
                    let (_, old, _) = e.insert(me);
                    old.do_send(Replaced);
                    false
                }
                Entry::Vacant(v) => {
                    v.insert(me);
                    false
                }
            }
        };
        // A takeover event handled between the check above and the registration saw no
        // session to close: look again now that this one is registered.
        let overtaken = !stale
            && self
                .shared
                .lease_epochs
                .get(&device.device_id)
                .is_some_and(|e| *e > self.lease_epoch);
        if stale || overtaken {
            return self.fail(
                ctx,
                ErrorCode::SessionReplaced,
                "a newer session of this device took over",
            );
        }
        // A CRL reloaded while this session was being welcomed.
        if self
            .cert_serial
            .as_ref()
            .is_some_and(|s| self.shared.revoked_serials().contains(s))
        {
            return self.fail(
                ctx,
                ErrorCode::AuthFailed,
                "the device's certificate was revoked",
            );
        }
        metrics::gauge!(m::SESSIONS, "kind" => device.kind.name()).increment(1.0);
        self.welcomed_kind = Some(device.kind.name());
        let cfg = &self.shared.config.session;
        let welcome = Welcome {
            session_id: self.session_id,
            server_time_ms: UnixMillis(clock::now_ms()),
            stored_seq: stored,
            heartbeat_s: cfg.heartbeat_s,
            max_in_flight: cfg.max_in_flight,
            hotlist_version: wenxiao_protocol::HotlistVersion(self.shared.hotlist_view().version()),
        };
        self.phase = Phase::Active { device, merchant };
        self.send(ctx, Message::Welcome(welcome));
        if self.draining {
            self.send_drain(ctx);
        }
        self.hotlist_welcomed(device.device_id, ctx);
        if let (wenxiao_protocol::DeviceKind::OtaEndpoint, Some(op)) =
            (device.kind, device.operator)
        {
            let (from, to) = self.shared.config.credits.card_range(op);
            self.ota_range = Some((wenxiao_protocol::CardNo(from), wenxiao_protocol::CardNo(to)));
            self.shared
                .ota_sessions
                .insert(device.device_id, ctx.address());
            // Whatever was pushed to this endpoint before it reconnected goes out again.
            self.claim(ctx, true);
        }
    }
}

/// Whether a session whose lease epoch is `mine` may take over from the registered one
/// (whose epoch is `registered`): the store gives each HELLO a higher epoch, so only a
/// later HELLO replaces a session, however the WELCOME lookups finish.
fn newer_lease_wins(registered: Option<u64>, mine: u64) -> bool {
    registered.is_none_or(|r| mine > r)
}

#[cfg(test)]
mod tests {
    use super::newer_lease_wins;

    /// Defect 9: two HELLOs of one device whose WELCOME lookups finish out of order — the
    /// older one, finishing last, must not replace the newer session.
    #[test]
    pub(super) fn only_a_later_hello_replaces_a_session() {
        assert!(newer_lease_wins(None, 0));
        assert!(newer_lease_wins(Some(3), 4));
        assert!(!newer_lease_wins(Some(4), 3));
        assert!(!newer_lease_wins(Some(4), 4));
    }
}
