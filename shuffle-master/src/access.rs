//! Who may make which master call: a pure rule over the caller, the message and which tenant
//! holds each application.
//!
//! Invariants:
//! - Calls that change the cluster's own membership or records of data placement (Raft
//!   between masters, worker registration, heartbeats, segment reports, drain reports) come
//!   only from cluster nodes, which prove themselves with a client certificate from the
//!   cluster CA. This holds with authentication off too.
//! - With authentication on, an application's calls need its own app token, and the app must
//!   be held by the token's tenant: app A's token never reaches app B's shuffles, plans,
//!   heartbeat or registration. Registering an app needs a tenant's secret, and an app id
//!   held by one tenant cannot be taken by another.
//! - Worker and master-group administration and cluster-wide listings need the admin credential or a node
//!   identity; an application's listing shows its own app only. A node (which holds or places
//!   every application's data anyway) may make any call; an admin may remove an app's data
//!   but not act as the app.

use shuffle_proto::auth::{AuthError, Caller, Principal};
use shuffle_proto::messages::Message;
use shuffle_proto::AppId;

/// Whether `msg` may only come from a cluster node.
pub fn node_only(msg: &Message) -> bool {
    matches!(
        msg,
        Message::RaftRequest(_)
            | Message::RegisterWorker(_)
            | Message::WorkerHeartbeat(_)
            | Message::ReportSegment(_)
            | Message::DrainComplete(_)
    )
}

/// What an allowed caller may see of cluster-wide listings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum View {
    /// Everything (nodes, admins, or a cluster without authentication).
    All,
    /// One application's own entries.
    App(AppId),
}

