//! The errors a client of the engine can see.
//!
//! Each variant is one of etcd's server errors; its `Display` text is
//! exactly etcd's message (what `etcdctl` prints), and
//! [`Error::code`] gives etcd's gRPC status code. The gRPC layer translates
//! with these two alone, so there is one place to compare with etcd's
//! `rpctypes`.

/// gRPC status codes used by etcd (numeric values as in the gRPC spec).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// 2 (what Go's gRPC sends for a plain error, e.g. from v3lock/v3election)
    Unknown,
    /// 3
    InvalidArgument,
    /// 5
    NotFound,
    /// 7
    PermissionDenied,
    /// 8
    ResourceExhausted,
    /// 9
    FailedPrecondition,
    /// 11
    OutOfRange,
    /// 12
    Unimplemented,
    /// 13
    Internal,
    /// 14
    Unavailable,
    /// 15
    DataLoss,
    /// 16
    Unauthenticated,
}

/// An error returned by the engine's API.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A request without a key.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// `ignore_value`/`ignore_lease` on a key that does not exist, or an
    /// empty request op in a txn.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// `ignore_value` together with a value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// `ignore_lease` together with a lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// A txn with more operations than --max-txn-ops.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// A txn that writes the same key twice.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// A sort order or target outside the enum.
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    /// The revision was compacted away.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// The revision is newer than the store.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// The lease does not exist.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// LeaseGrant with an id that is taken.
    #[error("etcdserver: lease already exists")]
    LeaseExist,
    /// LeaseGrant with a TTL above 9,000,000,000 s.
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// Lock: the lock's lease expired while waiting.
    #[error("mutex: session is expired")]
    SessionExpired,
    /// Proclaim/Resign without a leader key.
    #[error("\"leader\" field must be provided")]
    MissingLeaderKey,
    /// Proclaim by a candidate that is not (any longer) the leader.
    #[error("election: not leader")]
    ElectionNotLeader,
    /// Leader of an election nobody holds.
    #[error("election: no leader")]
    ElectionNoLeader,
    /// The request is larger than --max-request-bytes.
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// No leader: an election is running or quorum is lost.
    #[error("etcdserver: no leader")]
    NoLeader,
    /// The leader changed while the request was in flight.
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    /// The request was not applied in time.
    #[error("etcdserver: request timed out")]
    Timeout,
    /// The server is stopping.
    #[error("etcdserver: server stopped")]
    Stopped,
    /// The database reached --quota-backend-bytes.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// A CORRUPT alarm is active: writes are refused.
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    /// A member id that is not in the cluster.
    #[error("etcdserver: member not found")]
    MemberNotFound,
    /// MoveLeader to a member that is not a voter of this cluster.
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    /// A leader-only operation on a member that is not the leader.
    #[error("etcdserver: not leader")]
    NotLeader,
    /// MemberAdd with an id that is already a member.
    #[error("etcdserver: member ID already exist")]
    MemberExists,
    /// MemberAdd/MemberUpdate with a peer URL another member uses.
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    /// Peer URLs that are not URLs.
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    /// MemberPromote of a voter.
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    /// MemberPromote of a learner that has not caught up with the leader.
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    /// MemberAdd of a learner beyond the cluster's learner limit.
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    /// A membership change that would leave too few started voters for a
    /// quorum (--strict-reconfig-check).
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStartedMembers,
    /// A membership change while too few voters are connected.
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    /// A request a learner does not serve (all but Status and
    /// serializable Range).
    #[error("etcdserver: rpc not supported for learner")]
    NotSupportedForLearner,
    /// MoveLeader did not complete within the timeout.
    #[error("etcdserver: request timed out, leader transfer took too long")]
    LeaderTransferTimeout,
    /// Storage failed underneath; the server cannot go on safely.
    /// `auth enable` without a user named root.
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    /// `auth enable` while the root user lacks the root role.
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    /// UserAdd of an existing user.
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    /// A request without credentials while auth is enabled (or UserAdd without a name).
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    /// A user management request naming an unknown user.
    #[error("etcdserver: user name not found")]
    UserNotFound,
    /// RoleAdd of an existing role.
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    /// A request naming an unknown role.
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    /// RoleAdd without a name.
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    /// Authenticate with a wrong user or password.
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    /// Authenticate of a user added with `--no-password` (etcd sends this text with code Unknown).
    #[error("auth: authentication failed, password was given for no password user")]
    NoPasswordUser,
    /// The user lacks the permission a request needs.
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    /// UserRevokeRole of a role the user does not have.
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    /// RoleRevokePermission of a permission the role does not have.
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    /// Authenticate while auth is disabled.
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    /// A token that is unknown, expired or badly signed.
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    /// Removing root or its root role while auth is enabled.
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    /// The auth state changed after the caller's token was checked: authenticate again.
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    /// Authenticate with a JWT provider that only has a public key.
    #[error("auth: token signing attempted with verify-only key")]
    VerifyOnly,
    /// An error etcd sends as is, with code Unknown: the auth errors of the
    /// Maintenance admin checks (`auth: permission denied`, ...), which
    /// etcd's `authMaintenanceServer` returns without translating.
    #[error("{0}")]
    Unknown(String),
    /// A failure inside the member (an I/O error, a task that died); the
    /// text says what. gRPC Internal.
    #[error("etcdserver: {0}")]
    Internal(String),
}

