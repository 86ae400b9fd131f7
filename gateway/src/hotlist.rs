//! The hot list as a node holds it: the current version's cards and the kept versions'
//! changes, shared by every session, and what a terminal at some version is sent.
//!
//! A node keeps one [`HotlistView`] (replaced whole when a new version arrives), so the
//! 19,000 sessions that need the same delta after a change compute it once, and a full
//! list is one shared sorted vector that each session walks with its own offset.

use crate::store::{HotlistHead, HotlistVersionChanges};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use wenxiao_protocol::{CardNo, HotlistUpdate, HotlistVersion};

/// The cards of one update: what a terminal adds and removes to reach `version`.
#[derive(Debug, Clone)]
pub struct UpdateCards {
    /// The version the update brings the terminal to.
    pub version: u32,
    /// The version it applies to; 0 for the full list.
    pub base_version: u32,
    /// When `version` was made (for the acknowledgement latency).
    pub created_at_ms: i64,
    /// Cards to add, ascending.
    pub add: Arc<Vec<CardNo>>,
    /// Cards to remove, ascending.
    pub remove: Arc<Vec<CardNo>>,
    /// The chunks as encoded frames, built once at the first size asked for and shared
    /// by every session sending this update.
    frames: std::sync::OnceLock<(usize, Arc<[bytes::Bytes]>)>,
}

impl PartialEq for UpdateCards {
    fn eq(&self, other: &Self) -> bool {
        (
            self.version,
            self.base_version,
            self.created_at_ms,
            &self.add,
            &self.remove,
        ) == (
            other.version,
            other.base_version,
            other.created_at_ms,
            &other.add,
            &other.remove,
        )
    }
}

impl Eq for UpdateCards {}

impl UpdateCards {
    /// Cards in the update.
    pub fn len(&self) -> usize {
        self.add.len() + self.remove.len()
    }

    /// True when it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Chunks the update needs at `cards_per_chunk` (at least one, even when empty).
    pub fn chunk_count(&self, cards_per_chunk: usize) -> usize {
        self.len().div_ceil(cards_per_chunk.max(1)).max(1)
    }

    /// Chunk `i` as an encoded HOTLIST_UPDATE frame. The frames are encoded once per
    /// update (for the first `cards_per_chunk` asked; another size is encoded afresh).
    pub fn frame(&self, i: usize, cards_per_chunk: usize) -> Option<bytes::Bytes> {
        let (per, frames) = self.frames.get_or_init(|| {
            let frames: Vec<bytes::Bytes> = (0..self.chunk_count(cards_per_chunk))
                .filter_map(|i| self.chunk(i, cards_per_chunk))
                .map(encode)
                .collect();
            (cards_per_chunk, frames.into())
        });
        if *per == cards_per_chunk {
            return frames.get(i).cloned();
        }
        self.chunk(i, cards_per_chunk).map(encode)
    }

    /// Chunk `i` of [`UpdateCards::chunk_count`]: adds first, then removes, in order;
    /// `last` on the final one. `None` past the end.
    pub fn chunk(&self, i: usize, cards_per_chunk: usize) -> Option<HotlistUpdate> {
        let per = cards_per_chunk.clamp(1, wenxiao_protocol::limits::HOTLIST_CARDS_PER_FRAME_MAX);
        let count = self.chunk_count(per);
        if i >= count {
            return None;
        }
        let from = i * per;
        let to = (from + per).min(self.len());
        let adds = self.add.len();
        let add = self.add.get(from.min(adds)..to.min(adds)).unwrap_or(&[]);
        let remove = self
            .remove
            .get(from.saturating_sub(adds)..to.saturating_sub(adds))
            .unwrap_or(&[]);
        HotlistUpdate::new(
            HotlistVersion(self.version),
            HotlistVersion(self.base_version),
            i + 1 == count,
            add.to_vec(),
            remove.to_vec(),
        )
        .ok()
    }
}

/// A chunk as its frame.
fn encode(chunk: HotlistUpdate) -> bytes::Bytes {
    let mut buf = bytes::BytesMut::new();
    wenxiao_protocol::Message::HotlistUpdate(chunk).encode(&mut buf);
    buf.freeze()
}

/// One node's copy of the hot list at one version.
#[derive(Debug, Default)]
pub struct HotlistView {
    head: HotlistHead,
    /// The listed cards, ascending.
    cards: Arc<Vec<CardNo>>,
    /// The kept versions' changes, by version (those above `head.delta_floor`).
    changes: BTreeMap<u32, HotlistVersionChanges>,
    /// Deltas already built, by base version.
    deltas: Mutex<HashMap<u32, Arc<UpdateCards>>>,
    /// The full list as an update, built once and shared (with its encoded frames) by
    /// every session that sends it.
    full_update: std::sync::OnceLock<Arc<UpdateCards>>,
}

