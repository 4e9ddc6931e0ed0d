//! The auth state: users, roles, whether auth is on, and the auth revision
//! (etcd's `auth/store.go`).
//!
//! Invariants:
//! - Every change is applied from a raft entry, in the same backend write
//!   as the entry's consistent index, so members agree and a restart or a
//!   snapshot image brings it back ([`AuthStore::load`]).
//! - The auth revision grows by one with every change that can change
//!   what someone may do (users, roles, permissions, disable). A request
//!   checked against an older revision than the member's is refused with
//!   "revision of auth store is old" (the client re-authenticates), so a
//!   permission revoked at revision r stops every request checked after r.
//!   The revision starts at 1; 0 means "no credentials".
//! - Users' roles are kept sorted; `root` is the user that may enable
//!   auth, and the role `root` grants everything (it need not exist as a
//!   role record, as in etcd).
//!
//! Byte format (`auth` column family; values are etcd's `authpb`
//! protobufs, so etcd's bbolt buckets `auth`, `authUsers`, `authRoles` map
//! one to one):
//!
//! ```text
//! "authEnabled"      -> [1] or [0]
//! "authRevision"     -> u64 big-endian
//! "users/" + name    -> authpb.User   (password: bcrypt hash, "$2a$...")
//! "roles/" + name    -> authpb.Role   (permissions sorted by key)
//! ```

use super::jwt::{JwtTokens, UnixClock};
use super::options::TokenOptions;
use super::range_perm_cache::UnifiedPerms;
use super::simple_token::{self, SimpleTokens};
use crate::pb::authpb::{permission::Type as PermType, Permission, Role, User, UserAddOptions};
use crate::pb::etcdserverpb::{
    AuthRoleGrantPermissionRequest, AuthRoleRevokePermissionRequest, AuthUserAddRequest,
};
use crate::{Error, Result};
use etcd_mvcc::{Bucket, Store, TxnWrite};
use parking_lot::RwLock;
use std::collections::{BTreeMap, HashMap};

const ENABLED_KEY: &[u8] = b"authEnabled";
const REVISION_KEY: &[u8] = b"authRevision";
pub(crate) const USER_PREFIX: &[u8] = b"users/";
pub(crate) const ROLE_PREFIX: &[u8] = b"roles/";

/// The name of the user that may enable auth, and of the all-powerful role.
pub const ROOT: &str = "root";

/// Who a request runs as (etcd's `AuthInfo`): a user and the auth revision
/// its credentials were checked at. The default (empty name, revision 0)
/// is a caller without credentials.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthInfo {
    /// The user.
    pub username: String,
    /// The auth revision at which the credentials were valid.
    pub revision: u64,
}

/// The tokens this member issues and accepts (`--auth-token`).
pub(crate) enum Tokens {
    Simple(SimpleTokens),
    Jwt(JwtTokens),
}

impl Tokens {
    /// The provider `--auth-token` names (JWT keys are read here); simple
    /// tokens live `simple_ttl` (`--auth-token-ttl`) past their last use.
    pub(crate) fn new(
        opts: &TokenOptions,
        simple_ttl: std::time::Duration,
        clock: std::sync::Arc<dyn crate::lessor::Clock>,
        unix_clock: UnixClock,
    ) -> std::result::Result<Tokens, String> {
        Ok(match opts.jwt(unix_clock)? {
            Some(j) => Tokens::Jwt(j),
            None => Tokens::Simple(SimpleTokens::new(clock, simple_ttl)),
        })
    }
}

/// What the auth state holds (see the module doc).
#[derive(Default)]
struct State {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
    /// Each user's permissions merged over its roles, rebuilt on every
    /// change (etcd's `rangePermCache`).
    perms: HashMap<String, UnifiedPerms>,
}

impl State {
    fn refresh_perms(&mut self) {
        let roles = &self.roles;
        self.perms = self
            .users
            .iter()
            .map(|(name, u)| {
                let merged = UnifiedPerms::merge(u.roles.iter().filter_map(|r| roles.get(r)));
                (name.clone(), merged)
            })
            .collect();
    }

    /// Bumps and persists the revision, and refreshes the permissions.
    fn commit_revision(&mut self, w: &mut TxnWrite<'_>) {
        self.revision += 1;
        w.put_aux(Bucket::Auth, REVISION_KEY, &self.revision.to_be_bytes());
        self.refresh_perms();
    }

