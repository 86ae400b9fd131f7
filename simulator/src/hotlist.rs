//! A terminal's hot list — the card blacklist a POS, kiosk or sign-in reader screens cards
//! against before it takes them — as a pure state machine: [`HotlistState::apply`] takes
//! one HOTLIST_UPDATE chunk and says whether the update is still arriving, complete (the
//! device acknowledges the version), or cannot apply (the device throws its list away and
//! reconnects, and its HELLO at version 0 brings the full list). It reads no clock and does
//! no I/O: the device notes when versions apply in its [`HotlistReport`].
//!
//! Also here: which cards a scenario's `[hotlist]` table blacklists ([`plant`],
//! [`Plantings`]) and the CSV file the gateway's `blacklist import` reads
//! ([`write_import_csv`]).

use crate::plan::PlannedEvent;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::AtomicI64;
use std::sync::atomic::Ordering::Relaxed;
use wenxiao_protocol::{CardNo, DeviceKind, HotlistUpdate, HotlistVersion, TxnKind};

/// Most cards a terminal holds or stages. A terminal keeps its list in a fixed memory
/// area; an update past this is a gateway fault, and the device resyncs rather than grow
/// without bound. 2,000,000 card numbers are 16 MB of one device's staged update.
pub const HOTLIST_CARDS_MAX: usize = 2_000_000;
/// Applied versions (and full-list downloads) one device keeps for the report; later ones
/// are only counted. A run makes a few versions; thousands mean the gateway loops.
pub const HOTLIST_RECORDS_KEPT_MAX: usize = 4_096;
/// Session spans one device keeps (the most recent) to say whether it was online when a
/// version appeared.
pub const SESSION_SPANS_KEPT_MAX: usize = 1_024;

/// The version a device holds before any list, and the base of a full list.
const NONE: HotlistVersion = HotlistVersion(0);

/// Whether a device of this kind keeps a hot list (OTA endpoints get none).
pub fn screens_cards(kind: DeviceKind) -> bool {
    matches!(
        kind,
        DeviceKind::Pos | DeviceKind::Kiosk | DeviceKind::SigninReader
    )
}

/// Whether a device of kind `device` checks the hot list before it makes a TXN of kind
/// `txn`: POS terminals and kiosks before a PURCHASE, sign-in readers before a SIGN_IN.
pub fn screened(device: DeviceKind, txn: TxnKind) -> bool {
    matches!(
        (device, txn),
        (DeviceKind::Pos | DeviceKind::Kiosk, TxnKind::Purchase)
            | (DeviceKind::SigninReader, TxnKind::SignIn)
    )
}

/// Why an update could not apply (the device then drops its list and resyncs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResyncReason {
    /// The update's version is not newer than the version held.
    NotNewer {
        /// The version the device holds.
        held: HotlistVersion,
        /// The update's.
        version: HotlistVersion,
    },
    /// A delta whose base is not the version held (a gap, or another device's state).
    WrongBase {
        /// The version the device holds.
        held: HotlistVersion,
        /// The delta's base.
        base: HotlistVersion,
    },
    /// A chunk of another version or base before the last chunk of the update in progress.
    ChunkOfAnotherUpdate {
        /// The update in progress.
        update: HotlistVersion,
        /// Its base.
        update_base: HotlistVersion,
        /// The chunk's version.
        chunk: HotlistVersion,
        /// The chunk's base.
        chunk_base: HotlistVersion,
    },
    /// The update would make the list longer than [`HOTLIST_CARDS_MAX`].
    TooLarge {
        /// Cards staged or held.
        cards: usize,
    },
}

impl ResyncReason {
    /// A short stable name (report keys).
    pub const fn name(self) -> &'static str {
        match self {
            Self::NotNewer { .. } => "not_newer",
            Self::WrongBase { .. } => "wrong_base",
            Self::ChunkOfAnotherUpdate { .. } => "chunk_of_another_update",
            Self::TooLarge { .. } => "too_large",
        }
    }
}