/// Most deltas a view keeps built (one per base version asked for); past it they are
/// built again when asked.
pub const DELTAS_CACHED_MAX: usize = 64;

impl HotlistView {
    /// The view of a full read.
    pub fn full(head: HotlistHead, mut cards: Vec<CardNo>) -> Self {
        cards.sort_unstable();
        cards.dedup();
        Self {
            head,
            cards: Arc::new(cards),
            changes: BTreeMap::new(),
            deltas: Mutex::new(HashMap::new()),
            full_update: std::sync::OnceLock::new(),
        }
    }

    /// The view of a full read with the kept versions' changes (those after
    /// `changes_after`), so a terminal behind gets a delta from a node that just started.
    /// Changes that do not end at the head's version are left out.
    pub fn full_with_changes(
        head: HotlistHead,
        cards: Vec<CardNo>,
        changes: Vec<HotlistVersionChanges>,
    ) -> Self {
        let mut view = Self::full(head, cards);
        let consecutive = changes
            .windows(2)
            .all(|w| w.first().map(|a| a.version + 1) == w.get(1).map(|b| b.version));
        if consecutive && changes.last().is_some_and(|v| v.version == head.version) {
            let floor = changes.first().map_or(head.version, |v| v.version - 1);
            view.head.delta_floor = view.head.delta_floor.max(floor);
            view.changes = changes.into_iter().map(|v| (v.version, v)).collect();
        }
        view
    }

    /// The next view: this one with the changes of the following versions applied (they
    /// must start at `self.version() + 1` and be consecutive), keeping `keep` versions'
    /// changes for deltas.
    pub fn advanced(
        &self,
        head: HotlistHead,
        next: Vec<HotlistVersionChanges>,
        keep: u32,
    ) -> Option<Self> {
        let mut expect = self.head.version;
        for v in &next {
            expect = expect.checked_add(1)?;
            if v.version != expect {
                return None;
            }
        }
        if expect != head.version {
            return None;
        }
        let mut listed: std::collections::BTreeSet<CardNo> = self.cards.iter().copied().collect();
        let mut changes = self.changes.clone();
        for v in next {
            for (card, on) in &v.changes {
                if *on {
                    listed.insert(*card);
                } else {
                    listed.remove(card);
                }
            }
            changes.insert(v.version, v);
        }
        let floor = head.version.saturating_sub(keep).max(head.delta_floor);
        changes.retain(|v, _| *v > floor);
        Some(Self {
            head: HotlistHead {
                delta_floor: floor,
                ..head
            },
            cards: Arc::new(listed.into_iter().collect()),
            changes,
            deltas: Mutex::new(HashMap::new()),
            full_update: std::sync::OnceLock::new(),
        })
    }

    /// The current version.
    pub fn version(&self) -> u32 {
        self.head.version
    }

    /// When the current version was made.
    pub fn created_at_ms(&self) -> i64 {
        self.head.created_at_ms
    }

    /// When `version` was made, if this view knows it.
    pub fn version_created_at_ms(&self, version: u32) -> Option<i64> {
        if version == self.head.version {
            return Some(self.head.created_at_ms);
        }
        self.changes.get(&version).map(|v| v.created_at_ms)
    }

    /// Cards listed.
    pub fn len(&self) -> usize {
        self.cards.len()
    }

    /// True when no card is listed.
    pub fn is_empty(&self) -> bool {
        self.cards.is_empty()
    }

    /// Whether `card` is listed.
    pub fn contains(&self, card: CardNo) -> bool {
        self.cards.binary_search(&card).is_ok()
    }

