//! A user's permissions merged over all its roles, and the range checks
//! (etcd's `auth/range_perm_cache.go`).
//!
//! Every permission is a half-open key interval `[begin, end)`:
//!
//! | permission (`key`, `range_end`) | interval |
//! |---|---|
//! | `k`, empty | `[k, k\0)`: the key alone |
//! | `k`, `e` | `[k, e)` |
//! | `k`, `\0` | `[k, +inf)`: from the key on |
//!
//! and so is every request (`range_end` empty: a single key; `\0`: from
//! the key on). A request is permitted when the union of the user's
//! intervals of the needed type covers its whole interval. Two roles
//! granting `[a, c)` and `[c, e)` together permit a range over `[a, e)`, as
//! etcd's interval tree does (`Contains` checks that the intervals overlapping
//! the request are contiguous and reach both of its ends).
//!
//! Worked example: READ on `[a, c)`, `[c, e)` and `x`; then
//! `range a..d` is permitted (covered by the first two, merged into
//! `[a, e)`), `range a..f` is not (`[e, f)` uncovered), `get x` is, and
//! `range x..y` is not (only `x` itself is covered).

use crate::pb::authpb::{permission::Type as PermType, Role};

/// An interval end: `None` is +infinity.
type End = Option<Vec<u8>>;

/// Disjoint, sorted, non-adjacent intervals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct IntervalSet(Vec<(Vec<u8>, End)>);

impl IntervalSet {
    /// Builds the set from intervals in any order, merging overlapping and
    /// adjacent ones.
    fn from_intervals(mut ivs: Vec<(Vec<u8>, End)>) -> IntervalSet {
        ivs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut merged: Vec<(Vec<u8>, End)> = Vec::with_capacity(ivs.len());
        for (begin, end) in ivs {
            if let Some(last) = merged.last_mut() {
                let touches = match &last.1 {
                    None => true,
                    Some(e) => begin <= *e,
                };
                if touches {
                    if end_lt(&last.1, &end) {
                        last.1 = end;
                    }
                    continue;
                }
            }
            merged.push((begin, end));
        }
        IntervalSet(merged)
    }

    /// Whether `[begin, end)` lies inside one merged interval.
    fn covers(&self, begin: &[u8], end: &End) -> bool {
        // The last interval starting at or before `begin`.
        let i = self.0.partition_point(|(b, _)| b.as_slice() <= begin);
        if i == 0 {
            return false;
        }
        let (_, e) = &self.0[i - 1];
        let inside = match e {
            None => true,
            Some(e) => begin < e.as_slice(),
        };
        inside && !end_lt(e, end)
    }
}

/// `a < b` for interval ends (`None` = +infinity).
fn end_lt(a: &End, b: &End) -> bool {
    match (a, b) {
        (_, None) => a.is_some(),
        (None, Some(_)) => false,
        (Some(a), Some(b)) => a < b,
    }
}

/// The interval of a permission or request (see the module doc).
fn interval(key: &[u8], range_end: &[u8]) -> (Vec<u8>, End) {
    let end = match range_end {
        [] => {
            let mut e = key.to_vec();
            e.push(0);
            Some(e)
        }
        [0] => None,
        e => Some(e.to_vec()),
    };
    (key.to_vec(), end)
}

/// One user's READ and WRITE intervals (etcd's `unifiedRangePermissions`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct UnifiedPerms {
    read: IntervalSet,
    write: IntervalSet,
}

impl UnifiedPerms {
    /// Merges the permissions of `roles` (etcd's `getMergedPerms`).
    pub(crate) fn merge<'a>(roles: impl IntoIterator<Item = &'a Role>) -> UnifiedPerms {
        let (mut read, mut write) = (Vec::new(), Vec::new());
        for role in roles {
            for p in &role.key_permission {
                let iv = interval(&p.key, &p.range_end);
                match PermType::try_from(p.perm_type) {
                    Ok(PermType::Read) => read.push(iv),
                    Ok(PermType::Write) => write.push(iv),
                    Ok(PermType::Readwrite) => {
                        read.push(iv.clone());
                        write.push(iv);
                    }
                    Err(_) => {}
                }
            }
        }
        UnifiedPerms {
            read: IntervalSet::from_intervals(read),
            write: IntervalSet::from_intervals(write),
        }
    }

    /// Whether the user may `perm` every key of `[key, range_end)` (a
    /// single key for an empty `range_end`; from `key` on for `\0`).
    pub(crate) fn permits(&self, perm: PermType, key: &[u8], range_end: &[u8]) -> bool {
        let (begin, end) = interval(key, range_end);
        match perm {
            PermType::Read => self.read.covers(&begin, &end),
            PermType::Write => self.write.covers(&begin, &end),
            PermType::Readwrite => {
                self.read.covers(&begin, &end) && self.write.covers(&begin, &end)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::authpb::Permission;

    fn role(perms: &[(PermType, &str, &str)]) -> Role {
        Role {
            name: b"r".to_vec().into(),
            key_permission: perms
                .iter()
                .map(|(t, k, e)| Permission {
                    perm_type: *t as i32,
                    key: k.as_bytes().to_vec().into(),
                    range_end: e.as_bytes().to_vec().into(),
                })
                .collect(),
        }
    }

    #[test]
    fn the_worked_example() {
        let p = UnifiedPerms::merge(&[
            role(&[(PermType::Read, "a", "c")]),
            role(&[(PermType::Read, "c", "e"), (PermType::Read, "x", "")]),
        ]);
        assert!(p.permits(PermType::Read, b"a", b"d"));
        assert!(p.permits(PermType::Read, b"a", b"e"));
        assert!(!p.permits(PermType::Read, b"a", b"f"));
        assert!(p.permits(PermType::Read, b"x", b""));
        assert!(!p.permits(PermType::Read, b"x", b"y"));
        assert!(!p.permits(PermType::Write, b"a", b""));
        assert!(p.permits(PermType::Read, b"d", b""));
        assert!(!p.permits(PermType::Read, b"e", b""));
    }

    #[test]
    fn from_key_and_prefix_permissions() {
        let p = UnifiedPerms::merge(&[role(&[
            (PermType::Readwrite, "q", "\0"),
            (PermType::Write, "p/", "p0"),
        ])]);
        assert!(p.permits(PermType::Read, b"q", b"\0"));
        assert!(p.permits(PermType::Write, b"zzz", b""));
        assert!(!p.permits(PermType::Read, b"p", b"\0"));
        assert!(!p.permits(PermType::Read, b"a", b"z"));
        assert!(p.permits(PermType::Write, b"p/", b"p0"));
        assert!(p.permits(PermType::Write, b"p/x", b""));
        assert!(!p.permits(PermType::Write, b"p", b""));
        assert!(!p.permits(PermType::Write, b"p/", b"\0"));
        // Adjacent single keys merge: "p" and "p\0" cover [p, p\0\0).
        let q = UnifiedPerms::merge(&[role(&[
            (PermType::Read, "p", ""),
            (PermType::Read, "p\0", ""),
        ])]);
        assert!(q.permits(PermType::Read, b"p", b"p\0\0"));
    }

    #[test]
    fn no_roles_no_permissions() {
        let p = UnifiedPerms::merge(&[]);
        assert!(!p.permits(PermType::Read, b"a", b""));
        assert!(!p.permits(PermType::Write, b"a", b"\0"));
    }
}
