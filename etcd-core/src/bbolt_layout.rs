//! etcd's backend layout (the bbolt buckets of `member/snap/db` and of
//! `etcdctl snapshot save` files), mapped both ways: [`write_db`] writes
//! this store's column families as etcd's buckets (what
//! `Maintenance.Snapshot` sends); [`etcd_db_to_image`] reads etcd's buckets
//! into an image of this store (what a restore installs).
//!
//! | etcd bucket       | key                              | value                         | ours (column family: key)        |
//! |-------------------|----------------------------------|-------------------------------|----------------------------------|
//! | `alarm`           | `etcdserverpb.AlarmMember` bytes | empty                         | `alarm`: the same                |
//! | `auth`            | `authEnabled`, `authRevision`    | `[0|1]`, u64 BE               | `auth`: the same names           |
//! | `authRoles`       | role name                        | `authpb.Role`                 | `auth`: `roles/<name>`           |
//! | `authUsers`       | user name                        | `authpb.User`                 | `auth`: `users/<name>`           |
//! | `cluster`         | `clusterVersion`                 | `"3.5.0"`                     | the server's version, X.Y.0      |
//! | `key`             | revision `main:8 BE _ sub:8 BE [t]` | `mvccpb.KeyValue`          | `key`: the same without `_`      |
//! | `lease`           | lease id, i64 BE                 | `leasepb.Lease`               | `lease`: the same bytes          |
//! | `members`         | member id, hex (`%x`)            | JSON `{"id","peerURLs","isLearner","name","clientURLs"}` | `members`: `m` + id BE -> protobuf |
//! | `members_removed` | member id, hex                   | `removed`                     | `members`: `r` + id BE           |
//! | `meta`            | `consistent_index`               | u64 BE                        | `meta`: `consistent_index`       |
//! |                   | `scheduledCompactRev`, `finishedCompactRev` | revision bytes (main, sub 0) | `meta`: `*_compact_rev`, i64 BE (absent when -1) |
//!
//! Worked example: after `put foo bar` at revision 2 on member `8e9e05c52164694d`,
//! the `key` bucket holds `00..02 5f 00..00` -> KeyValue{key: foo, value: bar,
//! create_revision: 2, mod_revision: 2, version: 1}, `members` holds
//! `8e9e05c52164694d` -> `{"id":10276657743932975437,"peerURLs":[...],"name":"default","clientURLs":[...]}`.
//!
//! Everything is read from one [`StoreView`], so the file is one point in
//! time. Buckets are written in name order, keys in the order bbolt keeps
//! (bytewise): the column families whose keys map to etcd's in order stream
//! straight through; members are re-keyed by their hex ids and sorted (a
//! cluster has a handful).

use std::io::{Seek, Write};

use etcd_bbolt::{Reader, Source, Writer, WrittenFile};
use etcd_mvcc::{Cf, ImageWriter, StoreView};
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::auth::{ROLE_PREFIX, USER_PREFIX};
use crate::cluster::{key as member_key, MEMBER_PREFIX, REMOVED_PREFIX};
use crate::membership::Member;
use crate::{Error, Result};

/// etcd's membership JSON (`membership.Member`: `RaftAttributes` then
/// `Attributes`, Go's field order and `omitempty`s).
#[derive(Serialize)]
struct MemberJson<'a> {
    id: u64,
    #[serde(rename = "peerURLs")]
    peer_urls: &'a [String],
    #[serde(rename = "isLearner", skip_serializing_if = "is_false")]
    is_learner: bool,
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    #[serde(rename = "clientURLs", skip_serializing_if = "<[String]>::is_empty")]
    client_urls: &'a [String],
}

/// etcd's membership JSON (`membership.Member`).
#[derive(Deserialize)]
struct EtcdMemberJson {
    id: u64,
    #[serde(rename = "peerURLs", default)]
    peer_urls: Vec<String>,
    #[serde(rename = "isLearner", default)]
    is_learner: bool,
    #[serde(default)]
    name: String,
    #[serde(rename = "clientURLs", default)]
    client_urls: Vec<String>,
}

/// Our member record as etcd's membership JSON (Go's field order, as
/// etcd's `members` bucket holds it).
pub(crate) fn member_to_json(m: &Member) -> Vec<u8> {
    serde_json::to_vec(&MemberJson::of(m)).expect("strings and numbers serialize")
}

