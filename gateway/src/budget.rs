//! The budget's arithmetic: pure functions over shard rows (shard, cap, granted) and a
//! batch's wants. The ledger (`store/ledger/budget.rs`) locks the rows and applies them.
//! Every shard keeps `granted ≤ cap` and the caps of a budget keep their sum, so the fast
//! path — a shard granting within its own cap — never overspends.

/// Shares `granted` among `wants` in order: each row gets what it wants while the grant
/// lasts, so at exhaustion earlier receipts are served first and one row may be cut.
pub fn distribute(wants: &[(usize, i64)], mut granted: i64) -> Vec<(usize, i64)> {
    wants
        .iter()
        .map(|&(i, want)| {
            let g = want.min(granted).max(0);
            granted -= g;
            (i, g)
        })
        .collect()
}

/// The slow path of a budget grant, over every shard of one budget (locked): moves
/// unused cap from other shards to `own` until `want` fits or nothing is left, and grants.
/// Every shard keeps `granted ≤ cap` and the caps keep their sum (the budget's cap), so
/// the fast path — a shard granting within its own cap — can never overspend.
/// `shards` holds (shard, cap, granted); returns the grant and the shards whose cap
/// changed, with their new cap.
pub fn rebalance(shards: &[(i32, i64, i64)], own: i32, want: i64) -> (i64, Vec<(i32, i64)>) {
    let own_room = shards
        .iter()
        .find(|s| s.0 == own)
        .map_or(0, |s| (s.1 - s.2).max(0));
    let mut need = (want - own_room).max(0);
    let mut moved = 0;
    let mut new_caps = Vec::new();
    for &(shard, cap, granted) in shards {
        if need == 0 {
            break;
        }
        if shard == own {
            continue;
        }
        let take = need.min((cap - granted).max(0));
        if take > 0 {
            new_caps.push((shard, cap - take));
            need -= take;
            moved += take;
        }
    }
    if moved > 0
        && let Some(&(_, cap, _)) = shards.iter().find(|s| s.0 == own)
    {
        new_caps.push((own, cap + moved));
    }
    (want.min(own_room + moved), new_caps)
}

/// New shard caps for a budget whose cap is now `cap`: the caps keep `granted ≤ cap` per
/// shard and sum to `cap`, or — when more than `cap` was granted already — to what was
/// granted, so nothing more is granted. A raise goes to shard 0; a cut comes out of the
/// shards' unused room in shard order. `shards` holds (shard, cap, granted); returns the
/// shards whose cap changes, with their new cap.
pub fn recap(shards: &[(i32, i64, i64)], cap: i64) -> Vec<(i32, i64)> {
    let total_cap: i64 = shards.iter().map(|s| s.1).sum();
    let granted: i64 = shards.iter().map(|s| s.2).sum();
    let target = cap.max(granted);
    let mut changed = Vec::new();
    if target > total_cap {
        if let Some(&(s, c, _)) = shards.first() {
            changed.push((s, c + target - total_cap));
        }
    } else {
        let mut cut = total_cap - target;
        for &(s, c, g) in shards {
            let take = cut.min((c - g).max(0));
            if take > 0 {
                changed.push((s, c - take));
                cut -= take;
            }
        }
    }
    changed
}

/// Month grants after the programme's: when the programme granted less than the months
/// together, the shortfall comes off the latest months first.
pub fn cut_to_programme(
    month_grants: &mut [(i32, i64)],
    programme_granted: i64,
) -> Vec<(i32, i64)> {
    let total: i64 = month_grants.iter().map(|m| m.1).sum();
    let mut short = total - programme_granted;
    let mut given_back = Vec::new();
    for (month, g) in month_grants.iter_mut().rev() {
        if short <= 0 {
            break;
        }
        let cut = short.min(*g);
        *g -= cut;
        short -= cut;
        given_back.push((*month, cut));
    }
    given_back
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_new_cap_keeps_every_shard_within_it_and_sums_to_it_or_to_what_was_granted(
            rows in proptest::collection::vec((0i64..1_000, 0i64..1_000), 8),
            cap in 0i64..10_000,
        ) {
            let shards: Vec<(i32, i64, i64)> = rows
                .iter()
                .enumerate()
                .map(|(i, &(c, g))| (i32::try_from(i).unwrap(), c, g.min(c)))
                .collect();
            let mut after = shards.clone();
            for (s, c) in recap(&shards, cap) {
                if let Some(x) = after.iter_mut().find(|x| x.0 == s) {
                    x.1 = c;
                }
            }
            let granted: i64 = shards.iter().map(|s| s.2).sum();
            prop_assert!(after.iter().all(|s| s.2 <= s.1), "{:?}", after);
            prop_assert_eq!(after.iter().map(|s| s.1).sum::<i64>(), cap.max(granted));
        }

        #[test]
        fn rebalancing_keeps_every_shard_within_its_cap(
            rows in proptest::collection::vec((0i64..1_000, 0i64..1_000), 8),
            own in 0i32..8,
            want in 0i64..5_000,
        ) {
            let shards: Vec<(i32, i64, i64)> = rows
                .iter()
                .enumerate()
                .map(|(i, &(cap, g))| (i32::try_from(i).unwrap(), cap, g.min(cap)))
                .collect();
            let room: i64 = shards.iter().map(|s| s.1 - s.2).sum();
            let (granted, new_caps) = rebalance(&shards, own, want);
            prop_assert!(granted >= 0 && granted <= want && granted <= room);
            let mut after = shards.clone();
            for (s, cap) in new_caps {
                if let Some(x) = after.iter_mut().find(|x| x.0 == s) {
                    x.1 = cap;
                }
            }
            if let Some(x) = after.iter_mut().find(|x| x.0 == own) {
                x.2 += granted;
            }
            let caps_before: i64 = shards.iter().map(|s| s.1).sum();
            let caps_after: i64 = after.iter().map(|s| s.1).sum();
            prop_assert_eq!(caps_before, caps_after);
            prop_assert!(after.iter().all(|s| s.2 <= s.1), "{:?}", after);
            // Nothing is refused while any shard has room for it.
            prop_assert_eq!(granted, want.min(room));
        }
    }
}
