//! Wire-format checks of the generated etcd v3 API types against hand-computed
//! protobuf encodings: proves field numbers / wire types match etcd 3.5.
use etcd_core::pb::{authpb, etcdserverpb as pb, mvccpb, v3electionpb, v3lockpb};
use prost::Message;

fn enc<M: Message>(m: &M) -> Vec<u8> {
    m.encode_to_vec()
}

#[test]
fn put_request_full_encoding() {
    let m = pb::PutRequest {
        key: "foo".into(),
        value: "bar".into(),
        lease: 5,
        prev_kv: true,
        ..Default::default()
    };
    let want = [
        0x0a, 3, b'f', b'o', b'o', // 1: key
        0x12, 3, b'b', b'a', b'r', // 2: value
        0x18, 5, // 3: lease
        0x20, 1, // 4: prev_kv
    ];
    assert_eq!(enc(&m), want);
    assert_eq!(pb::PutRequest::decode(&want[..]).unwrap(), m);
    let m = pb::PutRequest {
        ignore_value: true,
        ignore_lease: true,
        ..Default::default()
    };
    assert_eq!(enc(&m), [0x28, 1, 0x30, 1]);
}

#[test]
fn range_request_field_numbers() {
    let d = pb::RangeRequest::default;
    assert_eq!(
        enc(&pb::RangeRequest {
            range_end: vec![0].into(),
            ..d()
        }),
        [0x12, 1, 0]
    );
    assert_eq!(enc(&pb::RangeRequest { limit: 7, ..d() }), [0x18, 7]);
    assert_eq!(enc(&pb::RangeRequest { revision: 9, ..d() }), [0x20, 9]);
    assert_eq!(
        enc(&pb::RangeRequest {
            sort_order: pb::range_request::SortOrder::Descend as i32,
            ..d()
        }),
        [0x28, 2]
    );
    assert_eq!(
        enc(&pb::RangeRequest {
            sort_target: pb::range_request::SortTarget::Value as i32,
            ..d()
        }),
        [0x30, 4]
    );
    assert_eq!(
        enc(&pb::RangeRequest {
            serializable: true,
            ..d()
        }),
        [0x38, 1]
    );
    assert_eq!(
        enc(&pb::RangeRequest {
            keys_only: true,
            ..d()
        }),
        [0x40, 1]
    );
    assert_eq!(
        enc(&pb::RangeRequest {
            count_only: true,
            ..d()
        }),
        [0x48, 1]
    );
    assert_eq!(
        enc(&pb::RangeRequest {
            min_mod_revision: 1,
            ..d()
        }),
        [0x50, 1]
    );
    assert_eq!(
        enc(&pb::RangeRequest {
            max_mod_revision: 1,
            ..d()
        }),
        [0x58, 1]
    );
    assert_eq!(
        enc(&pb::RangeRequest {
            min_create_revision: 1,
            ..d()
        }),
        [0x60, 1]
    );
    assert_eq!(
        enc(&pb::RangeRequest {
            max_create_revision: 1,
            ..d()
        }),
        [0x68, 1]
    );
    // RangeResponse: kvs = 2 (embedded mvccpb.KeyValue), more = 3, count = 4.
    let r = pb::RangeResponse {
        kvs: vec![mvccpb::KeyValue {
            key: "a".into(),
            ..Default::default()
        }],
        more: true,
        count: 2,
        ..Default::default()
    };
    assert_eq!(enc(&r), [0x12, 3, 0x0a, 1, b'a', 0x18, 1, 0x20, 2]);
}

#[test]
fn response_header_field_numbers() {
    let h = pb::ResponseHeader {
        cluster_id: 1,
        member_id: 2,
        revision: 3,
        raft_term: 4,
    };
    assert_eq!(enc(&h), [0x08, 1, 0x10, 2, 0x18, 3, 0x20, 4]);
    let r = pb::PutResponse {
        header: Some(pb::ResponseHeader {
            revision: 1,
            ..Default::default()
        }),
        prev_kv: None,
    };
    assert_eq!(enc(&r), [0x0a, 2, 0x18, 1]);
}