/// [`member_to_json`] as a JSON value, to add fields to (a conf change
/// context).
pub(crate) fn member_json_value(m: &Member) -> serde_json::Value {
    serde_json::to_value(MemberJson::of(m)).expect("strings and numbers serialize")
}

impl<'a> MemberJson<'a> {
    fn of(m: &'a Member) -> MemberJson<'a> {
        MemberJson {
            id: m.id,
            peer_urls: &m.peer_urls,
            is_learner: m.is_learner,
            name: &m.name,
            client_urls: &m.client_urls,
        }
    }
}

/// Decodes etcd's membership JSON into our member record.
pub(crate) fn member_from_json(json: &[u8]) -> Result<Member, String> {
    let m: EtcdMemberJson =
        serde_json::from_slice(json).map_err(|e| format!("member JSON: {e}"))?;
    Ok(Member {
        id: m.id,
        name: m.name,
        peer_urls: m.peer_urls,
        client_urls: m.client_urls,
        is_learner: m.is_learner,
    })
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// etcd's revision bytes of a main revision (sub 0, no tombstone mark).
fn rev_bytes(main: i64) -> Vec<u8> {
    let mut b = Vec::with_capacity(17);
    b.extend_from_slice(&main.to_be_bytes());
    b.push(b'_');
    b.extend_from_slice(&0i64.to_be_bytes());
    b
}

/// etcd's key of a revision record: ours (`main:8 sub:8 [t]`) with the `_`
/// etcd puts between main and sub (a constant byte at a fixed offset: the
/// order is unchanged).
fn etcd_rev_key(ours: &[u8]) -> Option<Vec<u8>> {
    let (main, rest) = ours.split_at_checked(8)?;
    Some([main, b"_", rest].concat())
}

/// The version etcd keeps in its `cluster` bucket: `major.minor.0`.
fn cluster_version(server_version: &str) -> String {
    let mut parts = server_version.splitn(3, '.');
    let major = parts.next().unwrap_or("3");
    let minor = parts.next().unwrap_or("0");
    format!("{major}.{minor}.0")
}

fn bbolt(e: etcd_bbolt::Error) -> Error {
    Error::Internal(format!("writing the snapshot database: {e}"))
}

/// Keys between two progress reports within a bucket.
const PROGRESS_EVERY: u64 = 1 << 17;

/// Where [`write_buckets`] sends etcd's buckets: a bbolt file
/// ([`Writer`]) or etcd's backend hash ([`BackendHash`]). Bucket names
/// ascend, and keys within a bucket.
pub trait BucketSink {
    /// Starts the next bucket.
    fn begin_bucket(&mut self, name: &[u8]) -> Result<()>;
    /// Adds a record to the current bucket.
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()>;
}

impl<W: Write + Seek> BucketSink for Writer<W> {
    fn begin_bucket(&mut self, name: &[u8]) -> Result<()> {
        Writer::begin_bucket(self, name).map_err(bbolt)
    }
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        Writer::put(self, key, value).map_err(bbolt)
    }
}

/// etcd's `Maintenance.Hash` (`backend.Hash(mvcc.DefaultIgnores)`): crc32c
/// (Castagnoli) of every bucket name followed by its keys and values, in
/// bbolt's order, leaving out `meta`/`consistent_index` (etcd: it moves
/// with entries that change nothing the user wrote). The same fold as
/// `etcdctl snapshot status`'s hash, which leaves nothing out.
#[derive(Debug, Default)]
pub struct BackendHash {
    /// The crc32c so far.
    crc: u32,
    /// Whether the current bucket is `meta` (holds the ignored key).
    in_meta: bool,
}

impl BackendHash {
    /// The hash of everything put so far.
    pub fn sum(&self) -> u32 {
        self.crc
    }
}

impl BucketSink for BackendHash {
    fn begin_bucket(&mut self, name: &[u8]) -> Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, name);
        self.in_meta = name == b"meta";
        Ok(())
    }
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        if !(self.in_meta && key == b"consistent_index") {
            self.crc = crc32c::crc32c_append(self.crc, key);
            self.crc = crc32c::crc32c_append(self.crc, value);
        }
        Ok(())
    }
}

