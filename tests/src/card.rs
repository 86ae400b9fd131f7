//! An emulated e-purse card for load-exchange tests: it proves itself with MAC1, checks
//! the host's MAC2, applies loads and answers with a TAC, under the development keys.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use wenxiao_gateway::config::Config;
use wenxiao_protocol::mac::{KeyPurpose, LoadTacInput, Mac1Input, Mac2Input, MasterKeys, mac_eq};
use wenxiao_protocol::*;

/// An e-purse card: balance and online (load) counter, keys from the development master.
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
        write!(
            f,
            "Card({}, {}, {})",
            self.no, self.balance, self.online_seq
        )
    }
}

impl Card {
    /// A card with ¥50 and online counter 3.
    pub fn new(no: u64) -> Self {
        Self {
            no: CardNo(no),
            balance: Fen(5_000),
            online_seq: 3,
            keys: Config::default().master_keys().unwrap(),
        }
    }

    /// The card's random challenge for the next load.
    pub fn random(&self) -> Bytes4 {
        Bytes4([7, self.online_seq.to_be_bytes()[1], 1, 2])
    }

    /// The LOAD_INIT a device sends for this card.
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

    /// Applies the load if MAC2 proves the host; returns the load TAC.
    pub fn apply(&mut self, auth: &LoadAuth, amount: Fen, device: DeviceId) -> Bytes4 {
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
        assert!(mac_eq(expected, auth.mac2), "MAC2 does not prove the host");
        let tac = LoadTacInput {
            card_no: self.no,
            online_seq: OnlineSeq(self.online_seq),
            balance_after_fen: Fen(self.balance.get() + amount.get()),
            amount_fen: amount,
            device_id: device,
            host_time_ms: auth.host_time_ms,
        }
        .tac(&key);
        self.balance = Fen(self.balance.get() + amount.get());
        self.online_seq += 1;
        tac
    }

    /// The CREDIT_RESULT a device sends.
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