    fn put_user(&mut self, w: &mut TxnWrite<'_>, name: &str, u: User) {
        w.put_aux(
            Bucket::Auth,
            &key(USER_PREFIX, name),
            &prost::Message::encode_to_vec(&u),
        );
        self.users.insert(name.to_string(), u);
    }

    fn put_role(&mut self, w: &mut TxnWrite<'_>, name: &str, r: Role) {
        w.put_aux(
            Bucket::Auth,
            &key(ROLE_PREFIX, name),
            &prost::Message::encode_to_vec(&r),
        );
        self.roles.insert(name.to_string(), r);
    }
}

fn key(prefix: &[u8], name: &str) -> Vec<u8> {
    [prefix, name.as_bytes()].concat()
}

fn has_root_role(u: &User) -> bool {
    u.roles.binary_search_by(|r| r.as_str().cmp(ROOT)).is_ok()
}

/// The auth state of one member.
pub(crate) struct AuthStore {
    state: RwLock<State>,
    tokens: Tokens,
}

impl AuthStore {
    /// An auth store with nothing in it (revision 1, disabled); fill it with
    /// [`AuthStore::load`].
    pub(crate) fn new(tokens: Tokens) -> AuthStore {
        AuthStore {
            state: RwLock::new(State {
                revision: 1,
                ..State::default()
            }),
            tokens,
        }
    }

    /// (Re)loads the state from the store's `auth` bucket: at start and
    /// after a snapshot image was installed.
    pub(crate) fn load(&self, store: &Store) -> Result<()> {
        let mut s = State {
            revision: 1,
            ..State::default()
        };
        let bad = |k: &[u8], e: &dyn std::fmt::Display| {
            Error::Internal(format!(
                "auth record {:?} is not readable: {e}",
                String::from_utf8_lossy(k)
            ))
        };
        for (k, v) in store.aux_scan(Bucket::Auth)? {
            if k == ENABLED_KEY {
                s.enabled = v == [1];
            } else if k == REVISION_KEY {
                let b: [u8; 8] = v
                    .as_slice()
                    .try_into()
                    .map_err(|_| bad(&k, &"not 8 bytes"))?;
                s.revision = u64::from_be_bytes(b).max(1);
            } else if let Some(name) = k.strip_prefix(USER_PREFIX) {
                let u: User = prost::Message::decode(&v[..]).map_err(|e| bad(&k, &e))?;
                s.users
                    .insert(String::from_utf8_lossy(name).into_owned(), u);
            } else if let Some(name) = k.strip_prefix(ROLE_PREFIX) {
                let r: Role = prost::Message::decode(&v[..]).map_err(|e| bad(&k, &e))?;
                s.roles
                    .insert(String::from_utf8_lossy(name).into_owned(), r);
            }
        }
        s.refresh_perms();
        let enabled = s.enabled;
        *self.state.write() = s;
        if let Tokens::Simple(t) = &self.tokens {
            if enabled {
                t.enable();
            } else {
                t.disable();
            }
        }
        Ok(())
    }

    pub(crate) fn is_enabled(&self) -> bool {
        self.state.read().enabled
    }

    pub(crate) fn revision(&self) -> u64 {
        self.state.read().revision
    }

    // ---- tokens -------------------------------------------------------

    /// The raft index a simple token was made at: the member must have
    /// applied it before the token can be known. None for JWTs.
    pub(crate) fn token_index(&self, token: &str) -> Option<u64> {
        match &self.tokens {
            Tokens::Simple(_) => simple_token::token_index(token),
            Tokens::Jwt(_) => None,
        }
    }

    /// Who a token belongs to (etcd's `authInfoFromToken`): a simple token
    /// is checked at the current revision, a JWT at its own.
    pub(crate) fn token_info(&self, token: &str) -> Option<AuthInfo> {
        match &self.tokens {
            Tokens::Simple(t) => t.user(token).map(|username| AuthInfo {
                username,
                revision: self.revision(),
            }),
            Tokens::Jwt(j) => j
                .info(token)
                .map(|(username, revision)| AuthInfo { username, revision }),
        }
    }

    /// The identity of a verified client certificate's common name.
    pub(crate) fn cert_info(&self, common_name: &str) -> AuthInfo {
        AuthInfo {
            username: common_name.to_string(),
            revision: self.revision(),
        }
    }

