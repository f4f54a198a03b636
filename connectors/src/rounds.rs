//! Which changes of a batch a replica must write, and in what order, so that each change
//! writes only the fields it carries.
//!
//! Event types of one topic carry different fields: `UserCreated` has `balance`,
//! `UserUpdated` does not. A change writes the fields it carries and leaves the others as
//! the replica holds them, whatever else shares its batch. So a key's newest change alone
//! does not decide its state: an insert with `balance` followed, in the same batch, by an
//! update without it leaves the insert's `balance`. Per key, in version order:
//! - a delete makes every change before it moot (the row goes, and its tombstone outranks
//!   them);
//! - an upsert makes moot every earlier upsert (after the last delete) whose fields it
//!   carries too: it writes all of them again.
//!
//! What is left of each key is written in [`Round`]s: the first change left of every key,
//! then the second, and so on, each round after the one before in the same transaction.
//! Most batches are one round (one change left per key). The stale guard (`lsn`, `seq`)
//! still judges each write on its own, so a replayed batch changes nothing.
//!
//! Within a round, upserts are written in groups that carry the same fields
//! ([`by_fields`]): one statement each, whose columns are exactly those fields.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use crate::sink::{Change, Op, Value, Version};
use crate::table::{Key, KeyHasher};

/// At most one change per key: the upserts and the deletes to write together.
#[derive(Debug, Default)]
pub struct Round<'c> {
    /// Upserts, each of a different key.
    pub upserts: Vec<&'c Change>,
    /// Deletes, each of a key no upsert of the round has.
    pub deletes: Vec<&'c Change>,
}

/// One key's changes, in version order; most keys have one.
enum Chain<'c> {
    One(&'c Change),
    Many(Vec<&'c Change>),
}

/// The changes above `floor` (the replica's last truncate) that a replica must write, per
/// key in version order, as [`Round`]s (see the module doc). Truncates are left out
/// ([`crate::table::newest_truncate`] finds them); of changes with equal versions, the
/// first stays. `kept` says which fields the replica keeps: an earlier upsert is moot when
/// a later one carries every kept field it carries.
pub fn rounds<'c>(
    changes: &'c [Change],
    floor: Version,
    kept: impl Fn(&str) -> bool,
) -> Vec<Round<'c>> {
    let mut chains: HashMap<Key<'_>, Chain<'c>, BuildHasherDefault<KeyHasher>> =
        HashMap::with_capacity_and_hasher(changes.len(), Default::default());
    for c in changes {
        if c.version <= floor || matches!(c.op, Op::Truncate) {
            continue;
        }
        match chains.entry(Key(&c.key)) {
            Entry::Vacant(slot) => {
                slot.insert(Chain::One(c));
            }
            Entry::Occupied(mut seen) => {
                let chain = seen.get_mut();
                if let Chain::One(first) = *chain {
                    *chain = Chain::Many(vec![first]);
                }
                if let Chain::Many(all) = chain {
                    all.push(c);
                }
            }
        }
    }
    let mut out: Vec<Round<'c>> = vec![Round::default()];
    for chain in chains.into_values() {
        match chain {
            Chain::One(c) => push(&mut out[0], c),
            Chain::Many(mut all) => {
                // Stable: of equal versions, the first read stays first, and stays.
                all.sort_by_key(|c| c.version);
                all.dedup_by(|later, earlier| later.version == earlier.version);
                for (i, c) in left_of(all, &kept).into_iter().enumerate() {
                    if out.len() == i {
                        out.push(Round::default());
                    }
                    push(&mut out[i], c);
                }
            }
        }
    }
    out
}

fn push<'c>(round: &mut Round<'c>, change: &'c Change) {
    match change.op {
        Op::Upsert(_) => round.upserts.push(change),
        Op::Delete | Op::Truncate => round.deletes.push(change),
    }
}

/// What is left of one key's changes (in version order) once the moot ones are dropped.
fn left_of<'c>(chain: Vec<&'c Change>, kept: &impl Fn(&str) -> bool) -> Vec<&'c Change> {
    let mut left: Vec<&'c Change> = Vec::with_capacity(chain.len());
    for c in chain {
        match &c.op {
            Op::Upsert(_) => {
                left.retain(|earlier| {
                    matches!(earlier.op, Op::Delete) || !carries_all_of(c, earlier, kept)
                });
            }
            Op::Delete | Op::Truncate => left.clear(),
        }
        left.push(c);
    }
    left
}

/// The names of a change's key and fields.
fn names(change: &Change) -> impl Iterator<Item = &str> {
    let fields: &[(String, Value)] = match &change.op {
        Op::Upsert(fields) => fields,
        Op::Delete | Op::Truncate => &[],
    };
    change.key.iter().chain(fields).map(|(f, _)| f.as_str())
}

/// Whether `later` carries every kept field `earlier` carries.
fn carries_all_of(later: &Change, earlier: &Change, kept: &impl Fn(&str) -> bool) -> bool {
    names(earlier)
        .filter(|f| kept(f))
        .all(|f| names(later).any(|g| g == f))
}

