//! The contract's key derivation and MACs (section "Keys"), as pure functions.
//!
//! `card_key(purpose, card_no) = HMAC-SHA256(master_key[purpose], card_no as u64 BE)` and
//! `mac(key, fields…)` = the first 4 bytes of `HMAC-SHA256(key, fields packed as on the
//! wire)`. Real deployments hold the master keys in a security module; these functions are
//! the software equivalent the contract specifies.

use crate::types::{Bytes4, CardCounter, CardNo, DeviceId, Fen, OnlineSeq, TxnKind, UnixMillis};
use hmac::{Hmac, KeyInit, Mac as _};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::fmt;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

type HmacSha256 = Hmac<Sha256>;

/// Shortest master key accepted, in bytes: 128 bits of key material.
pub const MASTER_KEY_BYTES_MIN: usize = 16;
/// Longest master key accepted, in bytes (HMAC-SHA256's block size).
pub const MASTER_KEY_BYTES_MAX: usize = 64;

/// What a card key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyPurpose {
    /// TXN TACs.
    Purchase,
    /// MAC1, MAC2 and load TACs.
    Load,
}

/// A master key from the gateway's configuration. `Debug` never prints it and its memory
/// is zeroed when dropped.
#[derive(Clone)]
pub struct MasterKey(Zeroizing<Vec<u8>>);

/// A master key that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MasterKeyError {
    /// Not hexadecimal.
    #[error("master key is not hexadecimal")]
    NotHex,
    /// Too short or too long.
    #[error("master key of {0} bytes; {MASTER_KEY_BYTES_MIN}..={MASTER_KEY_BYTES_MAX} required")]
    BadLength(usize),
}

impl MasterKey {
    /// Wraps raw key bytes.
    pub fn new(bytes: Vec<u8>) -> Result<Self, MasterKeyError> {
        let bytes = Zeroizing::new(bytes);
        if !(MASTER_KEY_BYTES_MIN..=MASTER_KEY_BYTES_MAX).contains(&bytes.len()) {
            return Err(MasterKeyError::BadLength(bytes.len()));
        }
        Ok(Self(bytes))
    }

    /// Parses a key written in hexadecimal.
    pub fn from_hex(s: &str) -> Result<Self, MasterKeyError> {
        let bytes = hex::decode(s.trim()).map_err(|_| MasterKeyError::NotHex)?;
        Self::new(bytes)
    }

    /// Derives the key of one card: `HMAC-SHA256(master, card_no as u64 BE)`.
    pub fn card_key(&self, card_no: CardNo) -> CardKey {
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(&hmac_sha256(&self.0, &[&card_no.get().to_be_bytes()]));
        CardKey(out)
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// The two master keys of the contract, one per [`KeyPurpose`].
#[derive(Debug, Clone)]
pub struct MasterKeys {
    /// For TXN TACs.
    pub purchase: MasterKey,
    /// For the load exchange.
    pub load: MasterKey,
}

impl MasterKeys {
    /// `card_key(purpose, card_no)`.
    pub fn card_key(&self, purpose: KeyPurpose, card_no: CardNo) -> CardKey {
        match purpose {
            KeyPurpose::Purchase => self.purchase.card_key(card_no),
            KeyPurpose::Load => self.load.card_key(card_no),
        }
    }
}

/// One card's derived key. `Debug` never prints it; zeroed when dropped.
#[derive(Clone)]
pub struct CardKey(Zeroizing<[u8; 32]>);

impl fmt::Debug for CardKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CardKey(<redacted>)")
    }
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail; the fallback
    // keeps this function total without a panic path.
    let Ok(mut mac) = <HmacSha256 as KeyInit>::new_from_slice(key) else {
        return [0; 32];
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

impl CardKey {
    fn mac(&self, parts: &[&[u8]]) -> Bytes4 {
        let full = hmac_sha256(self.0.as_slice(), parts);
        Bytes4([full[0], full[1], full[2], full[3]])
    }
}

/// Compares two MACs in constant time.
pub fn mac_eq(a: Bytes4, b: Bytes4) -> bool {
    a.0.ct_eq(&b.0).into()
}

/// Inputs of a TXN's TAC, in MAC order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxnTacInput {
    /// TXN.card_no.
    pub card_no: CardNo,
    /// TXN.card_counter.
    pub card_counter: CardCounter,
    /// TXN.kind.
    pub kind: TxnKind,
    /// TXN.amount_fen.
    pub amount_fen: Fen,
    /// The device's id.
    pub device_id: DeviceId,
    /// TXN.occurred_at_ms.
    pub occurred_at_ms: UnixMillis,
}

impl TxnTacInput {
    /// `mac(card_key(purchase), card_no, card_counter, kind, amount_fen, device_id,
    /// occurred_at_ms)`; `key` must be the card's purchase key.
    pub fn tac(&self, key: &CardKey) -> Bytes4 {
        key.mac(&[
            &self.card_no.get().to_be_bytes(),
            &self.card_counter.get().to_be_bytes(),
            &[self.kind.code()],
            &self.amount_fen.get().to_be_bytes(),
            &self.device_id.get().to_be_bytes(),
            &self.occurred_at_ms.get().to_be_bytes(),
        ])
    }
}

/// Inputs of MAC1 (the card's proof in LOAD_INIT), in MAC order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mac1Input {
    /// The card.
    pub card_no: CardNo,
    /// The card's load counter before the load.
    pub online_seq: OnlineSeq,
    /// The card's balance before the load.
    pub balance_fen: Fen,
    /// The credit's amount.
    pub amount_fen: Fen,
    /// The loading device.
    pub device_id: DeviceId,
    /// The card's random challenge.
    pub card_random: Bytes4,
}

