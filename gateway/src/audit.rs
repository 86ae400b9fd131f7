//! The audit log's hash chain: each row's hash covers the previous row's hash and the
//! row's own fields, so changing, removing or reordering any row breaks every hash after
//! it. Pure: the store appends and verifies with these functions.

use sha2::{Digest, Sha256};

/// The hash before the first row: 64 zero hex digits.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One row of the audit log, as hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// Its place in the log, from 1, without gaps.
    pub seq: i64,
    /// When.
    pub at_ms: i64,
    /// Who (a user, `cli`, `rules`, an import's file).
    pub actor: &'a str,
    /// What, as `area.verb` (`hotlist.change`, `case.confirmed`).
    pub action: &'a str,
    /// On what (`case 17`, `hot-list version 4`).
    pub subject: &'a str,
    /// The details, a JSON text.
    pub detail: &'a str,
}

/// The row's hash, as 64 lower-case hex digits: SHA-256 over the previous hash's text,
/// the seq and time as 8-byte big-endian integers, and each text field prefixed with its
/// length as a 4-byte big-endian integer (so no two different rows hash the same input).
pub fn chain_hash(prev: &str, e: &Entry<'_>) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(e.seq.to_be_bytes());
    h.update(e.at_ms.to_be_bytes());
    for text in [e.actor, e.action, e.subject, e.detail] {
        h.update(u32::try_from(text.len()).unwrap_or(u32::MAX).to_be_bytes());
        h.update(text.as_bytes());
    }
    hex::encode(h.finalize())
}

/// What a walk of the log found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every row's hash holds: this many rows.
    Intact {
        /// Rows checked.
        rows: u64,
    },
    /// The first row whose seq or hash does not hold.
    Broken {
        /// Its seq (or the seq expected there).
        seq: i64,
        /// What is wrong.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(detail: &str) -> Entry<'_> {
        Entry {
            seq: 1,
            at_ms: 1_700_000_000_000,
            actor: "ana",
            action: "case.confirmed",
            subject: "case 1",
            detail,
        }
    }

    #[test]
    fn every_field_and_the_previous_hash_change_the_hash() {
        let base = chain_hash(GENESIS_HASH, &entry("{}"));
        assert_eq!(base.len(), 64);
        assert_eq!(
            base,
            chain_hash(GENESIS_HASH, &entry("{}")),
            "deterministic"
        );
        let mut others = vec![
            chain_hash(&base, &entry("{}")),
            chain_hash(GENESIS_HASH, &entry("{ }")),
        ];
        let e = entry("{}");
        others.push(chain_hash(GENESIS_HASH, &Entry { seq: 2, ..e }));
        others.push(chain_hash(GENESIS_HASH, &Entry { at_ms: 1, ..e }));
        others.push(chain_hash(GENESIS_HASH, &Entry { actor: "bob", ..e }));
        others.push(chain_hash(
            GENESIS_HASH,
            &Entry {
                action: "case.lifted",
                ..e
            },
        ));
        others.push(chain_hash(
            GENESIS_HASH,
            &Entry {
                subject: "case 2",
                ..e
            },
        ));
        // Moving text between fields changes it too (lengths are hashed).
        others.push(chain_hash(
            GENESIS_HASH,
            &Entry {
                actor: "an",
                action: "acase.confirmed",
                ..e
            },
        ));
        for o in &others {
            assert_ne!(*o, base);
        }
    }
}