#[test]
fn status_response_field_numbers() {
    let d = pb::StatusResponse::default;
    assert_eq!(
        enc(&pb::StatusResponse {
            version: "3.5.0".into(),
            ..d()
        })[0],
        0x12
    );
    assert_eq!(enc(&pb::StatusResponse { db_size: 1, ..d() }), [0x18, 1]);
    assert_eq!(enc(&pb::StatusResponse { leader: 1, ..d() }), [0x20, 1]);
    assert_eq!(
        enc(&pb::StatusResponse {
            raft_index: 1,
            ..d()
        }),
        [0x28, 1]
    );
    assert_eq!(
        enc(&pb::StatusResponse {
            raft_term: 1,
            ..d()
        }),
        [0x30, 1]
    );
    assert_eq!(
        enc(&pb::StatusResponse {
            raft_applied_index: 1,
            ..d()
        }),
        [0x38, 1]
    );
    assert_eq!(
        enc(&pb::StatusResponse {
            errors: vec!["x".into()],
            ..d()
        }),
        [0x42, 1, b'x']
    );
    assert_eq!(
        enc(&pb::StatusResponse {
            db_size_in_use: 1,
            ..d()
        }),
        [0x48, 1]
    );
    assert_eq!(
        enc(&pb::StatusResponse {
            is_learner: true,
            ..d()
        }),
        [0x50, 1]
    );
}

#[test]
fn member_field_numbers() {
    let m = pb::Member {
        id: 1,
        name: "n".into(),
        peer_ur_ls: vec!["p".into()],
        client_ur_ls: vec!["c".into()],
        is_learner: true,
    };
    assert_eq!(
        enc(&m),
        [0x08, 1, 0x12, 1, b'n', 0x1a, 1, b'p', 0x22, 1, b'c', 0x28, 1]
    );
    let a = pb::MemberAddRequest {
        peer_ur_ls: vec!["p".into()],
        is_learner: true,
    };
    assert_eq!(enc(&a), [0x0a, 1, b'p', 0x10, 1]);
    assert_eq!(
        enc(&pb::MemberUpdateRequest {
            id: 2,
            peer_ur_ls: vec!["p".into()]
        }),
        [0x08, 2, 0x12, 1, b'p']
    );
    assert_eq!(
        enc(&pb::MemberListRequest { linearizable: true }),
        [0x08, 1]
    );
    assert_eq!(enc(&pb::MemberPromoteRequest { id: 3 }), [0x08, 3]);
    let r = pb::MemberAddResponse {
        member: Some(pb::Member::default()),
        members: vec![pb::Member::default()],
        header: None,
    };
    assert_eq!(enc(&r), [0x12, 0, 0x1a, 0]);
}

