//! The simulator's emulated e-purse card with the development keys and test defaults
//! (¥50, online counter 3), for the load-exchange tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use wenxiao_gateway::config::Config;
use wenxiao_protocol::*;
use wenxiao_simulator::card::Card as SimCard;

/// An e-purse card (see [`wenxiao_simulator::card::Card`]).
#[derive(Debug)]
pub struct Card(SimCard);

impl std::ops::Deref for Card {
    type Target = SimCard;
    fn deref(&self) -> &SimCard {
        &self.0
    }
}

impl Card {
    /// A card with ¥50 and online counter 3.
    pub fn new(no: u64) -> Self {
        Self(SimCard::new(
            CardNo(no),
            Fen(5_000),
            3,
            Config::default().master_keys().unwrap(),
        ))
    }

    /// The LOAD_INIT a device sends for this card.
    pub fn load_init(&self, credit: CreditId, amount: Fen, device: DeviceId) -> LoadInit {
        self.0.load_init(credit, amount, device)
    }

    /// Applies the load (panics unless MAC2 proves the host); returns the load TAC.
    pub fn apply(&mut self, auth: &LoadAuth, amount: Fen, device: DeviceId) -> Bytes4 {
        self.0.apply(auth.credit_id, auth, amount, device).unwrap()
    }

    /// The CREDIT_RESULT a device sends.
    pub fn result(&self, credit: CreditId, outcome: CreditOutcome, tac: Bytes4) -> CreditResult {
        self.0.result(credit, outcome, tac)
    }
}