    /// What a terminal at `device_version` is sent: nothing when it is current; a delta
    /// from its version when the view keeps every change since and the delta is no
    /// larger than the list; else the full list. A version ahead of the current one (a
    /// terminal from another deployment, or a store restored from backup) gets the full
    /// list.
    pub fn update_for(&self, device_version: u32) -> Option<Arc<UpdateCards>> {
        let current = self.head.version;
        if device_version == current {
            return None;
        }
        if device_version != 0
            && device_version < current
            && device_version >= self.head.delta_floor
            && (device_version + 1..=current).all(|v| self.changes.contains_key(&v))
        {
            if let Some(d) = self.cached_delta(device_version) {
                return Some(d);
            }
            let delta = self.delta(device_version);
            if delta.len() <= self.cards.len() {
                let delta = Arc::new(delta);
                if let Ok(mut cache) = self.deltas.lock()
                    && cache.len() < DELTAS_CACHED_MAX
                {
                    cache.insert(device_version, Arc::clone(&delta));
                }
                return Some(delta);
            }
        }
        Some(Arc::clone(self.full_update.get_or_init(|| {
            Arc::new(UpdateCards {
                version: current,
                base_version: 0,
                created_at_ms: self.head.created_at_ms,
                add: Arc::clone(&self.cards),
                remove: Arc::new(Vec::new()),
                frames: std::sync::OnceLock::new(),
            })
        })))
    }

    fn cached_delta(&self, base: u32) -> Option<Arc<UpdateCards>> {
        self.deltas.lock().ok()?.get(&base).cloned()
    }

    /// The net change from `base` to the current version: each card's last state.
    fn delta(&self, base: u32) -> UpdateCards {
        let mut last: BTreeMap<CardNo, bool> = BTreeMap::new();
        for (_, v) in self.changes.range(base + 1..) {
            for (card, on) in &v.changes {
                last.insert(*card, *on);
            }
        }
        let (add, remove): (Vec<_>, Vec<_>) = last.into_iter().partition(|(_, on)| *on);
        UpdateCards {
            version: self.head.version,
            base_version: base,
            created_at_ms: self.head.created_at_ms,
            add: Arc::new(add.into_iter().map(|(c, _)| c).collect()),
            remove: Arc::new(remove.into_iter().map(|(c, _)| c).collect()),
            frames: std::sync::OnceLock::new(),
        }
    }
}

/// How far behind the current version a terminal is, as the label of the
/// `wenxiao_hotlist_devices_behind` gauge.
pub fn behind_band(behind: u32) -> &'static str {
    match behind {
        0 => "0",
        1 => "1",
        2..=9 => "2-9",
        10..=99 => "10-99",
        _ => "100+",
    }
}

/// Every label [`behind_band`] gives.
pub const BEHIND_BANDS: [&str; 5] = ["0", "1", "2-9", "10-99", "100+"];

/// Most cards one import may list.
pub const IMPORT_CARDS_MAX: usize = 1_000_000;
/// Longest reason, in bytes.
pub const REASON_BYTES_MAX: usize = 1_024;

/// A card number fit for the list (not 0).
pub fn check_card(card: u64) -> Result<CardNo, String> {
    if card == 0 {
        return Err("card number 0 is not a card".to_owned());
    }
    Ok(CardNo(card))
}

/// A reason fit for the record: not blank, at most [`REASON_BYTES_MAX`] bytes.
pub fn check_reason(reason: &str) -> Result<String, String> {
    let r = reason.trim();
    if r.is_empty() {
        return Err("a blacklisting needs its reason".to_owned());
    }
    if r.len() > REASON_BYTES_MAX {
        return Err(format!(
            "reason is {} bytes, at most {REASON_BYTES_MAX}",
            r.len()
        ));
    }
    Ok(r.to_owned())
}