#[test]
fn compare_and_txn() {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    let c = pb::Compare {
        result: CompareResult::NotEqual as i32,
        target: CompareTarget::Lease as i32,
        key: "k".into(),
        target_union: Some(TargetUnion::Lease(7)),
        range_end: "z".into(),
    };
    // range_end = 64, length-delimited: tag (64<<3)|2 = 514 = varint 0x82 0x04.
    assert_eq!(
        enc(&c),
        [0x08, 3, 0x10, 4, 0x1a, 1, b'k', 0x40, 7, 0x82, 0x04, 1, b'z']
    );
    // A oneof member is encoded even when it holds the default value.
    let c = pb::Compare {
        target_union: Some(TargetUnion::Version(0)),
        ..Default::default()
    };
    assert_eq!(enc(&c), [0x20, 0]);
    assert_eq!(
        enc(&pb::Compare {
            target_union: Some(TargetUnion::CreateRevision(1)),
            ..Default::default()
        }),
        [0x28, 1]
    );
    assert_eq!(
        enc(&pb::Compare {
            target_union: Some(TargetUnion::ModRevision(1)),
            ..Default::default()
        }),
        [0x30, 1]
    );
    assert_eq!(
        enc(&pb::Compare {
            target_union: Some(TargetUnion::Value("v".into())),
            ..Default::default()
        }),
        [0x3a, 1, b'v']
    );

    use pb::request_op::Request;
    let op = |r| pb::RequestOp { request: Some(r) };
    assert_eq!(
        enc(&op(Request::RequestRange(Default::default()))),
        [0x0a, 0]
    );
    assert_eq!(enc(&op(Request::RequestPut(Default::default()))), [0x12, 0]);
    assert_eq!(
        enc(&op(Request::RequestDeleteRange(Default::default()))),
        [0x1a, 0]
    );
    assert_eq!(enc(&op(Request::RequestTxn(Default::default()))), [0x22, 0]);
    use pb::response_op::Response;
    let rop = pb::ResponseOp {
        response: Some(Response::ResponseTxn(Default::default())),
    };
    assert_eq!(enc(&rop), [0x22, 0]);

    let t = pb::TxnRequest {
        compare: vec![pb::Compare::default()],
        success: vec![pb::RequestOp::default()],
        failure: vec![pb::RequestOp::default()],
    };
    assert_eq!(enc(&t), [0x0a, 0, 0x12, 0, 0x1a, 0]);
    let t = pb::TxnResponse {
        header: None,
        succeeded: true,
        responses: vec![Default::default()],
    };
    assert_eq!(enc(&t), [0x10, 1, 0x1a, 0]);
}

#[test]
fn watch_messages() {
    use pb::watch_create_request::FilterType;
    let c = pb::WatchCreateRequest {
        key: "a".into(),
        range_end: "b".into(),
        start_revision: 3,
        progress_notify: true,
        filters: vec![FilterType::Noput as i32, FilterType::Nodelete as i32],
        prev_kv: true,
        watch_id: 9,
        fragment: true,
    };
    assert_eq!(
        enc(&c),
        [
            0x0a, 1, b'a', 0x12, 1, b'b', 0x18, 3, 0x20, 1, //
            0x2a, 2, 0, 1, // 5: packed repeated enum
            0x30, 1, 0x38, 9, 0x40, 1,
        ]
    );
    use pb::watch_request::RequestUnion;
    let w = |u| pb::WatchRequest {
        request_union: Some(u),
    };
    assert_eq!(
        enc(&w(RequestUnion::CreateRequest(Default::default()))),
        [0x0a, 0]
    );
    assert_eq!(
        enc(&w(RequestUnion::CancelRequest(pb::WatchCancelRequest {
            watch_id: 4
        }))),
        [0x12, 2, 0x08, 4]
    );
    assert_eq!(
        enc(&w(RequestUnion::ProgressRequest(Default::default()))),
        [0x1a, 0]
    );
    let r = pb::WatchResponse {
        header: None,
        watch_id: 1,
        created: true,
        canceled: true,
        compact_revision: 2,
        cancel_reason: "x".into(),
        fragment: true,
        events: vec![mvccpb::Event::default()],
    };
    assert_eq!(
        enc(&r),
        [0x10, 1, 0x18, 1, 0x20, 1, 0x28, 2, 0x32, 1, b'x', 0x38, 1, 0x5a, 0]
    );
}