impl fmt::Display for ResyncReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotNewer { held, version } => {
                write!(f, "update to version {version}, not newer than {held} held")
            }
            Self::WrongBase { held, base } => {
                write!(f, "delta from version {base}, but {held} is held")
            }
            Self::ChunkOfAnotherUpdate {
                update,
                update_base,
                chunk,
                chunk_base,
            } => write!(
                f,
                "chunk of version {chunk} (base {chunk_base}) before the last chunk of version {update} (base {update_base})"
            ),
            Self::TooLarge { cards } => {
                write!(f, "{cards} cards exceed the limit of {HOTLIST_CARDS_MAX}")
            }
        }
    }
}

/// What one chunk did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// More chunks of this update follow.
    Partial,
    /// The update's last chunk: the list is at this version now; acknowledge it.
    Complete(HotlistVersion),
    /// The update cannot apply: the list is cleared, the version is 0, and the device
    /// reconnects so that the gateway sends the full list.
    Resync(ResyncReason),
}

/// An update being received, applied only on its last chunk.
#[derive(Debug)]
enum Staged {
    /// A full list: a new set, which replaces the list.
    Full {
        version: HotlistVersion,
        cards: HashSet<u64>,
    },
    /// Changes from `base`: every remove, then every add, of all the chunks.
    Delta {
        version: HotlistVersion,
        base: HotlistVersion,
        adds: Vec<u64>,
        removes: Vec<u64>,
    },
}

impl Staged {
    /// (version, base) every chunk of this update must carry.
    fn ids(&self) -> (HotlistVersion, HotlistVersion) {
        match self {
            Self::Full { version, .. } => (*version, NONE),
            Self::Delta { version, base, .. } => (*version, *base),
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Full { cards, .. } => cards.len(),
            Self::Delta { adds, removes, .. } => adds.len().saturating_add(removes.len()),
        }
    }
}

/// A terminal's hot list: the cards it refuses and their version (0: none yet), and the
/// update being received.
#[derive(Debug, Default)]
pub struct HotlistState {
    version: HotlistVersion,
    cards: HashSet<u64>,
    staged: Option<Staged>,
}

impl HotlistState {
    /// No list, version 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The version held (what HELLO says).
    pub fn version(&self) -> HotlistVersion {
        self.version
    }

    /// Cards on the list.
    pub fn len(&self) -> usize {
        self.cards.len()
    }

    /// True when no card is listed.
    pub fn is_empty(&self) -> bool {
        self.cards.is_empty()
    }

    /// Whether the card is listed.
    pub fn contains(&self, card: CardNo) -> bool {
        self.cards.contains(&card.get())
    }

    /// Whether every one of `cards` is listed (false for none).
    pub fn contains_all(&self, cards: &[CardNo]) -> bool {
        !cards.is_empty() && cards.iter().all(|c| self.contains(*c))
    }

    /// True between an update's first chunk and its last.
    pub fn in_update(&self) -> bool {
        self.staged.is_some()
    }

    /// Forgets an update whose last chunk never came (the connection ended): the list and
    /// version stay, and the next session's gateway sends the update again from there.
    pub fn abandon_partial(&mut self) {
        self.staged = None;
    }

    /// Takes one chunk. An update is applied only on its last chunk; until then the list
    /// in force is the old one.
    pub fn apply(&mut self, chunk: &HotlistUpdate) -> Applied {
        match self.stage(chunk) {
            Err(reason) => {
                self.reset();
                Applied::Resync(reason)
            }
            Ok(()) if !chunk.last() => Applied::Partial,
            Ok(()) => match self.commit() {
                Ok(version) => Applied::Complete(version),
                Err(reason) => {
                    self.reset();
                    Applied::Resync(reason)
                }
            },
        }
    }

    /// Checks the chunk against the update in progress (or opens one) and stages its cards.
    fn stage(&mut self, chunk: &HotlistUpdate) -> Result<(), ResyncReason> {
        let ids = (chunk.version(), chunk.base_version());
        let mut staged = match self.staged.take() {
            Some(s) if s.ids() == ids => s,
            Some(s) => {
                let (update, update_base) = s.ids();
                return Err(ResyncReason::ChunkOfAnotherUpdate {
                    update,
                    update_base,
                    chunk: ids.0,
                    chunk_base: ids.1,
                });
            }
            None => self.open(chunk)?,
        };
        let add = chunk.add().iter().map(|c| c.get());
        let remove = chunk.remove().iter().map(|c| c.get());
        match &mut staged {
            // A full list starts from nothing, so its removes (it should carry none)
            // change nothing.
            Staged::Full { cards, .. } => cards.extend(add),
            Staged::Delta { adds, removes, .. } => {
                adds.extend(add);
                removes.extend(remove);
            }
        }
        if staged.len() > HOTLIST_CARDS_MAX {
            return Err(ResyncReason::TooLarge {
                cards: staged.len(),
            });
        }
        self.staged = Some(staged);
        Ok(())
    }