    /// The random part of a token the proposer draws (empty for JWTs).
    pub(crate) fn gen_token_prefix(&self) -> String {
        match &self.tokens {
            Tokens::Simple(_) => simple_token::gen_prefix(),
            Tokens::Jwt(_) => String::new(),
        }
    }

    // ---- checks -------------------------------------------------------

    /// Checks `password` (bcrypt: slow, call it off the async runtime);
    /// returns the revision it was checked at (etcd's `CheckPassword`).
    pub(crate) fn check_password(&self, name: &str, password: &str) -> Result<u64> {
        let (hash, revision) = {
            let s = self.state.read();
            if !s.enabled {
                return Err(Error::AuthNotEnabled);
            }
            let u = s.users.get(name).ok_or(Error::AuthFailed)?;
            if u.options.as_ref().is_some_and(|o| o.no_password) {
                return Err(Error::NoPasswordUser);
            }
            (
                String::from_utf8_lossy(&u.password).into_owned(),
                s.revision,
            )
        };
        match bcrypt::verify(password, &hash) {
            Ok(true) => Ok(revision),
            _ => Err(Error::AuthFailed),
        }
    }

    /// etcd's `isOpPermitted`: may `ai` do `perm` on `[key, range_end)`?
    pub(crate) fn is_op_permitted(
        &self,
        ai: &AuthInfo,
        perm: PermType,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<()> {
        let s = self.state.read();
        if !s.enabled {
            return Ok(());
        }
        if ai.revision == 0 {
            return Err(Error::UserEmpty);
        }
        if ai.revision < s.revision {
            return Err(Error::AuthOldRevision);
        }
        let Some(u) = s.users.get(&ai.username) else {
            return Err(Error::PermissionDenied);
        };
        if has_root_role(u) {
            return Ok(());
        }
        match s.perms.get(&ai.username) {
            Some(p) if p.permits(perm, key, range_end) => Ok(()),
            _ => Err(Error::PermissionDenied),
        }
    }

    /// etcd's `IsAdminPermitted`: is `ai` a user with the root role?
    pub(crate) fn is_admin_permitted(&self, ai: &AuthInfo) -> Result<()> {
        let s = self.state.read();
        if !s.enabled {
            return Ok(());
        }
        if ai.username.is_empty() {
            return Err(Error::UserEmpty);
        }
        match s.users.get(&ai.username) {
            None => Err(Error::UserNotFound),
            Some(u) if has_root_role(u) => Ok(()),
            Some(_) => Err(Error::PermissionDenied),
        }
    }

    pub(crate) fn has_role(&self, user: &str, role: &str) -> bool {
        self.state
            .read()
            .users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == role))
    }

    // ---- reads --------------------------------------------------------

    pub(crate) fn user_get(&self, name: &str) -> Result<Vec<String>> {
        let s = self.state.read();
        Ok(s.users.get(name).ok_or(Error::UserNotFound)?.roles.clone())
    }

    pub(crate) fn user_list(&self) -> Vec<String> {
        self.state.read().users.keys().cloned().collect()
    }

    pub(crate) fn role_get(&self, name: &str) -> Result<Vec<Permission>> {
        let s = self.state.read();
        Ok(s.roles
            .get(name)
            .ok_or(Error::RoleNotFound)?
            .key_permission
            .clone())
    }

    pub(crate) fn role_list(&self) -> Vec<String> {
        self.state.read().roles.keys().cloned().collect()
    }

    // ---- changes (applied from raft entries) ---------------------------

    pub(crate) fn enable(&self, w: &mut TxnWrite<'_>) -> Result<()> {
        let mut s = self.state.write();
        if s.enabled {
            tracing::info!("authentication is already enabled; ignored auth enable request");
            return Ok(());
        }
        let root = s.users.get(ROOT).ok_or(Error::RootUserNotExist)?;
        if !has_root_role(root) {
            return Err(Error::RootRoleNotExist);
        }
        w.put_aux(Bucket::Auth, ENABLED_KEY, &[1]);
        s.enabled = true;
        if let Tokens::Simple(t) = &self.tokens {
            t.enable();
        }
        tracing::info!("enabled authentication");
        Ok(())
    }

    pub(crate) fn disable(&self, w: &mut TxnWrite<'_>) {
        let mut s = self.state.write();
        if !s.enabled {
            return;
        }
        w.put_aux(Bucket::Auth, ENABLED_KEY, &[0]);
        s.commit_revision(w);
        s.enabled = false;
        if let Tokens::Simple(t) = &self.tokens {
            t.disable();
        }
        tracing::info!("disabled authentication");
    }

    /// The token of an Authenticate entry at raft `index` (etcd's
    /// `Authenticate`; the password was checked by the proposer).
    pub(crate) fn authenticate(&self, name: &str, prefix: &str, index: u64) -> Result<String> {
        let revision = {
            let s = self.state.read();
            if !s.enabled {
                return Err(Error::AuthNotEnabled);
            }
            let u = s.users.get(name).ok_or(Error::AuthFailed)?;
            if u.options.as_ref().is_some_and(|o| o.no_password) {
                return Err(Error::AuthFailed);
            }
            s.revision
        };
        match &self.tokens {
            Tokens::Simple(t) => Ok(t.assign(name, prefix, index)),
            Tokens::Jwt(j) => j.assign(name, revision),
        }
    }

    /// UserAdd; `hashed_password` was set by the proposer (a request
    /// without one, and with a password, is hashed here at `bcrypt_cost`).
    pub(crate) fn user_add(
        &self,
        w: &mut TxnWrite<'_>,
        r: &AuthUserAddRequest,
        bcrypt_cost: u32,
    ) -> Result<()> {
        if r.name.is_empty() {
            return Err(Error::UserEmpty);
        }
        let options = r.options.unwrap_or(UserAddOptions { no_password: false });
        let password = if options.no_password {
            Vec::new()
        } else if !r.hashed_password.is_empty() {
            r.hashed_password.clone().into_bytes()
        } else {
            hash_password(&r.password, bcrypt_cost)?.into_bytes()
        };
        let mut s = self.state.write();
        if s.users.contains_key(&r.name) {
            return Err(Error::UserAlreadyExist);
        }
        let u = User {
            name: r.name.clone().into_bytes().into(),
            password: password.into(),
            roles: Vec::new(),
            options: Some(options),
        };
        s.put_user(w, &r.name, u);
        s.commit_revision(w);
        tracing::info!(user = %r.name, "added a user");
        Ok(())
    }

    pub(crate) fn user_delete(&self, w: &mut TxnWrite<'_>, name: &str) -> Result<()> {
        let mut s = self.state.write();
        if s.enabled && name == ROOT {
            return Err(Error::InvalidAuthMgmt);
        }
        if s.users.remove(name).is_none() {
            return Err(Error::UserNotFound);
        }
        w.delete_aux(Bucket::Auth, &key(USER_PREFIX, name));
        s.commit_revision(w);
        self.invalidate_user(name);
        tracing::info!(user = %name, "deleted a user");
        Ok(())
    }

    pub(crate) fn user_change_password(
        &self,
        w: &mut TxnWrite<'_>,
        name: &str,
        hashed: String,
    ) -> Result<()> {
        let mut s = self.state.write();
        let mut u = s.users.get(name).ok_or(Error::UserNotFound)?.clone();
        u.password = hashed.into_bytes().into();
        s.put_user(w, name, u);
        s.commit_revision(w);
        self.invalidate_user(name);
        tracing::info!(user = %name, "changed a password of a user");
        Ok(())
    }

    pub(crate) fn user_grant_role(
        &self,
        w: &mut TxnWrite<'_>,
        user: &str,
        role: &str,
    ) -> Result<()> {
        let mut s = self.state.write();
        let mut u = s.users.get(user).ok_or(Error::UserNotFound)?.clone();
        if role != ROOT && !s.roles.contains_key(role) {
            return Err(Error::RoleNotFound);
        }
        match u.roles.binary_search_by(|r| r.as_str().cmp(role)) {
            Ok(_) => {
                tracing::warn!(user, role, "ignored grant role request to a user");
                return Ok(());
            }
            Err(at) => u.roles.insert(at, role.to_string()),
        }
        s.put_user(w, user, u);
        s.commit_revision(w);
        tracing::info!(user, role, "granted a role to a user");
        Ok(())
    }

    pub(crate) fn user_revoke_role(
        &self,
        w: &mut TxnWrite<'_>,
        user: &str,
        role: &str,
    ) -> Result<()> {
        let mut s = self.state.write();
        if s.enabled && user == ROOT && role == ROOT {
            return Err(Error::InvalidAuthMgmt);
        }
        let mut u = s.users.get(user).ok_or(Error::UserNotFound)?.clone();
        let before = u.roles.len();
        u.roles.retain(|r| r != role);
        if u.roles.len() == before {
            return Err(Error::RoleNotGranted);
        }
        s.put_user(w, user, u);
        s.commit_revision(w);
        tracing::info!(user, role, "revoked a role from a user");
        Ok(())
    }

    pub(crate) fn role_add(&self, w: &mut TxnWrite<'_>, name: &str) -> Result<()> {
        if name.is_empty() {
            return Err(Error::RoleEmpty);
        }
        let mut s = self.state.write();
        if s.roles.contains_key(name) {
            return Err(Error::RoleAlreadyExist);
        }
        let r = Role {
            name: name.as_bytes().to_vec().into(),
            key_permission: Vec::new(),
        };
        s.put_role(w, name, r);
        s.commit_revision(w);
        tracing::info!(role = %name, "created a role");
        Ok(())
    }

    pub(crate) fn role_delete(&self, w: &mut TxnWrite<'_>, name: &str) -> Result<()> {
        let mut s = self.state.write();
        if s.enabled && name == ROOT {
            return Err(Error::InvalidAuthMgmt);
        }
        if s.roles.remove(name).is_none() {
            return Err(Error::RoleNotFound);
        }
        w.delete_aux(Bucket::Auth, &key(ROLE_PREFIX, name));
        let holders: Vec<(String, User)> = s
            .users
            .iter()
            .filter(|(_, u)| u.roles.iter().any(|r| r == name))
            .map(|(n, u)| (n.clone(), u.clone()))
            .collect();
        for (user, mut u) in holders {
            u.roles.retain(|r| r != name);
            s.put_user(w, &user, u);
        }
        s.commit_revision(w);
        tracing::info!(role = %name, "deleted a role");
        Ok(())
    }

    pub(crate) fn role_grant_permission(
        &self,
        w: &mut TxnWrite<'_>,
        r: &AuthRoleGrantPermissionRequest,
    ) -> Result<()> {
        let mut s = self.state.write();
        let mut role = s.roles.get(&r.name).ok_or(Error::RoleNotFound)?.clone();
        let perm = r.perm.clone().unwrap_or_default();
        let existing = role
            .key_permission
            .iter_mut()
            .find(|p| p.key == perm.key && p.range_end == perm.range_end);
        match existing {
            Some(p) => p.perm_type = perm.perm_type,
            None => {
                let at = role.key_permission.partition_point(|p| p.key <= perm.key);
                role.key_permission.insert(at, perm);
            }
        }
        s.put_role(w, &r.name, role);
        s.commit_revision(w);
        tracing::info!(role = %r.name, "granted/updated a permission to a role");
        Ok(())
    }

    pub(crate) fn role_revoke_permission(
        &self,
        w: &mut TxnWrite<'_>,
        r: &AuthRoleRevokePermissionRequest,
    ) -> Result<()> {
        let mut s = self.state.write();
        let mut role = s.roles.get(&r.role).ok_or(Error::RoleNotFound)?.clone();
        let before = role.key_permission.len();
        role.key_permission
            .retain(|p| !(p.key == r.key && p.range_end == r.range_end));
        if role.key_permission.len() == before {
            return Err(Error::PermissionNotGranted);
        }
        s.put_role(w, &r.role, role);
        s.commit_revision(w);
        tracing::info!(role = %r.role, "revoked a permission on range");
        Ok(())
    }

    fn invalidate_user(&self, name: &str) {
        if let Tokens::Simple(t) = &self.tokens {
            t.invalidate_user(name);
        }
    }
}