#[test]
fn lease_messages() {
    assert_eq!(
        enc(&pb::LeaseGrantRequest { ttl: 10, id: 5 }),
        [0x08, 10, 0x10, 5]
    );
    let g = pb::LeaseGrantResponse {
        header: None,
        id: 5,
        ttl: 10,
        error: "e".into(),
    };
    assert_eq!(enc(&g), [0x10, 5, 0x18, 10, 0x22, 1, b'e']);
    assert_eq!(enc(&pb::LeaseRevokeRequest { id: 5 }), [0x08, 5]);
    assert_eq!(enc(&pb::LeaseKeepAliveRequest { id: 5 }), [0x08, 5]);
    assert_eq!(
        enc(&pb::LeaseKeepAliveResponse {
            header: None,
            id: 5,
            ttl: 1
        }),
        [0x10, 5, 0x18, 1]
    );
    assert_eq!(
        enc(&pb::LeaseTimeToLiveRequest { id: 5, keys: true }),
        [0x08, 5, 0x10, 1]
    );
    let t = pb::LeaseTimeToLiveResponse {
        header: None,
        id: 5,
        ttl: 1,
        granted_ttl: 2,
        keys: vec!["k".into()],
    };
    assert_eq!(enc(&t), [0x10, 5, 0x18, 1, 0x20, 2, 0x2a, 1, b'k']);
    let l = pb::LeaseLeasesResponse {
        header: None,
        leases: vec![pb::LeaseStatus { id: 1 }],
    };
    assert_eq!(enc(&l), [0x12, 2, 0x08, 1]);
    let c = pb::LeaseCheckpointRequest {
        checkpoints: vec![pb::LeaseCheckpoint {
            id: 1,
            remaining_ttl: 2,
        }],
    };
    assert_eq!(enc(&c), [0x0a, 4, 0x08, 1, 0x10, 2]);
}

#[test]
fn maintenance_messages() {
    let a = pb::AlarmRequest {
        action: pb::alarm_request::AlarmAction::Deactivate as i32,
        member_id: 3,
        alarm: pb::AlarmType::Corrupt as i32,
    };
    assert_eq!(enc(&a), [0x08, 2, 0x10, 3, 0x18, 2]);
    let m = pb::AlarmMember {
        member_id: 1,
        alarm: pb::AlarmType::Nospace as i32,
    };
    assert_eq!(enc(&m), [0x08, 1, 0x10, 1]);
    assert_eq!(
        enc(&pb::AlarmResponse {
            header: None,
            alarms: vec![m]
        }),
        [0x12, 4, 0x08, 1, 0x10, 1]
    );
    let h = pb::HashKvResponse {
        header: None,
        hash: 1,
        compact_revision: 2,
    };
    assert_eq!(enc(&h), [0x10, 1, 0x18, 2]);
    assert_eq!(enc(&pb::HashKvRequest { revision: 4 }), [0x08, 4]);
    assert_eq!(
        enc(&pb::HashResponse {
            header: None,
            hash: 1
        }),
        [0x10, 1]
    );
    let s = pb::SnapshotResponse {
        header: None,
        remaining_bytes: 1,
        blob: vec![7].into(),
    };
    assert_eq!(enc(&s), [0x10, 1, 0x1a, 1, 7]);
    assert_eq!(enc(&pb::MoveLeaderRequest { target_id: 2 }), [0x08, 2]);
    assert_eq!(
        enc(&pb::CompactionRequest {
            revision: 3,
            physical: true
        }),
        [0x08, 3, 0x10, 1]
    );
    let d = pb::DowngradeRequest {
        action: pb::downgrade_request::DowngradeAction::Cancel as i32,
        version: "3.4".into(),
    };
    assert_eq!(enc(&d), [0x08, 2, 0x12, 3, b'3', b'.', b'4']);
    let dr = pb::DeleteRangeRequest {
        key: "a".into(),
        range_end: "b".into(),
        prev_kv: true,
    };
    assert_eq!(enc(&dr), [0x0a, 1, b'a', 0x12, 1, b'b', 0x18, 1]);
    let drr = pb::DeleteRangeResponse {
        header: None,
        deleted: 1,
        prev_kvs: vec![Default::default()],
    };
    assert_eq!(enc(&drr), [0x10, 1, 0x1a, 0]);
}