    /// The first chunk of an update: it must bring a newer version, and a delta must
    /// start from the version held.
    fn open(&self, chunk: &HotlistUpdate) -> Result<Staged, ResyncReason> {
        let (version, base) = (chunk.version(), chunk.base_version());
        if version <= self.version {
            return Err(ResyncReason::NotNewer {
                held: self.version,
                version,
            });
        }
        if base == NONE {
            return Ok(Staged::Full {
                version,
                cards: HashSet::new(),
            });
        }
        if base != self.version {
            return Err(ResyncReason::WrongBase {
                held: self.version,
                base,
            });
        }
        Ok(Staged::Delta {
            version,
            base,
            adds: Vec::new(),
            removes: Vec::new(),
        })
    }

    /// The last chunk came: the staged update becomes the list.
    fn commit(&mut self) -> Result<HotlistVersion, ResyncReason> {
        match self.staged.take() {
            Some(Staged::Full { version, cards }) => {
                self.cards = cards;
                self.version = version;
            }
            Some(Staged::Delta {
                version,
                adds,
                removes,
                ..
            }) => {
                // Removes first: a card both removed and added between the two versions
                // (taken off, then listed again) ends up listed.
                for r in &removes {
                    self.cards.remove(r);
                }
                self.cards.extend(adds);
                if self.cards.len() > HOTLIST_CARDS_MAX {
                    return Err(ResyncReason::TooLarge {
                        cards: self.cards.len(),
                    });
                }
                self.version = version;
            }
            // `stage` has just put the update there; nothing to apply otherwise.
            None => {}
        }
        Ok(self.version)
    }

    /// Drops the list, its version and any staged update.
    fn reset(&mut self) {
        self.version = NONE;
        self.cards = HashSet::new();
        self.staged = None;
    }
}

/// One version a terminal applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppliedVersion {
    /// The version.
    pub version: HotlistVersion,
    /// When its last chunk was applied: ms since the epoch on the simulator's wall clock
    /// (not the accelerated day clock: propagation is a real-time property).
    pub at_ms: i64,
    /// Applied from a full list (else from a delta).
    pub full: bool,
}

/// A full list a terminal downloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FullList {
    /// Its version.
    pub version: HotlistVersion,
    /// Cards on it.
    pub cards: usize,
    /// First chunk read → last chunk applied, µs: the download itself.
    pub download_us: u64,
}

/// What one terminal did with its hot list, for the run report.
#[derive(Debug, Clone, Default)]
pub struct HotlistReport {
    /// Versions applied, in order (the first [`HOTLIST_RECORDS_KEPT_MAX`]).
    pub applied: Vec<AppliedVersion>,
    /// Full lists downloaded (the first [`HOTLIST_RECORDS_KEPT_MAX`]).
    pub full_lists: Vec<FullList>,
    /// Records past the caps, counted only.
    pub records_dropped: u64,
    /// Updates that could not apply, by [`ResyncReason::name`].
    pub resyncs: BTreeMap<&'static str, u64>,
    /// Events refused at the reader whose card the run planted on the list.
    pub refused_planted: u64,
    /// Events refused at the reader for any other listed card.
    pub refused_other: u64,
    /// By planting (see [`Plantings`]): when the list first held all of its cards, at or
    /// after the planting started, ms since the epoch.
    pub planted_listed_ms: Vec<Option<i64>>,
    /// Sessions (WELCOME read, session ended), ms since the epoch; the most recent
    /// [`SESSION_SPANS_KEPT_MAX`].
    pub sessions_ms: VecDeque<(i64, i64)>,
}

