//! Emulated e-purse cards (city cards and SIM applets): they sign transactions with a
//! TAC, prove themselves with MAC1 when a load opens, check the host's MAC2, apply the load
//! and answer with a load TAC — under the card keys derived from the master keys, as the
//! contract's Keys section says.

use crate::plan::PlannedEvent;
use wenxiao_protocol::mac::{
    KeyPurpose, LoadTacInput, Mac1Input, Mac2Input, MasterKeys, TxnTacInput, mac_eq,
};
use wenxiao_protocol::{
    Bytes4, CardNo, CreditId, CreditOutcome, CreditResult, DeviceId, Fen, LoadAuth, LoadInit,
    OnlineSeq, Seq, Txn, UnixMillis,
};

/// The card refused the host: MAC2 did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("card {card_no}: MAC2 of credit {credit_id} does not prove the host")]
pub struct Mac2Refused {
    /// The card.
    pub card_no: CardNo,
    /// The credit being loaded.
    pub credit_id: CreditId,
}

/// One e-purse: balance and online (load) counter.
pub struct Card {
    /// Its number.
    pub no: CardNo,
    /// Its balance.
    pub balance: Fen,
    /// Its online (load) counter.
    pub online_seq: u16,
    keys: MasterKeys,
}

impl std::fmt::Debug for Card {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Card")
            .field("no", &self.no)
            .field("balance", &self.balance)
            .field("online_seq", &self.online_seq)
            .finish_non_exhaustive()
    }
}

impl Card {
    /// A card in the given state, holding the keys derived from `keys`.
    pub fn new(no: CardNo, balance: Fen, online_seq: u16, keys: MasterKeys) -> Self {
        Self {
            no,
            balance,
            online_seq,
            keys,
        }
    }

    /// The card's random challenge for its next load (derived from its state, so a run
    /// is reproducible).
    pub fn random(&self) -> Bytes4 {
        let [a, b, c, d, ..] = self.no.get().to_be_bytes();
        let [s0, s1] = self.online_seq.to_be_bytes();
        Bytes4([a ^ s0, b ^ s1, c, d])
    }

    /// LOAD_INIT for `credit` of `amount` on `device`, with MAC1.
    pub fn load_init(&self, credit: CreditId, amount: Fen, device: DeviceId) -> LoadInit {
        let key = self.keys.card_key(KeyPurpose::Load, self.no);
        LoadInit {
            credit_id: credit,
            card_no: self.no,
            online_seq: OnlineSeq(self.online_seq),
            balance_fen: self.balance,
            card_random: self.random(),
            mac1: Mac1Input {
                card_no: self.no,
                online_seq: OnlineSeq(self.online_seq),
                balance_fen: self.balance,
                amount_fen: amount,
                device_id: device,
                card_random: self.random(),
            }
            .mac(&key),
        }
    }

    /// Applies the load if MAC2 proves the host: the balance grows, the online counter
    /// steps, and the card answers with its load TAC.
    pub fn apply(
        &mut self,
        credit: CreditId,
        auth: &LoadAuth,
        amount: Fen,
        device: DeviceId,
    ) -> Result<Bytes4, Mac2Refused> {
        let key = self.keys.card_key(KeyPurpose::Load, self.no);
        let expected = Mac2Input {
            card_no: self.no,
            online_seq: OnlineSeq(self.online_seq),
            amount_fen: amount,
            device_id: device,
            host_time_ms: auth.host_time_ms,
            card_random: self.random(),
        }
        .mac(&key);
        if !mac_eq(expected, auth.mac2) {
            return Err(Mac2Refused {
                card_no: self.no,
                credit_id: credit,
            });
        }
        let balance_after = Fen(self.balance.get().saturating_add(amount.get()));
        let tac = LoadTacInput {
            card_no: self.no,
            online_seq: OnlineSeq(self.online_seq),
            balance_after_fen: balance_after,
            amount_fen: amount,
            device_id: device,
            host_time_ms: auth.host_time_ms,
        }
        .tac(&key);
        self.balance = balance_after;
        self.online_seq = self.online_seq.wrapping_add(1);
        Ok(tac)
    }

    /// The CREDIT_RESULT the device reports.
    pub fn result(&self, credit: CreditId, outcome: CreditOutcome, tac: Bytes4) -> CreditResult {
        CreditResult {
            credit_id: credit,
            card_no: self.no,
            outcome,
            online_seq: OnlineSeq(self.online_seq),
            balance_after_fen: self.balance,
            tac,
        }
    }
}

/// The TXN a planned event becomes on its device: seq `seq`, the device clock at
/// `day_start_ms + at_ms + skew_ms`, signed with the card's TAC. Points and the hold are
/// filled in after POINTS_AUTH (they are not covered by the TAC).
pub fn txn(e: &PlannedEvent, seq: Seq, day_start_ms: i64, skew_ms: i64, keys: &MasterKeys) -> Txn {
    let occurred_at_ms = UnixMillis(day_start_ms + e.at_ms + skew_ms);
    let tac = TxnTacInput {
        card_no: e.card_no,
        card_counter: e.card_counter,
        kind: e.kind,
        amount_fen: e.amount_fen,
        device_id: e.device_id,
        occurred_at_ms,
    }
    .tac(&keys.card_key(KeyPurpose::Purchase, e.card_no));
    Txn {
        seq,
        kind: e.kind,
        card_no: e.card_no,
        card_counter: e.card_counter,
        amount_fen: e.amount_fen,
        list_price_fen: e.list_price_fen,
        item: e.item,
        points_hold_id: None,
        points_used: wenxiao_protocol::Points(0),
        refund_of_seq: None,
        occurred_at_ms,
        tac,
    }
}