/// Whether two changes carry the same kept fields (in any order).
fn same_fields(a: &Change, b: &Change, kept: &impl Fn(&str) -> bool) -> bool {
    let mut x = names(a).filter(|f| kept(f));
    let mut y = names(b).filter(|f| kept(f));
    // Mostly the same names in the same order.
    loop {
        match (x.next(), y.next()) {
            (None, None) => return true,
            (Some(f), Some(g)) if f == g => {}
            _ => break,
        }
    }
    carries_all_of(a, b, kept) && carries_all_of(b, a, kept)
}

/// `upserts` in groups that carry the same kept fields, in first-seen order: each group is
/// written by one statement whose columns are exactly those fields, so no change writes a
/// field it does not carry.
pub fn by_fields<'c>(upserts: &[&'c Change], kept: impl Fn(&str) -> bool) -> Vec<Vec<&'c Change>> {
    let mut groups: Vec<Vec<&'c Change>> = Vec::new();
    let mut last = 0;
    for &c in upserts {
        // Mostly the group of the change before.
        let at = if groups
            .get(last)
            .is_some_and(|g| same_fields(g[0], c, &kept))
        {
            Some(last)
        } else {
            groups.iter().position(|g| same_fields(g[0], c, &kept))
        };
        match at {
            Some(i) => {
                groups[i].push(c);
                last = i;
            }
            None => {
                last = groups.len();
                groups.push(vec![c]);
            }
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upsert(id: i64, lsn: u64, fields: &[&str]) -> Change {
        Change {
            key: vec![("id".into(), Value::Long(id))],
            op: Op::Upsert(
                fields
                    .iter()
                    .map(|f| (f.to_string(), Value::Text(format!("{f}@{lsn}"))))
                    .collect(),
            ),
            version: Version { lsn, seq: 0 },
        }
    }

    fn delete(id: i64, lsn: u64) -> Change {
        Change {
            key: vec![("id".into(), Value::Long(id))],
            op: Op::Delete,
            version: Version { lsn, seq: 0 },
        }
    }

    /// The rounds as `(lsn, 'u'|'d')` per round, sorted.
    fn shape(rounds: &[Round<'_>]) -> Vec<Vec<(u64, char)>> {
        rounds
            .iter()
            .map(|r| {
                let mut out: Vec<(u64, char)> = r
                    .upserts
                    .iter()
                    .map(|c| (c.version.lsn, 'u'))
                    .chain(r.deletes.iter().map(|c| (c.version.lsn, 'd')))
                    .collect();
                out.sort();
                out
            })
            .collect()
    }

    const FLOOR: Version = Version { lsn: 0, seq: 0 };

    #[test]
    fn one_change_per_key_is_one_round() {
        let changes = [
            upsert(1, 10, &["a", "b"]),
            upsert(2, 11, &["a"]),
            delete(3, 12),
        ];
        assert_eq!(
            shape(&rounds(&changes, FLOOR, |_| true)),
            [vec![(10, 'u'), (11, 'u'), (12, 'd')]]
        );
    }

    #[test]
    fn an_upsert_carrying_every_field_of_an_earlier_one_makes_it_moot() {
        let changes = [
            upsert(1, 10, &["a", "b"]),
            upsert(1, 11, &["b", "a"]),
            upsert(1, 12, &["a", "b", "c"]),
        ];
        assert_eq!(shape(&rounds(&changes, FLOOR, |_| true)), [vec![(12, 'u')]]);
    }

    #[test]
    fn an_upsert_carrying_fewer_fields_comes_after_the_one_before() {
        let changes = [
            upsert(1, 10, &["a", "b"]),
            upsert(1, 11, &["a"]),
            upsert(2, 12, &["a"]),
        ];
        assert_eq!(
            shape(&rounds(&changes, FLOOR, |_| true)),
            [vec![(10, 'u'), (12, 'u')], vec![(11, 'u')]]
        );
        // A field the replica does not keep makes no difference.
        assert_eq!(
            shape(&rounds(&changes, FLOOR, |f| f != "b")),
            [vec![(11, 'u'), (12, 'u')]]
        );
    }

    #[test]
    fn a_delete_makes_everything_before_it_moot_and_stays_before_a_later_upsert() {
        let changes = [
            upsert(1, 10, &["a", "b"]),
            upsert(1, 11, &["a"]),
            delete(1, 12),
            upsert(1, 13, &["a"]),
        ];
        assert_eq!(
            shape(&rounds(&changes, FLOOR, |_| true)),
            [vec![(12, 'd')], vec![(13, 'u')]]
        );
        let changes = [upsert(1, 10, &["a"]), delete(1, 12)];
        assert_eq!(shape(&rounds(&changes, FLOOR, |_| true)), [vec![(12, 'd')]]);
    }

    #[test]
    fn changes_are_taken_in_version_order_above_the_floor_and_the_first_of_equal_versions_stays() {
        let changes = [
            upsert(1, 11, &["a"]),
            upsert(1, 10, &["a", "b"]),
            upsert(1, 5, &["a", "b", "c"]),
            upsert(2, 9, &["a"]),
            delete(2, 9),
        ];
        let floor = Version { lsn: 5, seq: 0 };
        assert_eq!(
            shape(&rounds(&changes, floor, |_| true)),
            [vec![(9, 'u'), (10, 'u')], vec![(11, 'u')]]
        );
    }

    /// A key's replica state in a model of the table stores: the row's version and
    /// fields, and the tombstone's version.
    #[derive(Debug, Clone, Default, PartialEq)]
    struct Model {
        row: Option<(Version, std::collections::BTreeMap<String, String>)>,
        tomb: Option<Version>,
    }

    impl Model {
        /// One change, under the stale guard: an upsert writes the kept fields it carries.
        fn apply(&mut self, c: &Change, kept: &impl Fn(&str) -> bool) {
            let newer = |v: Option<Version>| v.is_none_or(|v| v < c.version);
            match &c.op {
                Op::Upsert(fields) => {
                    if !newer(self.row.as_ref().map(|r| r.0)) || !newer(self.tomb) {
                        return;
                    }
                    let mut row = self.row.take().map(|r| r.1).unwrap_or_default();
                    for (f, v) in fields.iter().filter(|(f, _)| kept(f)) {
                        row.insert(f.clone(), format!("{v:?}"));
                    }
                    self.row = Some((c.version, row));
                }
                Op::Delete => {
                    if self.row.as_ref().is_some_and(|r| r.0 < c.version) {
                        self.row = None;
                    }
                    self.tomb = self.tomb.max(Some(c.version));
                }
                Op::Truncate => {}
            }
        }
    }

    /// Property: writing a batch in rounds leaves every key as writing its changes one by
    /// one, in version order, would: whatever fields each carries, whatever the replica held.
    #[test]
    fn rounds_leave_every_key_as_its_changes_one_by_one_would() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let names = ["a", "b", "c"];
        for case in 0..3_000 {
            let kept_b = next() % 2 == 0;
            let kept = move |f: &str| kept_b || f != "b";
            let mut changes = Vec::new();
            // Distinct versions (one change each), in any order.
            let n = next() % 12;
            let mut lsns: Vec<u64> = (1..=n).collect();
            for i in (1..lsns.len()).rev() {
                lsns.swap(i, (next() % (i as u64 + 1)) as usize);
            }
            for lsn in lsns {
                let id = (next() % 3) as i64;
                let version = Version { lsn, seq: 0 };
                let op = if next() % 4 == 0 {
                    Op::Delete
                } else {
                    let mut fields = Vec::new();
                    for f in names {
                        if next() % 2 == 0 {
                            fields.push((f.to_string(), Value::Long((next() % 100) as i64)));
                        }
                    }
                    Op::Upsert(fields)
                };
                changes.push(Change {
                    key: vec![("id".into(), Value::Long(id))],
                    op,
                    version,
                });
            }
            let floor = Version {
                lsn: next() % 3,
                seq: 0,
            };
            // What the replica held before, per key.
            let before: Vec<Model> = (0..3)
                .map(|_| {
                    let mut m = Model::default();
                    for c in &changes {
                        if next() % 5 == 0 {
                            m.apply(c, &kept);
                        }
                    }
                    m
                })
                .collect();
            let id_of = |c: &Change| match c.key[0].1 {
                Value::Long(n) => n as usize,
                _ => unreachable!(),
            };
            let mut expected = before.clone();
            let mut sorted: Vec<&Change> = changes.iter().filter(|c| c.version > floor).collect();
            sorted.sort_by_key(|c| c.version);
            for c in sorted {
                expected[id_of(c)].apply(c, &kept);
            }
            let mut got = before.clone();
            for round in rounds(&changes, floor, kept) {
                for c in round.upserts.iter().chain(&round.deletes) {
                    got[id_of(c)].apply(c, &kept);
                }
            }
            assert_eq!(got, expected, "case {case}: {changes:#?}");
        }
    }

    #[test]
    fn upserts_are_grouped_by_the_fields_they_carry() {
        let changes = [
            upsert(1, 10, &["a", "b"]),
            upsert(2, 11, &["a"]),
            upsert(3, 12, &["b", "a"]),
            upsert(4, 13, &["a"]),
            upsert(5, 14, &["a", "x"]),
        ];
        let refs: Vec<&Change> = changes.iter().collect();
        let lsns = |groups: Vec<Vec<&Change>>| -> Vec<Vec<u64>> {
            groups
                .iter()
                .map(|g| g.iter().map(|c| c.version.lsn).collect())
                .collect()
        };
        assert_eq!(
            lsns(by_fields(&refs, |_| true)),
            [vec![10, 12], vec![11, 13], vec![14]]
        );
        assert_eq!(
            lsns(by_fields(&refs, |f| f == "id" || f == "a")),
            [vec![10, 11, 12, 13, 14]]
        );
    }
}