/// Writes `view` into `out` as an etcd bbolt database (pages of
/// `page_size`); returns the output and what was written. `progress` as
/// for [`write_buckets`].
pub fn write_db<W: Write + Seek>(
    view: &StoreView<'_>,
    out: W,
    page_size: usize,
    progress: &mut dyn FnMut(&str, u64),
) -> Result<(W, WrittenFile)> {
    let mut w = Writer::new(out, page_size).map_err(bbolt)?;
    write_buckets(view, &mut w, progress)?;
    w.finish(1).map_err(bbolt)
}

/// etcd's `Maintenance.Hash` of `view`: [`BackendHash`] over the buckets
/// [`write_db`] would write.
pub fn backend_hash(view: &StoreView<'_>) -> Result<u32> {
    let mut h = BackendHash::default();
    write_buckets(view, &mut h, &mut |_, _| {})?;
    Ok(h.sum())
}

/// Sends `view` to `sink` as etcd's buckets, in name order; returns the
/// records sent. `progress` is called with a bucket's name and the records
/// sent so far, every `PROGRESS_EVERY` records and at the end of each
/// bucket.
pub fn write_buckets(
    view: &StoreView<'_>,
    w: &mut dyn BucketSink,
    progress: &mut dyn FnMut(&str, u64),
) -> Result<u64> {
    let mut keys = 0u64;
    let not_auth_record =
        |k: &[u8]| (!k.starts_with(USER_PREFIX) && !k.starts_with(ROLE_PREFIX)).then(|| k.to_vec());
    let buckets: [(&str, Cf, &dyn Fn(&[u8]) -> Option<Vec<u8>>); 4] = [
        ("alarm", Cf::Alarm, &|k| Some(k.to_vec())),
        ("auth", Cf::Auth, &not_auth_record),
        ("authRoles", Cf::Auth, &|k| {
            k.strip_prefix(ROLE_PREFIX).map(<[u8]>::to_vec)
        }),
        ("authUsers", Cf::Auth, &|k| {
            k.strip_prefix(USER_PREFIX).map(<[u8]>::to_vec)
        }),
    ];
    for (name, cf, rename) in buckets {
        keys = copy(w, name, view, cf, rename, keys, progress)?;
    }
    // cluster: the version.
    w.begin_bucket(b"cluster")?;
    w.put(
        b"clusterVersion",
        cluster_version(crate::SERVER_VERSION).as_bytes(),
    )?;
    keys += 1;
    progress("cluster", keys);
    // key, lease: same bytes.
    keys = copy(w, "key", view, Cf::Key, &etcd_rev_key, keys, progress)?;
    keys = copy(
        w,
        "lease",
        view,
        Cf::Lease,
        &|k| Some(k.to_vec()),
        keys,
        progress,
    )?;
    // members, members_removed: hex ids, sorted as strings.
    let mut members = Vec::new();
    let mut removed = Vec::new();
    for item in view.scan(Cf::Members) {
        let (k, v) = item?;
        let id = match k.get(1..9) {
            Some(b) if k.len() == 9 => u64::from_be_bytes(b.try_into().expect("8 bytes")),
            _ => continue,
        };
        match k[0] {
            MEMBER_PREFIX => {
                let m = Member::decode(&v[..]).map_err(|e| {
                    Error::Internal(format!("member record {id:x} is not readable: {e}"))
                })?;
                let json = member_to_json(&m);
                members.push((format!("{id:x}"), json));
            }
            REMOVED_PREFIX => removed.push((format!("{id:x}"), b"removed".to_vec())),
            _ => {} // our own bookkeeping (refused changes): not etcd's
        }
    }
    for (name, mut records) in [("members", members), ("members_removed", removed)] {
        records.sort();
        w.begin_bucket(name.as_bytes())?;
        for (k, v) in &records {
            w.put(k.as_bytes(), v)?;
        }
        keys += records.len() as u64;
        progress(name, keys);
    }
    // meta: the consistent index and compaction revisions.
    w.begin_bucket(b"meta")?;
    let mut meta = vec![(
        &b"consistent_index"[..],
        view.consistent_index()?.to_be_bytes().to_vec(),
    )];
    let (scheduled, finished) = view.compact_revisions()?;
    if finished >= 0 {
        meta.push((b"finishedCompactRev", rev_bytes(finished)));
    }
    if scheduled >= 0 {
        meta.push((b"scheduledCompactRev", rev_bytes(scheduled)));
    }
    for (k, v) in &meta {
        w.put(k, v)?;
    }
    keys += meta.len() as u64;
    progress("meta", keys);
    Ok(keys)
}