impl Error {
    /// etcd's gRPC status code for this error.
    pub fn code(&self) -> Code {
        use Error::*;
        match self {
            EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey
            | InvalidSortOption | RequestTooLarge => Code::InvalidArgument,
            Compacted | FutureRevision => Code::OutOfRange,
            LeaseNotFound | MemberNotFound => Code::NotFound,
            LeaseExist => Code::FailedPrecondition,
            LeaseTtlTooLarge => Code::OutOfRange,
            SessionExpired | MissingLeaderKey | ElectionNotLeader | ElectionNoLeader => {
                Code::Unknown
            }
            NoSpace => Code::ResourceExhausted,
            Corrupt => Code::DataLoss,
            BadLeaderTransferee => Code::FailedPrecondition,
            NotLeader => Code::FailedPrecondition,
            MemberExists
            | PeerUrlExists
            | MemberNotLearner
            | LearnerNotReady
            | TooManyLearners
            | NotEnoughStartedMembers => Code::FailedPrecondition,
            MemberBadUrls => Code::InvalidArgument,
            NoLeader
            | LeaderChanged
            | Timeout
            | Stopped
            | Unhealthy
            | LeaderTransferTimeout
            | NotSupportedForLearner => Code::Unavailable,
            RootUserNotExist | RootRoleNotExist | UserAlreadyExist | UserNotFound
            | RoleAlreadyExist | RoleNotFound | RoleNotGranted | PermissionNotGranted
            | AuthNotEnabled => Code::FailedPrecondition,
            UserEmpty | RoleEmpty | AuthFailed | InvalidAuthMgmt | AuthOldRevision => {
                Code::InvalidArgument
            }
            NoPasswordUser | VerifyOnly | Unknown(_) => Code::Unknown,
            PermissionDenied => Code::PermissionDenied,
            InvalidAuthToken => Code::Unauthenticated,
            Internal(_) => Code::Internal,
        }
    }
}

/// Errors between members (answers to peer queries, peer_query.rs) travel
/// as a number plus etcd's text, so the asking member rebuilds the very
/// error (and so the same gRPC code and message) without parsing text.
/// The numbers are part of the peer protocol: append, never renumber.
/// 1 is [`Error::Internal`], whose text is carried beside the number.
const WIRE_CODES: [(u32, Error); 54] = [
    (2, Error::EmptyKey),
    (3, Error::KeyNotFound),
    (4, Error::ValueProvided),
    (5, Error::LeaseProvided),
    (6, Error::TooManyOps),
    (7, Error::DuplicateKey),
    (8, Error::InvalidSortOption),
    (9, Error::Compacted),
    (10, Error::FutureRevision),
    (11, Error::LeaseNotFound),
    (12, Error::LeaseExist),
    (13, Error::LeaseTtlTooLarge),
    (14, Error::SessionExpired),
    (15, Error::MissingLeaderKey),
    (16, Error::ElectionNotLeader),
    (17, Error::ElectionNoLeader),
    (18, Error::RequestTooLarge),
    (19, Error::NoLeader),
    (20, Error::LeaderChanged),
    (21, Error::Timeout),
    (22, Error::Stopped),
    (23, Error::NoSpace),
    (24, Error::MemberNotFound),
    (25, Error::BadLeaderTransferee),
    (26, Error::NotLeader),
    (27, Error::MemberExists),
    (28, Error::PeerUrlExists),
    (29, Error::MemberBadUrls),
    (30, Error::MemberNotLearner),
    (31, Error::LearnerNotReady),
    (32, Error::TooManyLearners),
    (33, Error::NotEnoughStartedMembers),
    (34, Error::Unhealthy),
    (35, Error::NotSupportedForLearner),
    (36, Error::LeaderTransferTimeout),
    (37, Error::RootUserNotExist),
    (38, Error::RootRoleNotExist),
    (39, Error::UserAlreadyExist),
    (40, Error::UserEmpty),
    (41, Error::UserNotFound),
    (42, Error::RoleAlreadyExist),
    (43, Error::RoleNotFound),
    (44, Error::RoleEmpty),
    (45, Error::AuthFailed),
    (46, Error::NoPasswordUser),
    (47, Error::PermissionDenied),
    (48, Error::RoleNotGranted),
    (49, Error::PermissionNotGranted),
    (50, Error::AuthNotEnabled),
    (51, Error::InvalidAuthToken),
    (52, Error::InvalidAuthMgmt),
    (53, Error::AuthOldRevision),
    (54, Error::VerifyOnly),
    (55, Error::Corrupt),
];