impl HotlistReport {
    /// A version applied; `list` is the list now, checked against the plantings made so far.
    pub fn note_applied(&mut self, a: AppliedVersion, list: &HotlistState, plantings: &Plantings) {
        if self.applied.len() < HOTLIST_RECORDS_KEPT_MAX {
            self.applied.push(a);
        } else {
            self.records_dropped += 1;
        }
        if self.planted_listed_ms.len() < plantings.len() {
            self.planted_listed_ms.resize(plantings.len(), None);
        }
        for (k, seen) in self.planted_listed_ms.iter_mut().enumerate() {
            if seen.is_some() {
                continue;
            }
            let Some(added) = plantings.added_at_ms(k) else {
                continue;
            };
            if a.at_ms >= added && list.contains_all(plantings.cards(k)) {
                *seen = Some(a.at_ms);
            }
        }
    }

    /// A full list downloaded.
    pub fn note_full_list(&mut self, f: FullList) {
        if self.full_lists.len() < HOTLIST_RECORDS_KEPT_MAX {
            self.full_lists.push(f);
        } else {
            self.records_dropped += 1;
        }
    }

    /// An update that could not apply.
    pub fn note_resync(&mut self, reason: ResyncReason) {
        *self.resyncs.entry(reason.name()).or_default() += 1;
    }

    /// An event refused at the reader; `planted`: the run listed its card.
    pub fn note_refusal(&mut self, planted: bool) {
        if planted {
            self.refused_planted += 1;
        } else {
            self.refused_other += 1;
        }
    }

    /// A session from `opened_ms` to `closed_ms`.
    pub fn note_session(&mut self, opened_ms: i64, closed_ms: i64) {
        if self.sessions_ms.len() >= SESSION_SPANS_KEPT_MAX {
            self.sessions_ms.pop_front();
        }
        self.sessions_ms.push_back((opened_ms, closed_ms));
    }

    /// Whether a session was open at `at_ms`.
    pub fn online_at(&self, at_ms: i64) -> bool {
        self.sessions_ms
            .iter()
            .any(|(from, to)| (*from..=*to).contains(&at_ms))
    }

    /// Resyncs of every reason.
    pub fn resync_count(&self) -> u64 {
        self.resyncs.values().sum()
    }
}

/// One planting: cards a run blacklists through the gateway's CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planting {
    /// Real seconds after the day starts.
    pub at_s: u64,
    /// The cards.
    pub cards: Vec<CardNo>,
}

/// The scenario's plantings, shared by a run's devices: which cards are planted (their
/// refusals are expected and counted apart), and when each planting's import started.
#[derive(Debug, Default)]
pub struct Plantings {
    list: Vec<Planting>,
    cards: HashSet<CardNo>,
    /// Ms since the epoch; 0 until the import starts (only in the process that plants).
    added_at_ms: Vec<AtomicI64>,
}

impl Plantings {
    /// The plantings, in time order.
    pub fn new(list: Vec<Planting>) -> Self {
        let cards = list.iter().flat_map(|p| p.cards.iter().copied()).collect();
        let added_at_ms = list.iter().map(|_| AtomicI64::new(0)).collect();
        Self {
            list,
            cards,
            added_at_ms,
        }
    }