/// Copies the records of `cf` whose key `rename` maps (None: skip) into
/// bucket `name`; the mapping must keep the key order. Returns `keys` plus
/// the records copied.
fn copy(
    w: &mut dyn BucketSink,
    name: &str,
    view: &StoreView<'_>,
    cf: Cf,
    rename: &dyn Fn(&[u8]) -> Option<Vec<u8>>,
    mut keys: u64,
    progress: &mut dyn FnMut(&str, u64),
) -> Result<u64> {
    w.begin_bucket(name.as_bytes())?;
    let mut n = 0;
    for item in view.scan(cf) {
        let (k, v) = item?;
        if let Some(k) = rename(&k) {
            w.put(&k, &v)?;
            keys += 1;
            n += 1;
            if n % PROGRESS_EVERY == 0 {
                progress(name, keys);
            }
        }
    }
    progress(name, keys);
    Ok(keys)
}

/// What [`etcd_db_to_image`] carried over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Imported {
    /// Key revision records (puts and tombstones).
    pub revisions: u64,
    /// Leases.
    pub leases: u64,
    /// Records of the auth buckets (settings, users, roles).
    pub auth: u64,
    /// Alarms.
    pub alarms: u64,
}

fn import_err(e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("importing the etcd database: {e}"))
}

/// Converts an etcd database into an image of this store at consistent
/// index 0, written to `out`: the state machine (key revisions, compaction
/// revisions, leases, auth, alarms). What belongs to the old cluster is
/// left out, as `etcdctl snapshot restore` drops it: members, removed
/// members, the consistent index, the cluster version (the restored
/// member bootstraps a new cluster on top). The image is verified when it
/// is restored ([`etcd_mvcc::Store::restore`]): a malformed record
/// (revision key, `mvccpb.KeyValue`) fails there, before anything is
/// applied.
pub fn etcd_db_to_image<S: Source, W: Write>(db: &Reader<S>, out: W) -> Result<(W, Imported)> {
    let (out, n, _, _) = db_to_image(db, out, false)?;
    Ok((out, n))
}

/// Converts the database of an etcd member into an image of this store at
/// the database's consistent index, keeping its cluster: the members and
/// removed members (ours from etcd's JSON) with the rest of the state
/// machine. Returns the output, what was imported, the consistent index and
/// the members. For an import of a whole etcd member (`etcd_import`).
pub(crate) fn etcd_member_db_to_image<S: Source, W: Write>(
    db: &Reader<S>,
    out: W,
) -> Result<(W, Imported, u64, Vec<Member>)> {
    db_to_image(db, out, true)
}

/// etcd's consistent index: `meta`/`consistent_index`, u64 big-endian (0
/// when absent).
pub(crate) fn etcd_consistent_index<S: Source>(db: &Reader<S>) -> etcd_bbolt::Result<u64> {
    let mut ci = 0u64;
    if let Some(b) = db.buckets()?.iter().find(|b| b.name == b"meta") {
        db.for_each(b, |k, v| {
            if k == b"consistent_index" {
                ci = u64::from_be_bytes(v.try_into().map_err(|_| {
                    etcd_bbolt::Error::Corrupt(format!("consistent_index of {} bytes", v.len()))
                })?);
            }
            Ok(())
        })?;
    }
    Ok(ci)
}

