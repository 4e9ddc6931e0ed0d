//! Members and their ids, computed exactly as etcd does so that the same
//! flags give the same ids (the default single member is `8e9e05c52164694d`
//! in cluster `cdf818194e3a8c32`, as with etcd).
//!
//! - member id: the first 8 bytes (big-endian) of
//!   `sha1(sorted peer URLs concatenated ++ cluster token)`;
//! - cluster id: the first 8 bytes of `sha1(sorted member ids, each 8 bytes
//!   big-endian)`.

use sha1::{Digest, Sha1};

/// A cluster member.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Member {
    /// Member id.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Human-readable name (--name); empty until a started member publishes it.
    #[prost(string, tag = "2")]
    pub name: String,
    /// URLs the member listens on for peer traffic.
    #[prost(string, repeated, tag = "3")]
    pub peer_urls: Vec<String>,
    /// URLs the member serves clients on.
    #[prost(string, repeated, tag = "4")]
    pub client_urls: Vec<String>,
    /// Whether the member is a non-voting learner.
    #[prost(bool, tag = "5")]
    pub is_learner: bool,
}

/// What a member stores in its WAL's metadata record (protobuf):
/// its own id, the cluster id, and the members it was bootstrapped with.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WalMetadata {
    #[prost(uint64, tag = "1")]
    pub member_id: u64,
    #[prost(uint64, tag = "2")]
    pub cluster_id: u64,
    #[prost(message, repeated, tag = "3")]
    pub members: Vec<Member>,
}

/// etcd's member id for `peer_urls` in a cluster bootstrapped with `token`.
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut h = Sha1::new();
    for u in &urls {
        h.update(u.as_bytes());
    }
    h.update(token.as_bytes());
    first_u64(&h.finalize())
}

/// etcd's cluster id for a set of member ids.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut h = Sha1::new();
    for id in ids {
        h.update(id.to_be_bytes());
    }
    first_u64(&h.finalize())
}

fn first_u64(digest: &[u8]) -> u64 {
    u64::from_be_bytes(digest[..8].try_into().expect("sha1 has 20 bytes"))
}

/// Parses `--initial-cluster` (`name=url,name=url,...`) into members with
/// ids, grouping several URLs of one name as etcd does.
pub fn parse_initial_cluster(s: &str, token: &str) -> Result<Vec<Member>, String> {
    let mut members: Vec<Member> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, url)) = part.split_once('=') else {
            return Err(format!(
                "--initial-cluster: {part:?} is not of the form name=url"
            ));
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "--initial-cluster: URL {url:?} of member {name:?} must start with http:// or https://"
            ));
        }
        match members.iter_mut().find(|m| m.name == name) {
            Some(m) => m.peer_urls.push(url.to_string()),
            None => members.push(Member {
                name: name.to_string(),
                peer_urls: vec![url.to_string()],
                ..Default::default()
            }),
        }
    }
    if members.is_empty() {
        return Err("--initial-cluster is empty".into());
    }
    for m in &mut members {
        m.id = member_id(&m.peer_urls, token);
    }
    Ok(members)
}

/// Formats an id as etcd prints it (16 lowercase hex digits).
pub fn format_id(id: u64) -> String {
    format!("{id:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ids_match_etcd() {
        let members =
            parse_initial_cluster("default=http://localhost:2380", "etcd-cluster").unwrap();
        assert_eq!(format_id(members[0].id), "8e9e05c52164694d");
        assert_eq!(format_id(cluster_id(&[members[0].id])), "cdf818194e3a8c32");
    }

    #[test]
    fn bad_initial_cluster_is_explained() {
        assert!(parse_initial_cluster("default", "t")
            .unwrap_err()
            .contains("name=url"));
        assert!(parse_initial_cluster("a=localhost:2380", "t")
            .unwrap_err()
            .contains("http://"));
        let two = parse_initial_cluster("a=http://x:1,a=http://y:1,b=http://z:1", "t").unwrap();
        assert_eq!(two.len(), 2);
        assert_eq!(two[0].peer_urls.len(), 2);
    }
}