/// Parses a bulk import: CSV with the header `card_no,reason`, one card per line. Every
/// line is checked; the first bad one is the error, naming its line, so that an import is
/// all or nothing. A card twice is an error too (which reason would stand?).
pub fn parse_import(text: &[u8]) -> Result<Vec<(CardNo, String)>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(text);
    let headers = reader
        .headers()
        .map_err(|e| format!("header: {e}"))?
        .clone();
    if headers.iter().collect::<Vec<_>>() != ["card_no", "reason"] {
        return Err(format!(
            "line 1: the header must be `card_no,reason`, not `{}`",
            headers.iter().collect::<Vec<_>>().join(",")
        ));
    }
    let mut cards = Vec::new();
    let mut lines: HashMap<CardNo, u64> = HashMap::new();
    for record in reader.records() {
        let record = record.map_err(|e| e.to_string())?;
        let line = record.position().map_or(0, csv::Position::line);
        let (Some(card), Some(reason), None) = (record.get(0), record.get(1), record.get(2)) else {
            return Err(format!(
                "line {line}: expected two fields, card_no and reason"
            ));
        };
        let card = card
            .parse::<u64>()
            .map_err(|e| format!("line {line}: card_no `{card}`: {e}"))
            .and_then(|c| check_card(c).map_err(|e| format!("line {line}: {e}")))?;
        let reason = check_reason(reason).map_err(|e| format!("line {line}: {e}"))?;
        if let Some(first) = lines.insert(card, line) {
            return Err(format!(
                "line {line}: card {} is on line {first} already",
                card.get()
            ));
        }
        if cards.len() == IMPORT_CARDS_MAX {
            return Err(format!("line {line}: more than {IMPORT_CARDS_MAX} cards"));
        }
        cards.push((card, reason));
    }
    Ok(cards)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(version: u32) -> HotlistHead {
        HotlistHead {
            version,
            created_at_ms: i64::from(version) * 1000,
            delta_floor: 0,
        }
    }

    fn changes(version: u32, c: &[(u64, bool)]) -> HotlistVersionChanges {
        HotlistVersionChanges {
            version,
            created_at_ms: i64::from(version) * 1000,
            changes: c.iter().map(|(n, on)| (CardNo(*n), *on)).collect(),
        }
    }

    fn apply(list: &mut std::collections::BTreeSet<u64>, u: &UpdateCards, per: usize) {
        if u.base_version == 0 {
            list.clear();
        }
        let n = u.chunk_count(per);
        for i in 0..n {
            let c = u.chunk(i, per).unwrap();
            // The shared frames are these chunks, at any chunk size asked.
            let mut b = bytes::BytesMut::new();
            wenxiao_protocol::Message::HotlistUpdate(c.clone()).encode(&mut b);
            assert_eq!(u.frame(i, per).unwrap(), b.freeze());
            assert_eq!(c.last(), i + 1 == n);
            assert!(c.add().len() + c.remove().len() <= per);
            for r in c.remove() {
                list.remove(&r.0);
            }
            for a in c.add() {
                list.insert(a.0);
            }
        }
        assert!(u.chunk(n, per).is_none());
        assert!(u.frame(n, per).is_none());
    }

    #[test]
    fn a_terminal_at_any_version_reaches_the_current_list() {
        // Versions 1..=6 of random-looking changes; a terminal at each version (and at 0
        // and ahead) applies what it is sent and holds exactly the current list.
        let steps: Vec<Vec<(u64, bool)>> = vec![
            vec![(5, true), (9, true), (2, true)],
            vec![(9, false)],
            vec![(9, true), (11, true)],
            vec![(5, false), (2, false), (7, true)],
            vec![(100, true)],
            vec![(7, false), (9, false)],
        ];
        let mut views = vec![HotlistView::full(head(0), Vec::new())];
        let mut lists = vec![std::collections::BTreeSet::new()];
        for (i, s) in steps.iter().enumerate() {
            let v = u32::try_from(i + 1).unwrap();
            let next = views
                .last()
                .unwrap()
                .advanced(head(v), vec![changes(v, s)], 1_000)
                .unwrap();
            let mut l = lists.last().unwrap().clone();
            for (c, on) in s {
                if *on {
                    l.insert(*c);
                } else {
                    l.remove(c);
                }
            }
            assert_eq!(
                next.cards.iter().map(|c| c.0).collect::<Vec<_>>(),
                l.iter().copied().collect::<Vec<_>>()
            );
            views.push(next);
            lists.push(l);
        }
        let current = views.last().unwrap();
        assert!(current.update_for(6).is_none());
        for from in (0..=8_u32).filter(|v| *v != 6) {
            let u = current.update_for(from).unwrap_or_else(|| panic!("{from}"));
            assert_eq!(u.version, 6);
            let mut list = lists
                .get(from as usize)
                .cloned()
                .unwrap_or_else(|| [999, 5].into_iter().collect());
            for per in [1, 2, 8190] {
                let mut l = list.clone();
                apply(&mut l, &u, per);
                assert_eq!(l, *lists.last().unwrap(), "from {from}, {per} per chunk");
            }
            if from == 0 || from > 6 {
                assert_eq!(u.base_version, 0, "from {from}");
            }
            apply(&mut list, &u, 3);
        }
        // One version back: a delta of just that version's net change.
        let d = current.update_for(5).unwrap();
        assert_eq!(d.base_version, 5);
        assert!(d.add.is_empty());
        assert_eq!(*d.remove, vec![CardNo(7), CardNo(9)]);
    }

    #[test]
    fn a_view_read_at_start_gives_deltas_from_the_kept_versions() {
        let cards = vec![CardNo(1), CardNo(2), CardNo(3)];
        let kept = vec![
            changes(4, &[(2, true)]),
            changes(5, &[(3, true), (9, false)]),
        ];
        let v = HotlistView::full_with_changes(head(5), cards.clone(), kept);
        let d = v.update_for(4).unwrap();
        assert_eq!((d.base_version, d.add.to_vec()), (4, vec![CardNo(3)]));
        assert_eq!(*d.remove, vec![CardNo(9)]);
        let d = v.update_for(3).unwrap();
        assert_eq!(d.base_version, 3);
        assert_eq!(
            v.update_for(2).unwrap().base_version,
            0,
            "before the kept versions"
        );
        // Changes with a gap, or not up to the head, are not used.
        let gap = vec![changes(3, &[]), changes(5, &[])];
        let v = HotlistView::full_with_changes(head(5), cards, gap);
        assert_eq!(v.update_for(4).unwrap().base_version, 0);
    }

    #[test]
    fn past_the_retention_a_terminal_gets_the_full_list() {
        let mut v = HotlistView::full(head(0), Vec::new());
        for n in 1..=5_u32 {
            v = v
                .advanced(head(n), vec![changes(n, &[(u64::from(n), true)])], 2)
                .unwrap();
        }
        assert_eq!(v.update_for(3).unwrap().base_version, 3);
        assert_eq!(v.update_for(2).unwrap().base_version, 0);
        assert_eq!(v.update_for(2).unwrap().len(), 5);
    }

    #[test]
    fn a_delta_larger_than_the_list_is_sent_as_the_list() {
        let mut v = HotlistView::full(head(0), Vec::new());
        let many: Vec<(u64, bool)> = (1..=10).map(|c| (c, true)).collect();
        v = v.advanced(head(1), vec![changes(1, &many)], 100).unwrap();
        let gone: Vec<(u64, bool)> = (1..=9).map(|c| (c, false)).collect();
        v = v.advanced(head(2), vec![changes(2, &gone)], 100).unwrap();
        let u = v.update_for(1).unwrap();
        assert_eq!(u.base_version, 0);
        assert_eq!(*u.add, vec![CardNo(10)]);
    }

    #[test]
    fn every_terminal_is_sent_the_same_full_list() {
        let v = HotlistView::full(head(2), vec![CardNo(1), CardNo(2)]);
        let (a, b) = (v.update_for(0).unwrap(), v.update_for(0).unwrap());
        assert!(Arc::ptr_eq(&a, &b), "one shared update, frames and all");
    }

    #[test]
    fn an_empty_list_is_one_empty_last_chunk() {
        let v = HotlistView::full(head(3), Vec::new());
        let u = v.update_for(0).unwrap();
        assert_eq!(u.chunk_count(8190), 1);
        let c = u.chunk(0, 8190).unwrap();
        assert!(c.last() && c.add().is_empty() && c.remove().is_empty());
    }

    #[test]
    fn an_import_is_checked_whole_and_names_the_bad_line() {
        let ok = parse_import(b"card_no,reason\n5,report 17\n 9 , fraud ring \n").unwrap();
        assert_eq!(
            ok,
            vec![
                (CardNo(5), "report 17".to_owned()),
                (CardNo(9), "fraud ring".to_owned())
            ]
        );
        assert!(parse_import(b"card_no,reason\n").unwrap().is_empty());
        let bad: [(&[u8], &str); 6] = [
            (b"card,why\n1,x\n", "line 1"),
            (b"card_no,reason\n1,x\nabc,y\n", "line 3: card_no `abc`"),
            (b"card_no,reason\n1,x\n0,y\n", "line 3: card number 0"),
            (
                b"card_no,reason\n1,x\n2, \n",
                "line 3: a blacklisting needs its reason",
            ),
            (
                b"card_no,reason\n1,x\n2,y\n1,z\n",
                "line 4: card 1 is on line 2",
            ),
            (b"card_no,reason\n1,x,extra\n", "line 2"),
        ];
        for (text, want) in bad {
            let e = parse_import(text).unwrap_err();
            assert!(e.contains(want), "{e:?} should contain {want:?}");
        }
        let long = format!("card_no,reason\n1,{}\n", "x".repeat(REASON_BYTES_MAX + 1));
        assert!(
            parse_import(long.as_bytes())
                .unwrap_err()
                .contains("line 2")
        );
    }

    #[test]
    fn changes_out_of_sequence_are_refused() {
        let v = HotlistView::full(head(1), vec![CardNo(1)]);
        assert!(v.advanced(head(3), vec![changes(3, &[])], 10).is_none());
        assert!(
            v.advanced(head(3), vec![changes(2, &[]), changes(3, &[])], 10)
                .is_some()
        );
        assert!(v.advanced(head(4), vec![changes(2, &[])], 10).is_none());
    }
}