/// A bcrypt hash in the form etcd (Go's `x/crypto/bcrypt`) writes:
/// `$2a$<cost>$...`. Slow by design: call it off the async runtime.
pub(crate) fn hash_password(password: &str, cost: u32) -> Result<String> {
    bcrypt::hash_with_result(password, cost)
        .map(|h| h.format_for_version(bcrypt::Version::TwoA))
        .map_err(|e| Error::Internal(format!("cannot hash the password: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lessor::FakeClock;
    use etcd_mvcc::StoreOptions;
    use std::sync::Arc;
    use std::time::Duration;

    fn setup() -> (Store, AuthStore) {
        let store = Store::open_in_memory(StoreOptions::default()).unwrap();
        let tokens = Tokens::Simple(SimpleTokens::new(
            Arc::new(FakeClock::new()),
            Duration::from_secs(300),
        ));
        (store, AuthStore::new(tokens))
    }

    /// Applies `f` at `index` as the applier does.
    fn at(
        store: &Store,
        index: u64,
        f: impl FnOnce(&mut TxnWrite<'_>) -> Result<()>,
    ) -> Result<()> {
        let mut w = store.write();
        let r = f(&mut w);
        w.end(index).unwrap();
        r
    }

    fn add_user(store: &Store, a: &AuthStore, index: u64, name: &str, pw: &str) -> Result<()> {
        let r = AuthUserAddRequest {
            name: name.into(),
            hashed_password: hash_password(pw, 4)?,
            ..Default::default()
        };
        at(store, index, |w| a.user_add(w, &r, 4))
    }

    fn ai(name: &str, revision: u64) -> AuthInfo {
        AuthInfo {
            username: name.into(),
            revision,
        }
    }

    #[test]
    fn enable_needs_root_with_the_root_role_and_root_stays() {
        let (store, a) = setup();
        assert_eq!(at(&store, 1, |w| a.enable(w)), Err(Error::RootUserNotExist));
        add_user(&store, &a, 2, ROOT, "pw").unwrap();
        assert_eq!(at(&store, 3, |w| a.enable(w)), Err(Error::RootRoleNotExist));
        at(&store, 4, |w| a.user_grant_role(w, ROOT, ROOT)).unwrap();
        at(&store, 5, |w| a.enable(w)).unwrap();
        assert_eq!(
            at(&store, 6, |w| a.user_delete(w, ROOT)),
            Err(Error::InvalidAuthMgmt)
        );
        assert_eq!(
            at(&store, 7, |w| a.user_revoke_role(w, ROOT, ROOT)),
            Err(Error::InvalidAuthMgmt)
        );
        assert_eq!(
            at(&store, 8, |w| a.role_delete(w, ROOT)),
            Err(Error::InvalidAuthMgmt)
        );
        assert_eq!(a.check_password(ROOT, "nope"), Err(Error::AuthFailed));
        let rev = a.check_password(ROOT, "pw").unwrap();
        assert_eq!(rev, a.revision());
        // The hash is etcd's form.
        assert!(a.state.read().users[ROOT].password.starts_with(b"$2a$04$"));
        // Everything survives a reload (restart, snapshot image).
        let b = setup().1;
        b.load(&store).unwrap();
        assert!(b.is_enabled());
        assert_eq!(b.revision(), a.revision());
        assert_eq!(b.user_get(ROOT).unwrap(), vec![ROOT.to_string()]);
    }

    /// A hash made by Go's `x/crypto/bcrypt` (the vector of its own tests,
    /// Debian's golang-golang-x-crypto-dev), as etcd stores it: users moved
    /// from an etcd data file keep their passwords.
    #[test]
    fn go_bcrypt_hashes_verify() {
        let (store, a) = setup();
        let go_hash = "$2a$10$XajjQvNhvvRt5GSeFk1xFeyqRrsxkhBkUiQeg0dt.wU1qD4aFDcga";
        let r = AuthUserAddRequest {
            name: ROOT.into(),
            hashed_password: go_hash.into(),
            ..Default::default()
        };
        at(&store, 1, |w| a.user_add(w, &r, 4)).unwrap();
        at(&store, 2, |w| a.user_grant_role(w, ROOT, ROOT)).unwrap();
        at(&store, 3, |w| a.enable(w)).unwrap();
        assert!(a.check_password(ROOT, "allmine").is_ok());
        assert_eq!(a.check_password(ROOT, "allmine!"), Err(Error::AuthFailed));
    }

    #[test]
    fn permissions_revisions_and_errors() {
        let (store, a) = setup();
        add_user(&store, &a, 1, ROOT, "r").unwrap();
        at(&store, 2, |w| a.user_grant_role(w, ROOT, ROOT)).unwrap();
        add_user(&store, &a, 3, "alice", "a").unwrap();
        assert_eq!(
            add_user(&store, &a, 4, "alice", "a"),
            Err(Error::UserAlreadyExist)
        );
        at(&store, 5, |w| a.role_add(w, "reader")).unwrap();
        assert_eq!(
            at(&store, 6, |w| a.role_add(w, "reader")),
            Err(Error::RoleAlreadyExist)
        );
        assert_eq!(
            at(&store, 7, |w| a.user_grant_role(w, "alice", "nobody")),
            Err(Error::RoleNotFound)
        );
        let grant = AuthRoleGrantPermissionRequest {
            name: "reader".into(),
            perm: Some(Permission {
                perm_type: PermType::Read as i32,
                key: b"a".to_vec().into(),
                range_end: b"c".to_vec().into(),
            }),
        };
        at(&store, 8, |w| a.role_grant_permission(w, &grant)).unwrap();
        at(&store, 9, |w| a.user_grant_role(w, "alice", "reader")).unwrap();
        // Auth disabled: everything is permitted, credentials or not.
        assert_eq!(
            a.is_op_permitted(&AuthInfo::default(), PermType::Write, b"z", b""),
            Ok(())
        );
        at(&store, 10, |w| a.enable(w)).unwrap();
        let rev = a.revision();
        let alice = ai("alice", rev);
        assert_eq!(
            a.is_op_permitted(&alice, PermType::Read, b"a", b"c"),
            Ok(())
        );
        assert_eq!(
            a.is_op_permitted(&alice, PermType::Write, b"a", b""),
            Err(Error::PermissionDenied)
        );
        assert_eq!(
            a.is_op_permitted(&AuthInfo::default(), PermType::Read, b"a", b""),
            Err(Error::UserEmpty)
        );
        assert_eq!(a.is_admin_permitted(&alice), Err(Error::PermissionDenied));
        assert_eq!(a.is_admin_permitted(&ai(ROOT, rev)), Ok(()));
        // Revoking bumps the revision: alice's old credentials are stale.
        let revoke = AuthRoleRevokePermissionRequest {
            role: "reader".into(),
            key: b"a".to_vec().into(),
            range_end: b"c".to_vec().into(),
        };
        at(&store, 11, |w| a.role_revoke_permission(w, &revoke)).unwrap();
        assert_eq!(
            at(&store, 12, |w| a.role_revoke_permission(w, &revoke)),
            Err(Error::PermissionNotGranted)
        );
        assert_eq!(
            a.is_op_permitted(&alice, PermType::Read, b"a", b""),
            Err(Error::AuthOldRevision)
        );
        assert_eq!(
            a.is_op_permitted(&ai("alice", a.revision()), PermType::Read, b"a", b""),
            Err(Error::PermissionDenied)
        );
        assert_eq!(
            at(&store, 13, |w| a.user_revoke_role(w, "alice", "writer")),
            Err(Error::RoleNotGranted)
        );
        at(&store, 14, |w| a.role_delete(w, "reader")).unwrap();
        assert!(
            a.user_get("alice").unwrap().is_empty(),
            "role removed from holders"
        );
        assert_eq!(a.user_list(), vec!["alice".to_string(), ROOT.to_string()]);
    }

    #[test]
    fn tokens_follow_the_auth_state() {
        let (store, a) = setup();
        add_user(&store, &a, 1, ROOT, "r").unwrap();
        at(&store, 2, |w| a.user_grant_role(w, ROOT, ROOT)).unwrap();
        assert_eq!(a.authenticate(ROOT, "p", 3), Err(Error::AuthNotEnabled));
        at(&store, 4, |w| a.enable(w)).unwrap();
        let tok = a.authenticate(ROOT, "abc", 5).unwrap();
        assert_eq!(tok, "abc.5");
        assert_eq!(a.token_index(&tok), Some(5));
        assert_eq!(a.token_info(&tok), Some(ai(ROOT, a.revision())));
        at(&store, 6, |w| {
            a.user_change_password(w, ROOT, hash_password("r2", 4).unwrap())
        })
        .unwrap();
        assert_eq!(a.token_info(&tok), None, "a new password kills old tokens");
        let tok = a.authenticate(ROOT, "def", 7).unwrap();
        at(&store, 8, |w| {
            a.disable(w);
            Ok(())
        })
        .unwrap();
        assert_eq!(a.token_info(&tok), None, "disabling kills every token");
    }
}