/// Decides whether `caller` may make the call `msg`. `holder_of` says which tenant holds a
/// registered application and the incarnation of that registration (None: not registered). `auth` is whether application
/// authentication is on.
pub fn authorize(
    caller: &Caller,
    auth: bool,
    msg: &Message,
    holder_of: impl Fn(&AppId) -> Option<(String, u64)>,
) -> Result<View, AuthError> {
    if node_only(msg) {
        return if caller.node {
            Ok(View::All)
        } else {
            Err(AuthError::Forbidden("this call needs a cluster identity (a node certificate)"))
        };
    }
    // A node holds or places every application's data already: it may make any call.
    if !auth || caller.node {
        return Ok(View::All);
    }
    let operator = caller.is_admin();
    // The caller speaks for `app` with a token of the registration that holds it: same
    // tenant, same incarnation (or of one that held it, when it is no longer registered: the
    // handler then says UnknownApp). A token of an earlier registration of the same id, by
    // this tenant or another, reaches nothing of the current one.
    let own_app = |app: &AppId| match &caller.principal {
        Principal::App { tenant, app: a, incarnation } => {
            a == app && holder_of(app).is_none_or(|(t, inc)| &t == tenant && inc == *incarnation)
        }
        _ => false,
    };
    let app_call = |app: &AppId| {
        if own_app(app) {
            Ok(View::All)
        } else if matches!(&caller.principal, Principal::App { app: a, .. } if a == app) {
            Err(AuthError::Forbidden("this application token is for an earlier registration of the application"))
        } else if matches!(caller.principal, Principal::App { .. }) {
            Err(AuthError::Forbidden("this application token is for another application"))
        } else {
            Err(AuthError::Forbidden("this call needs the application's token"))
        }
    };
    match msg {
        Message::GetStatus(_)
        | Message::DecommissionWorker(_)
        | Message::RecommissionWorker(_)
        | Message::RemoveWorker(_)
        | Message::ListMasters(_)
        | Message::AddMaster(_)
        | Message::RemoveMaster(_) => {
            if operator {
                Ok(View::All)
            } else {
                Err(AuthError::Forbidden("this call needs the admin credential"))
            }
        }
        Message::ListShuffles(_) | Message::ListApps(_) => match &caller.principal {
            _ if operator => Ok(View::All),
            Principal::App { app, .. } if own_app(app) => Ok(View::App(app.clone())),
            _ => Err(AuthError::Forbidden("listing needs the admin credential or an application token")),
        },
        Message::RegisterApp(m) => match &caller.principal {
            Principal::Tenant(t) => match holder_of(&m.app) {
                Some((holder, _)) if &holder != t => {
                    Err(AuthError::Forbidden("this application id belongs to another tenant"))
                }
                _ => Ok(View::All),
            },
            _ => Err(AuthError::Forbidden("registering an application needs a tenant credential")),
        },
        Message::AppHeartbeat(m) => app_call(&m.app),
        Message::UnregisterApp(m) => {
            if operator {
                Ok(View::All)
            } else {
                app_call(&m.app)
            }
        }
        Message::UnregisterShuffle(_) if operator => Ok(View::All),
        Message::RegisterShuffle(m) => app_call(&m.shuffle.app),
        Message::GetAssignment(m) => app_call(&m.shuffle.app),
        Message::Relocate(m) => app_call(&m.shuffle.app),
        Message::CommitMap(m) => app_call(&m.shuffle.app),
        Message::GetReadPlan(m) => app_call(&m.shuffle.app),
        Message::UnregisterShuffle(m) => app_call(&m.shuffle.app),
        // Anything else is not a master call; the handler answers BadRequest.
        _ => Ok(View::All),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use shuffle_proto::auth::{Claims, Scope, RIGHT_READ};
    use shuffle_proto::messages::*;
    use shuffle_proto::{ErrorCode, ShuffleKey, WireError, WorkerId};

    use super::*;

    fn app(a: &str) -> AppId {
        AppId::new(a).unwrap()
    }

    fn caller(node: bool, principal: Principal) -> Caller {
        Caller { node, principal }
    }

    /// A token of the current registration of `a` (incarnation 1 for "a", 2 for "b").
    fn app_caller(tenant: &str, a: &str) -> Caller {
        let incarnation = tenants(&app(a)).map_or(1, |(_, i)| i);
        caller(false, Principal::App { tenant: tenant.into(), app: app(a), incarnation })
    }

    /// Apps "a" (tenant t1, incarnation 1) and "b" (tenant t2, incarnation 2) are registered.
    fn tenants(a: &AppId) -> Option<(String, u64)> {
        match a.as_str() {
            "a" => Some(("t1".into(), 1)),
            "b" => Some(("t2".into(), 2)),
            _ => None,
        }
    }

    fn shuffle_calls(a: &str) -> Vec<Message> {
        let k = ShuffleKey::new(app(a), 1, 0);
        vec![
            RegisterShuffle { shuffle: k.clone(), num_maps: 1, num_partitions: 1, replication: 1 }.into(),
            GetAssignment { shuffle: k.clone() }.into(),
            Relocate {
                shuffle: k.clone(),
                partition: shuffle_proto::PartitionId(0),
                failed_epoch: shuffle_proto::Epoch(1),
                failed_worker: WorkerId::new("w").unwrap(),
                split: false,
            }
            .into(),
            CommitMap {
                shuffle: k.clone(),
                map: shuffle_proto::MapId(0),
                attempt: shuffle_proto::AttemptId(0),
                partitions: vec![],
            }
            .into(),
            GetReadPlan {
                shuffle: k.clone(),
                start_partition: shuffle_proto::PartitionId(0),
                end_partition: shuffle_proto::PartitionId(1),
                start_map: shuffle_proto::MapId(0),
                end_map: shuffle_proto::MapId(1),
            }
            .into(),
            UnregisterShuffle { shuffle: k }.into(),
            AppHeartbeat { app: app(a) }.into(),
            UnregisterApp { app: app(a) }.into(),
        ]
    }

    fn code(r: Result<View, AuthError>) -> ErrorCode {
        let e: WireError = r.unwrap_err().into();
        e.code()
    }

    #[test]
    fn cluster_internal_calls_need_a_node_identity() {
        let w = || WorkerId::new("w").unwrap();
        let internal: Vec<Message> = vec![
            RaftRequest { kind: RaftRpcKind::Vote }.into(),
            RegisterWorker {
                worker: w(),
                addr: "a:1".into(),
                capacity_bytes: 1,
                held: vec![],
                store_url: String::new(),
            }
            .into(),
            WorkerHeartbeat { worker: w(), bytes_held: 0, partitions: 0, shuffles: vec![] }.into(),
            DrainComplete { worker: w() }.into(),
        ];
        for m in &internal {
            for auth in [false, true] {
                assert_eq!(code(authorize(&Caller::anonymous(), auth, m, tenants)), ErrorCode::Unauthorized);
                assert_eq!(
                    code(authorize(&caller(false, Principal::Admin("ops".into())), auth, m, tenants)),
                    ErrorCode::Unauthorized,
                    "an admin is not a node: {}",
                    m.name()
                );
                assert!(authorize(&caller(true, Principal::None), auth, m, tenants).is_ok(), "{}", m.name());
            }
        }
    }

    #[test]
    fn an_app_token_reaches_its_own_app_only() {
        for m in shuffle_calls("a") {
            assert!(authorize(&app_caller("t1", "a"), true, &m, tenants).is_ok(), "{}", m.name());
            assert_eq!(
                code(authorize(&app_caller("t2", "b"), true, &m, tenants)),
                ErrorCode::Unauthorized,
                "{}",
                m.name()
            );
            // A token naming app "a" but signed for another tenant (after "a" was re-registered
            // by t1) does not reach it either.
            assert_eq!(code(authorize(&app_caller("t2", "a"), true, &m, tenants)), ErrorCode::Unauthorized);
            assert_eq!(code(authorize(&Caller::anonymous(), true, &m, tenants)), ErrorCode::Unauthorized);
            assert_eq!(
                code(authorize(&caller(false, Principal::Tenant("t1".into())), true, &m, tenants)),
                ErrorCode::Unauthorized,
                "a tenant secret is for registering only: {}",
                m.name()
            );
            let cap = Arc::new(Claims {
                tenant: "t1".into(),
                app: app("a"),
                incarnation: 1,
                scope: Scope::Shuffle { shuffle_id: 1, generation: 0, rights: RIGHT_READ },
                expires_unix_ms: u64::MAX,
            });
            assert_eq!(
                code(authorize(&caller(false, Principal::Capability(cap)), true, &m, tenants)),
                ErrorCode::Unauthorized,
                "capabilities are for workers: {}",
                m.name()
            );
            assert!(authorize(&Caller::anonymous(), false, &m, tenants).is_ok(), "auth off: {}", m.name());
        }
    }

    /// App "a" was unregistered and registered again (incarnation 1 now): tokens of its
    /// earlier registration, of the same tenant or another, reach none of its calls.
    #[test]
    fn a_token_of_an_earlier_registration_reaches_nothing() {
        for old in [0, 2] {
            for tenant in ["t1", "t2"] {
                let c = caller(false, Principal::App { tenant: tenant.into(), app: app("a"), incarnation: old });
                for m in shuffle_calls("a") {
                    let e: WireError = authorize(&c, true, &m, tenants).unwrap_err().into();
                    assert_eq!(e.code(), ErrorCode::Unauthorized, "{}", m.name());
                    if tenant == "t1" {
                        assert!(e.message.contains("earlier registration"), "{}", e.message);
                    }
                }
                for m in [ListShuffles {}.into(), ListApps {}.into()] {
                    assert_eq!(code(authorize(&c, true, &m, tenants)), ErrorCode::Unauthorized);
                }
            }
        }
    }

    #[test]
    fn registering_needs_a_tenant_and_keeps_an_app_with_its_tenant() {
        let reg = |a: &str| Message::from(RegisterApp { app: app(a), lease_ms: 1 });
        let t = |n: &str| caller(false, Principal::Tenant(n.into()));
        assert!(authorize(&t("t1"), true, &reg("a"), tenants).is_ok(), "again, same tenant");
        assert!(authorize(&t("t9"), true, &reg("new"), tenants).is_ok());
        assert_eq!(code(authorize(&t("t2"), true, &reg("a"), tenants)), ErrorCode::Unauthorized);
        assert_eq!(code(authorize(&Caller::anonymous(), true, &reg("new"), tenants)), ErrorCode::Unauthorized);
        assert_eq!(code(authorize(&app_caller("t1", "a"), true, &reg("a"), tenants)), ErrorCode::Unauthorized);
        assert_eq!(
            code(authorize(&caller(false, Principal::Admin("ops".into())), true, &reg("x"), tenants)),
            ErrorCode::Unauthorized
        );
    }

    #[test]
    fn operator_calls_need_the_admin_credential_or_a_node() {
        let w = || WorkerId::new("w").unwrap();
        let admin_calls: Vec<Message> = vec![
            GetStatus {}.into(),
            DecommissionWorker { worker: w() }.into(),
            RecommissionWorker { worker: w() }.into(),
            RemoveWorker { worker: w() }.into(),
            ListMasters {}.into(),
            AddMaster { id: 4, addr: "m4:9100".into(), timeout_ms: 1000 }.into(),
            RemoveMaster { id: 3, timeout_ms: 1000 }.into(),
            ListShuffles {}.into(),
            ListApps {}.into(),
        ];
        let admin = caller(false, Principal::Admin("ops".into()));
        for m in &admin_calls {
            assert_eq!(authorize(&admin, true, m, tenants), Ok(View::All), "{}", m.name());
            assert_eq!(authorize(&caller(true, Principal::None), true, m, tenants), Ok(View::All));
            assert_eq!(code(authorize(&Caller::anonymous(), true, m, tenants)), ErrorCode::Unauthorized);
            assert_eq!(
                code(authorize(&caller(false, Principal::Tenant("t1".into())), true, m, tenants)),
                ErrorCode::Unauthorized
            );
        }
        // An application lists its own entries only, and may not touch workers or masters.
        for m in &admin_calls[..7] {
            assert_eq!(code(authorize(&app_caller("t1", "a"), true, m, tenants)), ErrorCode::Unauthorized);
        }
        for m in &admin_calls[7..] {
            assert_eq!(authorize(&app_caller("t1", "a"), true, m, tenants), Ok(View::App(app("a"))));
        }
        // Operators may remove an app's data, but not act as the app.
        for m in shuffle_calls("a") {
            let r = authorize(&admin, true, &m, tenants);
            match m {
                Message::UnregisterApp(_) | Message::UnregisterShuffle(_) => assert!(r.is_ok()),
                _ => assert!(r.is_err(), "{}", m.name()),
            }
        }
    }
}