fn db_to_image<S: Source, W: Write>(
    db: &Reader<S>,
    out: W,
    keep_cluster: bool,
) -> Result<(W, Imported, u64, Vec<Member>)> {
    let buckets = db.buckets().map_err(import_err)?;
    let bucket = |name: &str| buckets.iter().find(|b| b.name == name.as_bytes());
    let ci = if keep_cluster {
        etcd_consistent_index(db).map_err(import_err)?
    } else {
        0
    };
    let mut img = ImageWriter::new(out, ci).map_err(import_err)?;
    let mut n = Imported::default();
    // Image order: key, meta, lease, auth, members, alarm.
    if let Some(b) = bucket("key") {
        db.for_each(b, |k, v| {
            let ours = match (k.len(), k.get(8)) {
                (17 | 18, Some(b'_')) => [&k[..8], &k[9..]].concat(),
                _ => {
                    return Err(etcd_bbolt::Error::Corrupt(format!(
                        "key bucket: {k:x?} is not a revision"
                    )))
                }
            };
            n.revisions += 1;
            img.push(Cf::Key, &ours, v).map_err(etcd_bbolt::Error::Io)
        })
        .map_err(import_err)?;
    }
    if let Some(b) = bucket("meta") {
        // etcd's names -> ours, sorted by our names.
        let mut meta = Vec::new();
        db.for_each(b, |k, v| {
            let ours: &[u8] = match k {
                b"finishedCompactRev" => b"finished_compact_rev",
                b"scheduledCompactRev" => b"scheduled_compact_rev",
                // The same 8 bytes; kept with the cluster (the image's
                // header says the same).
                b"consistent_index" if keep_cluster => b"consistent_index",
                _ => return Ok(()), // consistent_index, term, confState: the old cluster's
            };
            let main = v.get(..8).ok_or_else(|| {
                etcd_bbolt::Error::Corrupt(format!("meta {k:?}: {} bytes", v.len()))
            })?;
            meta.push((ours, main.to_vec()));
            Ok(())
        })
        .map_err(import_err)?;
        meta.sort();
        for (k, v) in meta {
            img.push(Cf::Meta, k, &v).map_err(import_err)?;
        }
    }
    if let Some(b) = bucket("lease") {
        db.for_each(b, |k, v| {
            n.leases += 1;
            img.push(Cf::Lease, k, v).map_err(etcd_bbolt::Error::Io)
        })
        .map_err(import_err)?;
    }
    // auth ("authEnabled", "authRevision") < "roles/..." < "users/...".
    for (name, prefix) in [
        ("auth", &b""[..]),
        ("authRoles", ROLE_PREFIX),
        ("authUsers", USER_PREFIX),
    ] {
        if let Some(b) = bucket(name) {
            db.for_each(b, |k, v| {
                n.auth += 1;
                img.push(Cf::Auth, &[prefix, k].concat(), v)
                    .map_err(etcd_bbolt::Error::Io)
            })
            .map_err(import_err)?;
        }
    }
    let mut members = Vec::new();
    if keep_cluster {
        // members: 'm' + id BE -> our record; members_removed: 'r' + id BE.
        if let Some(b) = bucket("members") {
            db.for_each(b, |_, v| {
                let m = member_from_json(v).map_err(etcd_bbolt::Error::Corrupt)?;
                members.push(m);
                Ok(())
            })
            .map_err(import_err)?;
        }
        let mut removed = Vec::new();
        if let Some(b) = bucket("members_removed") {
            db.for_each(b, |k, _| {
                let id = std::str::from_utf8(k)
                    .ok()
                    .and_then(|h| u64::from_str_radix(h, 16).ok())
                    .ok_or_else(|| etcd_bbolt::Error::Corrupt(format!("removed member {k:?}")))?;
                removed.push(id);
                Ok(())
            })
            .map_err(import_err)?;
        }
        members.sort_by_key(|m| m.id);
        removed.sort();
        for m in &members {
            img.push(
                Cf::Members,
                &member_key(MEMBER_PREFIX, m.id),
                &m.encode_to_vec(),
            )
            .map_err(import_err)?;
        }
        for id in removed {
            img.push(Cf::Members, &member_key(REMOVED_PREFIX, id), b"")
                .map_err(import_err)?;
        }
    }
    if let Some(b) = bucket("alarm") {
        db.for_each(b, |k, v| {
            n.alarms += 1;
            img.push(Cf::Alarm, k, v).map_err(etcd_bbolt::Error::Io)
        })
        .map_err(import_err)?;
    }
    Ok((img.finish().map_err(import_err)?, n, ci, members))
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_bbolt::Reader;
    use etcd_mvcc::{Bucket, Store, StoreOptions};
    use std::collections::BTreeMap;
    use std::io::Cursor;

    type Db = BTreeMap<String, Vec<(Vec<u8>, Vec<u8>)>>;

    fn read(bytes: Vec<u8>) -> Db {
        let r = Reader::from_bytes(bytes).unwrap();
        let mut db = Db::new();
        for b in r.buckets().unwrap() {
            let mut kvs = Vec::new();
            r.for_each(&b, |k, v| {
                kvs.push((k.to_vec(), v.to_vec()));
                Ok(())
            })
            .unwrap();
            db.insert(String::from_utf8(b.name.clone()).unwrap(), kvs);
        }
        db
    }

    #[test]
    fn the_store_in_etcds_buckets() {
        let store = Store::open_in_memory(StoreOptions::default()).unwrap();
        let mut t = store.write();
        t.put(b"foo", b"bar", 0).unwrap();
        t.put_aux(Bucket::Auth, b"authEnabled", &[1]);
        t.put_aux(Bucket::Auth, b"authRevision", &3u64.to_be_bytes());
        t.put_aux(Bucket::Auth, b"users/root", b"user-proto");
        t.put_aux(Bucket::Auth, b"roles/root", b"role-proto");
        t.put_aux(Bucket::Lease, &7i64.to_be_bytes(), b"lease-proto");
        let m = |id: u64, learner: bool| Member {
            id,
            name: if learner {
                String::new()
            } else {
                format!("m{id}")
            },
            peer_urls: vec![format!("http://127.0.0.1:{id}")],
            client_urls: vec![],
            is_learner: learner,
        };
        // ids whose hex order differs from their numeric order
        for id in [0xa_u64, 0x1f] {
            t.put_aux(
                Bucket::Members,
                &member_key(MEMBER_PREFIX, id),
                &m(id, id == 0x1f).encode_to_vec(),
            );
        }
        t.put_aux(Bucket::Members, &member_key(REMOVED_PREFIX, 5), b"");
        t.end(4).unwrap();
        let mut t = store.write();
        t.delete_range(b"foo", b"").unwrap();
        t.end(5).unwrap();
        store.compact(2, 6).unwrap().wait();

        let view = store.view().unwrap();
        let mut buckets = Vec::new();
        let (out, written) = write_db(&view, Cursor::new(Vec::new()), 4096, &mut |b, _| {
            buckets.push(b.to_string())
        })
        .unwrap();
        let db = read(out.into_inner());
        assert_eq!(
            db.keys().collect::<Vec<_>>(),
            [
                "alarm",
                "auth",
                "authRoles",
                "authUsers",
                "cluster",
                "key",
                "lease",
                "members",
                "members_removed",
                "meta"
            ]
        );
        assert_eq!(buckets, db.keys().cloned().collect::<Vec<_>>());
        let kv = |k: &[u8], v: &[u8]| (k.to_vec(), v.to_vec());
        assert_eq!(
            db["auth"],
            [
                kv(b"authEnabled", &[1]),
                kv(b"authRevision", &3u64.to_be_bytes())
            ]
        );
        assert_eq!(db["authUsers"], [kv(b"root", b"user-proto")]);
        assert_eq!(db["authRoles"], [kv(b"root", b"role-proto")]);
        assert_eq!(db["cluster"], [kv(b"clusterVersion", b"3.5.0")]);
        assert_eq!(db["lease"], [kv(&7i64.to_be_bytes(), b"lease-proto")]);
        assert_eq!(
            db["members"],
            [
                kv(
                    b"1f",
                    br#"{"id":31,"peerURLs":["http://127.0.0.1:31"],"isLearner":true}"#
                ),
                kv(
                    b"a",
                    br#"{"id":10,"peerURLs":["http://127.0.0.1:10"],"name":"m10"}"#
                ),
            ]
        );
        assert_eq!(db["members_removed"], [kv(b"5", b"removed")]);
        assert_eq!(
            db["meta"],
            [
                kv(b"consistent_index", &6u64.to_be_bytes()),
                kv(b"finishedCompactRev", &rev_bytes(2)),
                kv(b"scheduledCompactRev", &rev_bytes(2)),
            ]
        );
        // key: revision 2 (the put) and 3 (the tombstone), etcd's bytes.
        let keys: Vec<_> = db["key"].iter().map(|(k, _)| k.clone()).collect();
        let mut tomb = rev_bytes(3);
        tomb.push(b't');
        assert_eq!(keys, [rev_bytes(2), tomb]);
        assert_eq!(
            written.keys,
            db.values().map(|b| b.len() as u64).sum::<u64>()
        );
    }

    #[test]
    fn cluster_version_is_major_minor_zero() {
        assert_eq!(cluster_version("3.5.17"), "3.5.0");
        assert_eq!(cluster_version("3.4.0"), "3.4.0");
    }
}