    /// The plantings.
    pub fn list(&self) -> &[Planting] {
        &self.list
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// True when the scenario plants nothing.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Planting `k`'s cards (none past the end).
    pub fn cards(&self, k: usize) -> &[CardNo] {
        match self.list.get(k) {
            Some(p) => &p.cards,
            None => &[],
        }
    }

    /// Whether any planting lists the card.
    pub fn is_planted(&self, card: CardNo) -> bool {
        self.cards.contains(&card)
    }

    /// Planting `k`'s import started at `at_ms` (ms since the epoch).
    pub fn mark_added(&self, k: usize, at_ms: i64) {
        if let Some(a) = self.added_at_ms.get(k) {
            a.store(at_ms, Relaxed);
        }
    }

    /// When planting `k`'s import started, once it has.
    pub fn added_at_ms(&self, k: usize) -> Option<i64> {
        let at = self.added_at_ms.get(k)?.load(Relaxed);
        (at != 0).then_some(at)
    }
}

/// Salt of the planting draw, so that it does not repeat the plan's own random sequence.
const PLANT_SEED_SALT: u64 = 0x0068_6f74_6c69_7374; // "hotlist"

/// Chooses each planting's cards, deterministically from `seed`: `cards_per_add` distinct
/// cards (fewer if the plan has fewer) among those with a PURCHASE or SIGN_IN in the played
/// window `[from, to)` ms, preferring cards used at or after the planting's simulated time
/// `at_sim_ms` (so that their refusals show), and never a card an earlier planting chose.
/// Cards of the fraud scenario ([`crate::fraud`]) are left alone: refusing their purchases
/// would undo what it planted.
pub fn plant(
    seed: u64,
    plan: &[PlannedEvent],
    window_ms: (i64, i64),
    at_sim_ms: &[i64],
    cards_per_add: usize,
) -> Vec<Vec<CardNo>> {
    if at_sim_ms.is_empty() || cards_per_add == 0 {
        return at_sim_ms.iter().map(|_| Vec::new()).collect();
    }
    let screened: Vec<&PlannedEvent> = plan
        .iter()
        .filter(|e| {
            matches!(e.kind, TxnKind::Purchase | TxnKind::SignIn)
                && e.at_ms >= window_ms.0
                && e.at_ms < window_ms.1
                && !crate::fraud::is_planted_card(e.card_no)
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(seed ^ PLANT_SEED_SALT);
    let mut taken: HashSet<CardNo> = HashSet::new();
    let mut batches = Vec::with_capacity(at_sim_ms.len());
    for &at in at_sim_ms {
        let free = |later_only: bool| {
            let mut c: Vec<CardNo> = screened
                .iter()
                .filter(|e| !later_only || e.at_ms >= at)
                .map(|e| e.card_no)
                .filter(|c| !taken.contains(c))
                .collect();
            // Sorted, so that the draw does not depend on the plan's order.
            c.sort_unstable();
            c.dedup();
            c
        };
        let mut candidates = free(true);
        if candidates.is_empty() {
            candidates = free(false);
        }
        let n = cards_per_add.min(candidates.len());
        // A partial Fisher–Yates shuffle: the first n are a uniform draw.
        for i in 0..n {
            let j = rng.random_range(i..candidates.len());
            candidates.swap(i, j);
        }
        candidates.truncate(n);
        taken.extend(candidates.iter().copied());
        batches.push(candidates);
    }
    batches
}

/// Writes the file `wenxiao-gateway blacklist import` reads: the header `card_no,reason`,
/// then one row per card with the reason `sim-planted`.
pub fn write_import_csv(w: &mut impl std::io::Write, cards: &[CardNo]) -> std::io::Result<()> {
    writeln!(w, "card_no,reason")?;
    for c in cards {
        writeln!(w, "{c},sim-planted")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wenxiao_protocol::{CardCounter, DeviceId, Fen, Item, Points};

    fn v(n: u32) -> HotlistVersion {
        HotlistVersion(n)
    }

    fn cards(ns: &[u64]) -> Vec<CardNo> {
        ns.iter().map(|n| CardNo(*n)).collect()
    }

    fn chunk(version: u32, base: u32, last: bool, add: &[u64], remove: &[u64]) -> HotlistUpdate {
        HotlistUpdate::new(v(version), v(base), last, cards(add), cards(remove)).unwrap()
    }

    /// A list at `version` holding `held`, reached by a one-chunk full list.
    fn at(version: u32, held: &[u64]) -> HotlistState {
        let mut s = HotlistState::new();
        assert_eq!(
            s.apply(&chunk(version, 0, true, held, &[])),
            Applied::Complete(v(version))
        );
        s
    }

    #[test]
    fn a_full_list_in_three_chunks_replaces_the_list_on_the_last() {
        let mut s = at(2, &[99]);
        assert_eq!(s.apply(&chunk(5, 0, false, &[1, 2], &[])), Applied::Partial);
        assert!(s.in_update());
        // Until the last chunk the old list is in force.
        assert_eq!(s.version(), v(2));
        assert!(s.contains(CardNo(99)) && !s.contains(CardNo(1)));
        assert_eq!(s.apply(&chunk(5, 0, false, &[3], &[])), Applied::Partial);
        assert_eq!(
            s.apply(&chunk(5, 0, true, &[4, 2], &[])),
            Applied::Complete(v(5))
        );
        assert_eq!(s.version(), v(5));
        assert_eq!(s.len(), 4);
        assert!(s.contains_all(&cards(&[1, 2, 3, 4])));
        assert!(!s.contains(CardNo(99)), "a full list replaces, not merges");
        assert!(!s.in_update());
    }

    #[test]
    fn a_delta_from_the_version_held_applies() {
        let mut s = at(3, &[1, 2, 3]);
        assert_eq!(s.apply(&chunk(4, 3, false, &[10], &[])), Applied::Partial);
        assert_eq!(
            s.apply(&chunk(4, 3, true, &[11], &[2])),
            Applied::Complete(v(4))
        );
        assert_eq!(s.version(), v(4));
        assert!(s.contains_all(&cards(&[1, 3, 10, 11])));
        assert!(!s.contains(CardNo(2)));
        // And the next one from there.
        assert_eq!(
            s.apply(&chunk(5, 4, true, &[], &[1])),
            Applied::Complete(v(5))
        );
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn a_delta_from_another_base_resyncs() {
        let mut s = at(3, &[1, 2]);
        assert_eq!(
            s.apply(&chunk(5, 4, true, &[7], &[])),
            Applied::Resync(ResyncReason::WrongBase {
                held: v(3),
                base: v(4)
            })
        );
        assert_eq!(s.version(), v(0));
        assert!(s.is_empty() && !s.in_update());
        // Back at version 0, the full list applies.
        assert_eq!(
            s.apply(&chunk(5, 0, true, &[1, 2, 7], &[])),
            Applied::Complete(v(5))
        );
    }

    #[test]
    fn a_chunk_of_another_version_mid_update_resyncs() {
        let mut s = at(3, &[1]);
        assert_eq!(s.apply(&chunk(4, 3, false, &[2], &[])), Applied::Partial);
        let r = s.apply(&chunk(5, 4, true, &[3], &[]));
        assert_eq!(
            r,
            Applied::Resync(ResyncReason::ChunkOfAnotherUpdate {
                update: v(4),
                update_base: v(3),
                chunk: v(5),
                chunk_base: v(4)
            })
        );
        assert_eq!(s.version(), v(0));
        assert!(s.is_empty() && !s.in_update());
        // A full list of the same version, mid-update, is another update too.
        let mut s = at(3, &[1]);
        assert_eq!(s.apply(&chunk(4, 3, false, &[2], &[])), Applied::Partial);
        assert!(matches!(
            s.apply(&chunk(4, 0, true, &[1, 2], &[])),
            Applied::Resync(ResyncReason::ChunkOfAnotherUpdate { .. })
        ));
    }

    #[test]
    fn a_version_not_newer_resyncs() {
        for (version, base) in [(3, 0), (2, 0), (3, 3), (2, 3)] {
            let mut s = at(3, &[1]);
            assert_eq!(
                s.apply(&chunk(version, base, true, &[2], &[])),
                Applied::Resync(ResyncReason::NotNewer {
                    held: v(3),
                    version: v(version)
                }),
                "version {version} base {base}"
            );
            assert_eq!(s.version(), v(0));
            assert!(s.is_empty());
        }
        // Version 0 is never newer, even for an empty device.
        let mut s = HotlistState::new();
        assert!(matches!(
            s.apply(&chunk(0, 0, true, &[], &[])),
            Applied::Resync(ResyncReason::NotNewer { .. })
        ));
    }

    #[test]
    fn a_delta_removes_then_adds_across_its_chunks() {
        // Card 5 was taken off and listed again between versions 1 and 2: it is in both
        // lists, its add in the first chunk and its remove in the last. It stays listed.
        let mut s = at(1, &[5, 6]);
        assert_eq!(s.apply(&chunk(2, 1, false, &[5, 7], &[])), Applied::Partial);
        assert_eq!(
            s.apply(&chunk(2, 1, true, &[], &[5, 6])),
            Applied::Complete(v(2))
        );
        assert!(s.contains(CardNo(5)) && s.contains(CardNo(7)));
        assert!(!s.contains(CardNo(6)));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn an_abandoned_update_leaves_the_list_and_may_start_again() {
        let mut s = at(1, &[5]);
        assert_eq!(s.apply(&chunk(2, 1, false, &[6], &[])), Applied::Partial);
        s.abandon_partial();
        assert_eq!(s.version(), v(1));
        assert!(s.contains(CardNo(5)) && !s.contains(CardNo(6)));
        assert_eq!(
            s.apply(&chunk(2, 1, true, &[6], &[])),
            Applied::Complete(v(2))
        );
    }

    #[test]
    fn only_terminals_screen_and_only_purchases_and_sign_ins() {
        assert!(screened(DeviceKind::Pos, TxnKind::Purchase));
        assert!(screened(DeviceKind::Kiosk, TxnKind::Purchase));
        assert!(!screened(DeviceKind::Kiosk, TxnKind::TopUp));
        assert!(screened(DeviceKind::SigninReader, TxnKind::SignIn));
        assert!(!screened(DeviceKind::OtaEndpoint, TxnKind::Purchase));
        assert!(!screens_cards(DeviceKind::OtaEndpoint));
    }

    fn event(at_ms: i64, kind: TxnKind, card: u64) -> PlannedEvent {
        PlannedEvent {
            at_ms,
            device_id: DeviceId(1),
            kind,
            card_no: CardNo(card),
            amount_fen: Fen(100),
            list_price_fen: Fen(0),
            item: Item::None,
            points: Points(0),
            card_counter: CardCounter(1),
        }
    }

    #[test]
    fn plantings_are_deterministic_distinct_and_prefer_later_cards() {
        let plan: Vec<PlannedEvent> = (0..100)
            .map(|i| {
                let kind = if i % 10 == 0 {
                    TxnKind::TopUp
                } else {
                    TxnKind::Purchase
                };
                event(i * 1_000, kind, 1_000 + u64::try_from(i).unwrap())
            })
            .collect();
        let a = plant(7, &plan, (0, 100_000), &[50_000, 60_000], 5);
        assert_eq!(a, plant(7, &plan, (0, 100_000), &[50_000, 60_000], 5));
        assert_ne!(a, plant(8, &plan, (0, 100_000), &[50_000, 60_000], 5));
        assert_eq!(a.len(), 2);
        let all: HashSet<CardNo> = a.iter().flatten().copied().collect();
        assert_eq!(all.len(), 10, "distinct across plantings: {a:?}");
        for c in &a[0] {
            let n = c.get() - 1_000;
            assert!(n >= 50 && n % 10 != 0, "{c}: used after 50 s, not a top-up");
        }
        // More wanted than there are: all there are.
        let few = plant(1, &plan[..3], (0, 100_000), &[0], 10);
        assert_eq!(few[0].len(), 2);
        assert!(plant(1, &plan, (0, 1), &[0], 0)[0].is_empty());
    }

    #[test]
    fn plantings_mark_when_their_cards_are_listed() {
        let p = Plantings::new(vec![
            Planting {
                at_s: 1,
                cards: cards(&[1, 2]),
            },
            Planting {
                at_s: 2,
                cards: cards(&[3]),
            },
        ]);
        assert!(p.is_planted(CardNo(3)) && !p.is_planted(CardNo(4)));
        let mut r = HotlistReport::default();
        let list = at(1, &[1, 2, 3]);
        let applied = |at_ms| AppliedVersion {
            version: v(1),
            at_ms,
            full: true,
        };
        // Listed before any import started: not a propagation.
        r.note_applied(applied(500), &list, &p);
        assert_eq!(r.planted_listed_ms, vec![None, None]);
        p.mark_added(0, 1_000);
        r.note_applied(applied(1_200), &list, &p);
        r.note_applied(applied(1_300), &list, &p);
        assert_eq!(r.planted_listed_ms, vec![Some(1_200), None]);
        r.note_session(1_000, 2_000);
        assert!(r.online_at(1_500) && !r.online_at(2_500));
        r.note_refusal(true);
        r.note_refusal(false);
        assert_eq!((r.refused_planted, r.refused_other), (1, 1));
    }

    #[test]
    fn the_import_file_has_its_header_and_reason() {
        let mut out = Vec::new();
        write_import_csv(&mut out, &cards(&[31, 42])).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "card_no,reason\n31,sim-planted\n42,sim-planted\n"
        );
    }
}