#[test]
fn auth_messages() {
    let p = authpb::Permission {
        perm_type: authpb::permission::Type::Readwrite as i32,
        key: "a".into(),
        range_end: "b".into(),
    };
    assert_eq!(enc(&p), [0x08, 2, 0x12, 1, b'a', 0x1a, 1, b'b']);
    let u = authpb::User {
        name: "u".into(),
        password: "p".into(),
        roles: vec!["r".into()],
        options: Some(authpb::UserAddOptions { no_password: true }),
    };
    assert_eq!(
        enc(&u),
        [0x0a, 1, b'u', 0x12, 1, b'p', 0x1a, 1, b'r', 0x22, 2, 0x08, 1]
    );
    let r = authpb::Role {
        name: "r".into(),
        key_permission: vec![Default::default()],
    };
    assert_eq!(enc(&r), [0x0a, 1, b'r', 0x12, 0]);
    let a = pb::AuthUserAddRequest {
        name: "n".into(),
        password: "p".into(),
        options: Some(Default::default()),
        hashed_password: "h".into(),
    };
    assert_eq!(
        enc(&a),
        [0x0a, 1, b'n', 0x12, 1, b'p', 0x1a, 0, 0x22, 1, b'h']
    );
    let c = pb::AuthUserChangePasswordRequest {
        name: "n".into(),
        password: "p".into(),
        hashed_password: "h".into(),
    };
    assert_eq!(enc(&c), [0x0a, 1, b'n', 0x12, 1, b'p', 0x1a, 1, b'h']);
    assert_eq!(
        enc(&pb::AuthUserGrantRoleRequest {
            user: "u".into(),
            role: "r".into()
        }),
        [0x0a, 1, b'u', 0x12, 1, b'r']
    );
    assert_eq!(
        enc(&pb::AuthRoleGrantPermissionRequest {
            name: "n".into(),
            perm: Some(Default::default())
        }),
        [0x0a, 1, b'n', 0x12, 0]
    );
    let rv = pb::AuthRoleRevokePermissionRequest {
        role: "r".into(),
        key: "a".into(),
        range_end: "b".into(),
    };
    assert_eq!(enc(&rv), [0x0a, 1, b'r', 0x12, 1, b'a', 0x1a, 1, b'b']);
    assert_eq!(
        enc(&pb::AuthStatusResponse {
            header: None,
            enabled: true,
            auth_revision: 4
        }),
        [0x10, 1, 0x18, 4]
    );
    assert_eq!(
        enc(&pb::AuthenticateResponse {
            header: None,
            token: "t".into()
        }),
        [0x12, 1, b't']
    );
    assert_eq!(
        enc(&pb::AuthRoleGetResponse {
            header: None,
            perm: vec![Default::default()]
        }),
        [0x12, 0]
    );
    assert_eq!(
        enc(&pb::AuthUserListResponse {
            header: None,
            users: vec!["u".into()]
        }),
        [0x12, 1, b'u']
    );
}

#[test]
fn lock_and_election_messages() {
    assert_eq!(
        enc(&v3lockpb::LockRequest {
            name: "n".into(),
            lease: 5
        }),
        [0x0a, 1, b'n', 0x10, 5]
    );
    assert_eq!(
        enc(&v3lockpb::LockResponse {
            header: Some(Default::default()),
            key: "k".into()
        }),
        [0x0a, 0, 0x12, 1, b'k']
    );
    assert_eq!(
        enc(&v3lockpb::UnlockRequest { key: "k".into() }),
        [0x0a, 1, b'k']
    );
    let c = v3electionpb::CampaignRequest {
        name: "n".into(),
        lease: 5,
        value: "v".into(),
    };
    assert_eq!(enc(&c), [0x0a, 1, b'n', 0x10, 5, 0x1a, 1, b'v']);
    let k = v3electionpb::LeaderKey {
        name: "n".into(),
        key: "k".into(),
        rev: 3,
        lease: 4,
    };
    assert_eq!(enc(&k), [0x0a, 1, b'n', 0x12, 1, b'k', 0x18, 3, 0x20, 4]);
    assert_eq!(
        enc(&v3electionpb::ProclaimRequest {
            leader: Some(Default::default()),
            value: "v".into()
        }),
        [0x0a, 0, 0x12, 1, b'v']
    );
    assert_eq!(
        enc(&v3electionpb::LeaderResponse {
            header: None,
            kv: Some(Default::default())
        }),
        [0x12, 0]
    );
    assert_eq!(
        enc(&v3electionpb::CampaignResponse {
            header: None,
            leader: Some(Default::default())
        }),
        [0x12, 0]
    );
}