impl Mac1Input {
    /// `mac(card_key(load), card_no, online_seq, balance_fen, amount_fen, device_id,
    /// card_random)`; `key` must be the card's load key.
    pub fn mac(&self, key: &CardKey) -> Bytes4 {
        key.mac(&[
            &self.card_no.get().to_be_bytes(),
            &self.online_seq.get().to_be_bytes(),
            &self.balance_fen.get().to_be_bytes(),
            &self.amount_fen.get().to_be_bytes(),
            &self.device_id.get().to_be_bytes(),
            &self.card_random.0,
        ])
    }
}

/// Inputs of MAC2 (the host's authorisation in LOAD_AUTH), in MAC order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mac2Input {
    /// The card.
    pub card_no: CardNo,
    /// The card's load counter before the load.
    pub online_seq: OnlineSeq,
    /// The credit's amount.
    pub amount_fen: Fen,
    /// The loading device.
    pub device_id: DeviceId,
    /// The host's time, sent in LOAD_AUTH.
    pub host_time_ms: UnixMillis,
    /// The card's random challenge from LOAD_INIT.
    pub card_random: Bytes4,
}

impl Mac2Input {
    /// `mac(card_key(load), card_no, online_seq, amount_fen, device_id, host_time_ms,
    /// card_random)`; `key` must be the card's load key.
    pub fn mac(&self, key: &CardKey) -> Bytes4 {
        key.mac(&[
            &self.card_no.get().to_be_bytes(),
            &self.online_seq.get().to_be_bytes(),
            &self.amount_fen.get().to_be_bytes(),
            &self.device_id.get().to_be_bytes(),
            &self.host_time_ms.get().to_be_bytes(),
            &self.card_random.0,
        ])
    }
}

/// Inputs of the load TAC (the card's proof in CREDIT_RESULT LOADED), in MAC order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadTacInput {
    /// The card.
    pub card_no: CardNo,
    /// The card's load counter **before** the load (as in LOAD_INIT); the MAC covers
    /// `online_seq + 1`, the value CREDIT_RESULT reports. A card at 65,535 has no next
    /// value and is never authorised to load (the gateway declines its LOAD_INIT).
    pub online_seq: OnlineSeq,
    /// The card's balance after the load.
    pub balance_after_fen: Fen,
    /// The credit's amount.
    pub amount_fen: Fen,
    /// The loading device.
    pub device_id: DeviceId,
    /// The host time sent in LOAD_AUTH.
    pub host_time_ms: UnixMillis,
}

impl LoadTacInput {
    /// `mac(card_key(load), card_no, online_seq + 1, balance_after_fen, amount_fen,
    /// device_id, host_time_ms)`; `key` must be the card's load key.
    pub fn tac(&self, key: &CardKey) -> Bytes4 {
        key.mac(&[
            &self.card_no.get().to_be_bytes(),
            &self.online_seq.get().wrapping_add(1).to_be_bytes(),
            &self.balance_after_fen.get().to_be_bytes(),
            &self.amount_fen.get().to_be_bytes(),
            &self.device_id.get().to_be_bytes(),
            &self.host_time_ms.get().to_be_bytes(),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_key_material() {
        let master = MasterKey::from_hex("00112233445566778899aabbccddeeff").unwrap();
        let dbg = format!("{master:?} {:?}", master.card_key(CardNo(1)));
        assert!(!dbg.contains("0011"), "{dbg}");
        assert!(dbg.contains("redacted"));
    }

    #[test]
    fn short_and_non_hex_master_keys_are_refused() {
        assert_eq!(
            MasterKey::from_hex("0011").unwrap_err(),
            MasterKeyError::BadLength(2)
        );
        assert_eq!(
            MasterKey::from_hex("zz").unwrap_err(),
            MasterKeyError::NotHex
        );
    }

    #[test]
    fn a_changed_field_changes_the_tac() {
        let key = MasterKey::new(vec![7; 32]).unwrap().card_key(CardNo(42));
        let input = TxnTacInput {
            card_no: CardNo(42),
            card_counter: CardCounter(3),
            kind: TxnKind::Purchase,
            amount_fen: Fen(1000),
            device_id: DeviceId(9),
            occurred_at_ms: UnixMillis(1),
        };
        let tampered = TxnTacInput {
            amount_fen: Fen(1001),
            ..input
        };
        assert!(!mac_eq(input.tac(&key), tampered.tac(&key)));
        assert!(mac_eq(input.tac(&key), input.tac(&key)));
    }
}