/// [`Error::Internal`] on the wire.
const WIRE_INTERNAL: u32 = 1;

impl Error {
    /// This error's number between members (see [`WIRE_CODES`]).
    pub(crate) fn wire_code(&self) -> u32 {
        // `Internal` is not in the table: it falls through to its number.
        WIRE_CODES
            .iter()
            .find(|(_, e)| e == self)
            .map_or(WIRE_INTERNAL, |(c, _)| *c)
    }

    /// The error a member sent as `code` with text `message`; an unknown
    /// number (a newer member) becomes `Internal` with the text.
    pub(crate) fn from_wire(code: u32, message: &str) -> Error {
        WIRE_CODES
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, e)| e.clone())
            .unwrap_or_else(|| {
                Error::Internal(message.trim_start_matches("etcdserver: ").to_string())
            })
    }
}

#[cfg(test)]
mod wire_tests {
    use super::*;

    #[test]
    fn every_error_round_trips_between_members() {
        let mut codes: Vec<u32> = WIRE_CODES.iter().map(|(c, _)| *c).collect();
        codes.push(WIRE_INTERNAL);
        let n = codes.len();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), n, "wire codes are unique");
        for (_, e) in WIRE_CODES.iter() {
            let back = Error::from_wire(e.wire_code(), &e.to_string());
            assert_eq!(&back, e);
            assert_eq!(back.code(), e.code());
        }
        let internal = Error::Internal("disk on fire".into());
        assert_eq!(
            Error::from_wire(internal.wire_code(), &internal.to_string()),
            internal
        );
        assert_eq!(
            Error::from_wire(999, "etcdserver: something new"),
            Error::Internal("something new".into())
        );
    }
}

impl From<etcd_mvcc::Error> for Error {
    fn from(e: etcd_mvcc::Error) -> Self {
        match e {
            etcd_mvcc::Error::Compacted => Error::Compacted,
            etcd_mvcc::Error::FutureRevision => Error::FutureRevision,
            other => Error::Internal(other.to_string()),
        }
    }
}

/// Why a watch create request was refused: sent as the `cancel_reason` of
/// the response (etcd's `mvcc` watch errors, same text).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    /// `range_end` is not above `key`.
    #[error("mvcc: watcher range is empty")]
    EmptyRange,
    /// A client-chosen watch id already used on the stream.
    #[error("mvcc: duplicate watch ID provided on the WatchStream")]
    DuplicateId,
}

/// Errors of starting or stopping the engine (not client-facing).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid; the text says which setting and why.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The data directory cannot be used; the text says why.
    #[error("data directory {path}: {reason}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The WAL could not be opened or created.
    #[error("wal: {0}")]
    Wal(#[from] etcd_wal::Error),
    /// The MVCC store could not be opened.
    #[error("mvcc: {0}")]
    Mvcc(#[from] etcd_mvcc::Error),
    /// The raft node could not start.
    #[error("raft: {0}")]
    Raft(#[from] etcd_raft_node::Error),
    /// An I/O error on the data directory.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl StartError {
    /// A [`StartError::DataDir`]: `path` cannot be used, for `reason`.
    pub(crate) fn data_dir(path: &std::path::Path, reason: impl std::fmt::Display) -> StartError {
        StartError::DataDir {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }
}

/// Result alias for client-facing calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;
