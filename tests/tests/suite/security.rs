//! Who may call what: peers without a cluster identity are refused cluster-internal calls,
//! applications are closed to each other, operator calls need the admin credential, and
//! nothing changes when a refused caller tries; a node's memory stays bounded whatever peers
//! announce.

use std::time::Duration;

use shoal_tests::Cluster;
use shuffle_proto::auth::{now_unix_ms, Claims, Credential, Scope, SigningKeys, RIGHT_READ, RIGHT_WRITE};
use shuffle_proto::batch::{encode_batch, BatchView, Codec, StreamRecords};
use shuffle_proto::messages::*;
use shuffle_proto::transport::{generate_cluster_tls, Client, ClientOptions, Tls, TlsSource, TransportError};
use shuffle_proto::{AppId, AttemptId, ErrorCode, MapId, PartitionId, ShuffleKey, WorkerId};

fn register_as(worker: &str) -> RegisterWorker {
    RegisterWorker {
        worker: WorkerId::new(worker).unwrap(),
        addr: "127.0.0.1:9".into(),
        capacity_bytes: 1 << 30,
        held: vec![],
        store_url: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_internal_calls_need_a_node_certificate() -> anyhow::Result<()> {
    let c = Cluster::start(1).await?;
    let TlsSource::Files { ca, .. } = &c.tls else { anyhow::bail!("the harness uses certificate files") };
    let anonymous = Client::new(&Tls::load(&TlsSource::CaOnly { ca: ca.clone() })?, ClientOptions::default())?;
    let before = c.status().await?;

    // No client certificate: every cluster-internal call is refused with Unauthorized.
    let calls: Vec<Message> = vec![
        register_as("intruder").into(),
        WorkerHeartbeat { worker: WorkerId::new("w0")?, bytes_held: 0, partitions: 0, shuffles: vec![] }.into(),
        DrainComplete { worker: WorkerId::new("w0")? }.into(),
        RaftRequest { kind: RaftRpcKind::Vote }.into(),
    ];
    for m in &calls {
        let (reply, _) = anonymous.call(&c.master_addr, m, &[]).await?;
        match reply {
            Message::WireError(e) => assert_eq!(e.code(), ErrorCode::Unauthorized, "{}: {e}", m.name()),
            other => panic!("{} was answered: {other:?}", m.name()),
        }
    }

    // A certificate from another CA does not even complete the handshake.
    let other = tempfile::tempdir()?;
    generate_cluster_tls(other.path())?;
    let foreign =
        TlsSource::Files { cert: other.path().join("node.pem"), key: other.path().join("node.key"), ca: ca.clone() };
    let opts = ClientOptions { connect_timeout: Duration::from_secs(2), ..Default::default() };
    let foreign = Client::new(&Tls::load(&foreign)?, opts)?;
    let err = foreign.call(&c.master_addr, &register_as("intruder").into(), &[]).await.unwrap_err();
    assert!(!matches!(err, TransportError::Remote(_)), "a foreign peer got an answer: {err:?}");

    // Nothing changed: no new worker, w0 still active.
    let after = c.status().await?;
    let ids = |s: &ClusterStatus| s.workers.iter().map(|w| (w.id.clone(), w.state.clone())).collect::<Vec<_>>();
    assert_eq!(ids(&before), ids(&after));
    assert!(after.workers.iter().all(|w| w.id.as_str() != "intruder"));

    // The cluster's own node certificate registers fine.
    let _: WorkerRegistered = c.mc.call_typed(register_as("w9")).await?;
    c.shutdown().await;
    Ok(())
}

/// Hostile archive bytes get a fixed message: no addresses or decoder internals reach a peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_a_code_and_a_fixed_message() -> anyhow::Result<()> {
    let c = Cluster::start(1).await?;
    let conn = c.client.connection(&c.master_addr).await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let header = shuffle_proto::frame::FrameHeader { kind: 30, meta_len: 64, body_len: 0, auth_len: 0 };
    send.write_all(&header.encode()).await?;
    send.write_all(&[0xA5; 64]).await?;
    let _ = send.finish();
    let mut body = Vec::new();
    match shuffle_proto::frame::read_frame(&mut recv, &Default::default(), &mut body).await? {
        Some(Message::WireError(e)) => {
            assert_eq!(e.code(), ErrorCode::Malformed);
            assert!(!e.message.contains("0x") && e.message.len() < 80, "leaks detail: {}", e.message);
        }
        other => panic!("{other:?}"),
    }
    c.shutdown().await;
    Ok(())
}

/// A peer's reply to one call: the error code if it was refused.
async fn refused(client: &Client, addr: &str, m: &Message, auth: &[u8], body: &[u8]) -> Option<ErrorCode> {
    match client.call_as(addr, m, auth, body).await {
        Ok((Message::WireError(e), _)) => Some(e.code()),
        Ok(_) => None,
        Err(TransportError::Remote(e)) => Some(e.code()),
        Err(e) => panic!("{}: transport failure {e}", m.name()),
    }
}

fn encoded(c: &Credential) -> Vec<u8> {
    c.encode().unwrap()
}

/// Two tenants' applications on one cluster: B can never push to, read, plan, list, take,
/// unregister or remove A's data; capabilities are checked offline by workers (expired,
/// tampered, wrong shuffle, another generation, wrong right); admin calls need the admin
/// credential. After every refusal A's data reads back unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applications_are_closed_to_each_other_and_operators_need_the_admin_credential() -> anyhow::Result<()> {
    let c = Cluster::start(2).await?;
    let app_a = AppId::new("app-a")?;
    let (asg_a, token_a) = c.register_as(0, "app-a", 0, 1, 2).await?;
    let (asg_b, token_b) = c.register_as(1, "app-b", 0, 1, 2).await?;
    let key_a = asg_a.shuffle.clone();
    let loc = asg_a.locations[0].clone();
    let worker = loc.primary.addr.clone();
    let outsider = Client::new(&Tls::load(&c.ca_only())?, ClientOptions::default())?;
    let a_master = c.outsider(Some(&token_a))?;
    let b_master = c.outsider(Some(&token_b))?;

    // A pushes with its write capability and commits: the one batch B must never reach.
    let raw = shoal_tests::rows(0, 0, 50, 1);
    let mut batch = Vec::new();
    let crc = encode_batch(&raw, Codec::Lz4, &mut batch)?;
    let push = |key: &ShuffleKey, seq: u32| -> Message {
        PushBatch {
            shuffle: key.clone(),
            partition: loc.partition,
            map: MapId(0),
            attempt: AttemptId(1),
            seq,
            epoch: loc.epoch,
            flags: 0,
        }
        .into()
    };
    assert_eq!(refused(&outsider, &worker, &push(&key_a, 0), &[], &batch).await, Some(ErrorCode::Unauthorized));
    assert_eq!(refused(&outsider, &worker, &push(&key_a, 0), &asg_a.capability, &batch).await, None);
    let stat = PartitionStat {
        partition: loc.partition,
        bytes: raw.len() as u64,
        crc_sum: crc,
        batches: 1,
        epochs: vec![loc.epoch],
    };
    let _: MapCommitted = a_master
        .call_typed(CommitMap { shuffle: key_a.clone(), map: MapId(0), attempt: AttemptId(1), partitions: vec![stat] })
        .await?;
    let get_plan = |key: &ShuffleKey| -> Message {
        GetReadPlan {
            shuffle: key.clone(),
            start_partition: PartitionId(0),
            end_partition: PartitionId(1),
            start_map: MapId(0),
            end_map: MapId(1),
        }
        .into()
    };
    let plan_a: ReadPlan = a_master.call_typed(get_plan(&key_a)).await?;
    let open = |key: &ShuffleKey| -> Message {
        OpenPartition {
            shuffle: key.clone(),
            partition: PartitionId(0),
            start_map: MapId(0),
            end_map: MapId(1),
            attempts: vec![MapAttemptRef { map: MapId(0), attempt: AttemptId(1) }],
        }
        .into()
    };
    let read_back = |cap: Vec<u8>| {
        let (outsider, worker, msg) = (outsider.clone(), worker.clone(), open(&key_a));
        async move {
            let (_s, mut recv) = outsider.open_as(&worker, &msg, &cap, &[]).await?;
            let (mut out, mut body) = (Vec::new(), Vec::new());
            loop {
                match shuffle_proto::frame::read_frame(&mut recv, &Default::default(), &mut body).await? {
                    Some(Message::Chunk(_)) => {
                        for r in StreamRecords::new(&body, 1 << 26) {
                            BatchView::parse_exact(r?.batch, 1 << 26)?.decode_into(&mut out)?;
                        }
                    }
                    Some(Message::EndOfStream(_)) => return anyhow::Ok(Ok(out)),
                    Some(Message::WireError(e)) => return anyhow::Ok(Err(e.code())),
                    other => anyhow::bail!("unexpected {other:?}"),
                }
            }
        }
    };
    assert_eq!(read_back(plan_a.capability.clone()).await?, Ok(raw.clone()));

    // B, with every credential it has, against A's data.
    let b_secret = encoded(&c.tenant(1)?);
    let plan_b: ReadPlan = b_master.call_typed(get_plan(&asg_b.shuffle)).await?;
    for (what, auth) in [
        ("B's write capability", asg_b.capability.clone()),
        ("B's read capability", plan_b.capability.clone()),
        ("B's app token", encoded(&token_b)),
        ("B's tenant secret", b_secret.clone()),
    ] {
        assert_eq!(
            refused(&outsider, &worker, &push(&key_a, 9), &auth, &batch).await,
            Some(ErrorCode::Unauthorized),
            "push with {what}"
        );
        assert_eq!(read_back(auth.clone()).await?, Err(ErrorCode::Unauthorized), "read with {what}");
    }
    let master = c.master_addr.clone();
    let b_calls: Vec<Message> = vec![
        get_plan(&key_a),
        GetAssignment { shuffle: key_a.clone() }.into(),
        RegisterShuffle {
            shuffle: ShuffleKey::new(app_a.clone(), 5, 0),
            num_maps: 1,
            num_partitions: 1,
            replication: 1,
        }
        .into(),
        CommitMap { shuffle: key_a.clone(), map: MapId(0), attempt: AttemptId(2), partitions: vec![] }.into(),
        UnregisterShuffle { shuffle: key_a.clone() }.into(),
        UnregisterApp { app: app_a.clone() }.into(),
        AppHeartbeat { app: app_a.clone() }.into(),
    ];
    for m in &b_calls {
        for (what, auth) in [("token", encoded(&token_b)), ("secret", b_secret.clone()), ("none", Vec::new())] {
            assert_eq!(
                refused(&outsider, &master, m, &auth, &[]).await,
                Some(ErrorCode::Unauthorized),
                "{} with B's {what}",
                m.name()
            );
        }
    }
    // B cannot take A's app id, and sees only its own app in listings.
    let take = RegisterApp { app: app_a.clone(), lease_ms: 1000 }.into();
    assert_eq!(refused(&outsider, &master, &take, &b_secret, &[]).await, Some(ErrorCode::Unauthorized));
    let apps: AppList = b_master.call_typed(ListApps {}).await?;
    assert_eq!(apps.apps.iter().map(|a| a.app.as_str().to_string()).collect::<Vec<_>>(), vec!["app-b".to_string()]);
    let shuffles: ShuffleList = b_master.call_typed(ListShuffles {}).await?;
    assert!(shuffles.shuffles.iter().all(|s| s.shuffle.app.as_str() == "app-b") && !shuffles.shuffles.is_empty());

    // Capabilities, forged or misused, checked by the worker alone.
    let keys = SigningKeys::load(&c.auth.signing_keys)?;
    // The registration of A's app the worker serves: forgeries below differ in one way only.
    let inc_a = incarnation_of(&asg_a.capability)?;
    let cap = |app: &AppId, shuffle_id, generation, rights, expires| {
        keys.sign(&Claims {
            tenant: "tenant-a".into(),
            app: app.clone(),
            incarnation: inc_a,
            scope: Scope::Shuffle { shuffle_id, generation, rights },
            expires_unix_ms: expires,
        })
        .unwrap()
    };
    let later = now_unix_ms() + 600_000;
    let expired = cap(&app_a, 0, 0, RIGHT_WRITE | RIGHT_READ, now_unix_ms() - 1);
    let other_shuffle = cap(&app_a, 1, 0, RIGHT_WRITE | RIGHT_READ, later);
    let other_generation = cap(&app_a, 0, 1, RIGHT_WRITE | RIGHT_READ, later);
    let Credential::Token { key_id, claims, signature } = cap(&app_a, 0, 0, RIGHT_READ, later) else { unreachable!() };
    let mut forged = claims.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let tampered = Credential::Token { key_id, claims: forged, signature };
    let foreign = SigningKeys::parse(&SigningKeys::generate_file(1)?)?.sign(&Claims {
        tenant: "tenant-a".into(),
        app: app_a.clone(),
        incarnation: inc_a,
        scope: Scope::Shuffle { shuffle_id: 0, generation: 0, rights: RIGHT_WRITE | RIGHT_READ },
        expires_unix_ms: later,
    })?;
    for (what, c) in [
        ("expired", &expired),
        ("for another shuffle", &other_shuffle),
        ("for another generation", &other_generation),
        ("tampered", &tampered),
        ("signed by a foreign key", &foreign),
    ] {
        assert_eq!(
            refused(&outsider, &worker, &push(&key_a, 9), &encoded(c), &batch).await,
            Some(ErrorCode::Unauthorized),
            "push with a capability {what}"
        );
        assert_eq!(read_back(encoded(c)).await?, Err(ErrorCode::Unauthorized), "read with a capability {what}");
    }
    // A read capability does not write; a write capability does not read.
    assert_eq!(
        refused(&outsider, &worker, &push(&key_a, 9), &plan_a.capability, &batch).await,
        Some(ErrorCode::Unauthorized)
    );
    assert_eq!(read_back(asg_a.capability.clone()).await?, Err(ErrorCode::Unauthorized));
    // The same capability, replayed against generation 1 of the same shuffle.
    let gen1 = ShuffleKey::new(app_a.clone(), 0, 1);
    let _: ShuffleAssignment = a_master
        .call_typed(RegisterShuffle { shuffle: gen1.clone(), num_maps: 1, num_partitions: 2, replication: 1 })
        .await?;
    assert_eq!(
        refused(&outsider, &worker, &push(&gen1, 0), &asg_a.capability, &batch).await,
        Some(ErrorCode::Unauthorized)
    );

    // Operators: worker and master administration and status need the admin credential.
    let w0 = WorkerId::new("w0")?;
    let admin_calls: Vec<Message> = vec![
        GetStatus {}.into(),
        DecommissionWorker { worker: w0.clone() }.into(),
        RecommissionWorker { worker: w0.clone() }.into(),
        RemoveWorker { worker: w0.clone() }.into(),
        ListMasters {}.into(),
        AddMaster { id: 9, addr: "127.0.0.1:9".into(), timeout_ms: 1000 }.into(),
        RemoveMaster { id: 1, timeout_ms: 1000 }.into(),
        ListShuffles {}.into(),
        ListApps {}.into(),
    ];
    for m in &admin_calls {
        for (what, auth) in [("nothing", Vec::new()), ("a tenant secret", b_secret.clone())] {
            assert_eq!(
                refused(&outsider, &master, m, &auth, &[]).await,
                Some(ErrorCode::Unauthorized),
                "{} with {what}",
                m.name()
            );
        }
    }
    for m in &admin_calls[4..] {
        assert_eq!(refused(&outsider, &master, m, &[], &[]).await, Some(ErrorCode::Unauthorized));
    }
    let admin = c.outsider(Some(&c.admin()?))?;
    let st: ClusterStatus = admin.call_typed(GetStatus {}).await?;
    assert!(st.workers.iter().all(|w| w.state == WorkerState::Active), "no refused call drained a worker");
    let all: AppList = admin.call_typed(ListApps {}).await?;
    assert_eq!(all.apps.len(), 2);

    // Nothing changed for A: its plan and its data are as committed.
    let again: ReadPlan = a_master.call_typed(get_plan(&key_a)).await?;
    assert_eq!(again.partitions, plan_a.partitions);
    assert_eq!(read_back(again.capability).await?, Ok(raw));
    c.shutdown().await;
    Ok(())
}

/// A read plan of partition 0, map 0 of `key`.
fn plan_of_partition_0(key: &ShuffleKey) -> GetReadPlan {
    GetReadPlan {
        shuffle: key.clone(),
        start_partition: PartitionId(0),
        end_partition: PartitionId(1),
        start_map: MapId(0),
        end_map: MapId(1),
    }
}

/// The app registration a capability was issued for.
fn incarnation_of(capability: &[u8]) -> anyhow::Result<u64> {
    let claims = Credential::decode(capability)?.unverified_claims();
    claims.map(|c| c.incarnation).ok_or_else(|| anyhow::anyhow!("not a token"))
}

/// Reads partition 0 of `key` from `worker` with `cap`: the decoded rows, or the refusal.
async fn read_rows(
    client: &Client,
    worker: &str,
    key: &ShuffleKey,
    attempts: Vec<MapAttemptRef>,
    cap: &[u8],
) -> anyhow::Result<Result<Vec<u8>, ErrorCode>> {
    let msg: Message = OpenPartition {
        shuffle: key.clone(),
        partition: PartitionId(0),
        start_map: MapId(0),
        end_map: MapId(u32::MAX),
        attempts,
    }
    .into();
    let (_s, mut recv) = client.open_as(worker, &msg, cap, &[]).await?;
    let (mut out, mut body) = (Vec::new(), Vec::new());
    loop {
        match shuffle_proto::frame::read_frame(&mut recv, &Default::default(), &mut body).await? {
            Some(Message::Chunk(_)) => {
                for r in StreamRecords::new(&body, 1 << 26) {
                    BatchView::parse_exact(r?.batch, 1 << 26)?.decode_into(&mut out)?;
                }
            }
            Some(Message::EndOfStream(_)) => return Ok(Ok(out)),
            Some(Message::WireError(e)) => return Ok(Err(e.code())),
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
}

/// An app id released by one tenant and taken by another (the attack seen from outside: the
/// victim pushes and unregisters; the attacker registers the same id and shuffle key at once,
/// commits the victim's map attempt ids and reads). The attacker reads nothing of the
/// victim's, and the victim's token and capabilities are refused everywhere afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_id_taken_again_reads_nothing_of_its_previous_holder() -> anyhow::Result<()> {
    let c = Cluster::start(1).await?;
    let outsider = Client::new(&Tls::load(&c.ca_only())?, ClientOptions::default())?;
    let (asg_v, token_v) = c.register_as(0, "app-shared", 0, 1, 1).await?;
    let key = asg_v.shuffle.clone();
    let loc = asg_v.locations[0].clone();
    let worker = loc.primary.addr.clone();
    let victim = c.outsider(Some(&token_v))?;
    let push = |seq: u32, epoch| -> Message {
        PushBatch {
            shuffle: key.clone(),
            partition: loc.partition,
            map: MapId(0),
            attempt: AttemptId(1),
            seq,
            epoch,
            flags: 0,
        }
        .into()
    };
    let secret_rows = shoal_tests::rows(0, 0, 64, 7);
    let mut batch = Vec::new();
    encode_batch(&secret_rows, Codec::Lz4, &mut batch)?;
    for seq in 0..4 {
        assert_eq!(refused(&outsider, &worker, &push(seq, loc.epoch), &asg_v.capability, &batch).await, None);
    }
    let plan_v: ReadPlan = victim.call_typed(plan_of_partition_0(&key)).await?;
    let attempts = vec![MapAttemptRef { map: MapId(0), attempt: AttemptId(1) }];
    let Ok(before) = read_rows(&outsider, &worker, &key, attempts.clone(), &plan_v.capability).await? else {
        anyhow::bail!("the victim cannot read its own data")
    };
    assert_eq!(before.len(), 4 * secret_rows.len());
    let _: Ack = victim.call_typed(UnregisterApp { app: key.app.clone() }).await?;

    // Another tenant takes the id and the same shuffle key at once (before any deletion).
    let (asg_a, token_a) = c.register_as(1, "app-shared", 0, 1, 1).await?;
    assert!(incarnation_of(&asg_a.capability)? > incarnation_of(&asg_v.capability)?);
    let attacker = c.outsider(Some(&token_a))?;
    let loc_a = asg_a.locations[0].clone();
    // It pushes rows of its own under the victim's map and attempt ids, commits and reads.
    let mine = shoal_tests::rows(0, 0, 10, 99);
    let mut b2 = Vec::new();
    let crc = encode_batch(&mine, Codec::Lz4, &mut b2)?;
    let push_a: Message = PushBatch {
        shuffle: key.clone(),
        partition: loc_a.partition,
        map: MapId(0),
        attempt: AttemptId(1),
        seq: 0,
        epoch: loc_a.epoch,
        flags: 0,
    }
    .into();
    assert_eq!(refused(&outsider, &loc_a.primary.addr, &push_a, &asg_a.capability, &b2).await, None);
    let _: MapCommitted = attacker
        .call_typed(CommitMap {
            shuffle: key.clone(),
            map: MapId(0),
            attempt: AttemptId(1),
            partitions: vec![PartitionStat {
                partition: PartitionId(0),
                bytes: mine.len() as u64,
                crc_sum: crc,
                batches: 1,
                epochs: vec![loc_a.epoch],
            }],
        })
        .await?;
    let plan_a: ReadPlan = attacker.call_typed(plan_of_partition_0(&key)).await?;
    let read = read_rows(&outsider, &worker, &key, attempts.clone(), &plan_a.capability).await?;
    assert_eq!(read, Ok(mine), "the new holder read rows that were not its own");

    // The previous holder: refused at the masters and at the worker, with every credential.
    for (what, m) in [
        ("heartbeat", Message::from(AppHeartbeat { app: key.app.clone() })),
        ("assignment", GetAssignment { shuffle: key.clone() }.into()),
        ("plan", plan_of_partition_0(&key).into()),
        ("unregister", UnregisterApp { app: key.app.clone() }.into()),
    ] {
        assert_eq!(
            refused(&outsider, &c.master_addr, &m, &encoded(&token_v), &[]).await,
            Some(ErrorCode::Unauthorized),
            "the old token's {what}"
        );
    }
    assert_eq!(
        refused(&outsider, &worker, &push(9, loc_a.epoch), &asg_v.capability, &batch).await,
        Some(ErrorCode::Unauthorized),
        "the old write capability"
    );
    assert_eq!(
        read_rows(&outsider, &worker, &key, attempts.clone(), &plan_v.capability).await?,
        Err(ErrorCode::Unauthorized),
        "the old read capability"
    );
    c.shutdown().await;
    Ok(())
}

/// A replica copy skips the primary (its copy, its split accounting): a tenant's capability
/// cannot send one. Pushes naming an epoch or partition the masters never issued are refused
/// without a store, and cannot make the worker ask the masters at will.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_copies_come_from_nodes_and_unissued_epochs_are_refused() -> anyhow::Result<()> {
    let c = Cluster::start(1).await?;
    let outsider = Client::new(&Tls::load(&c.ca_only())?, ClientOptions::default())?;
    let (asg, _) = c.register_as(0, "app-r", 0, 1, 2).await?;
    let loc = asg.locations[0].clone();
    let mut batch = Vec::new();
    encode_batch(&shoal_tests::rows(0, 0, 8, 1), Codec::Lz4, &mut batch)?;
    let push = |partition: u32, epoch: u64, flags: u8, seq: u32| -> Message {
        PushBatch {
            shuffle: asg.shuffle.clone(),
            partition: PartitionId(partition),
            map: MapId(0),
            attempt: AttemptId(1),
            seq,
            epoch: shuffle_proto::Epoch(epoch),
            flags,
        }
        .into()
    };
    let w = &loc.primary.addr;
    assert_eq!(
        refused(&outsider, w, &push(0, loc.epoch.0, PUSH_FLAG_REPLICA, 0), &asg.capability, &batch).await,
        Some(ErrorCode::Unauthorized),
        "a tenant's replica-flagged push"
    );
    let far = loc.epoch.0 + 1_000_000;
    assert_eq!(refused(&outsider, w, &push(0, far, 0, 1), &asg.capability, &batch).await, Some(ErrorCode::Busy));
    assert_eq!(
        refused(&outsider, w, &push(7, loc.epoch.0, 0, 2), &asg.capability, &batch).await,
        Some(ErrorCode::BadRequest),
        "a partition out of range"
    );
    // A burst of unissued epochs: answered without a master fetch each (at most one per
    // refetch interval), and the shuffle's own pushes go on.
    let t0 = std::time::Instant::now();
    for i in 0..200 {
        let r = refused(&outsider, w, &push(0, far + i, 0, 3), &asg.capability, &batch).await;
        assert_eq!(r, Some(ErrorCode::Busy));
    }
    assert_eq!(refused(&outsider, w, &push(0, loc.epoch.0, 0, 4), &asg.capability, &batch).await, None);
    let worker_bytes: u64 = c.workers.values().map(|w| w.bytes_held()).sum();
    assert!(worker_bytes > 0 && worker_bytes <= batch.len() as u64, "stored {worker_bytes} bytes: only the good push");
    eprintln!("200 unissued-epoch pushes answered in {:?}", t0.elapsed());
    c.shutdown().await;
    Ok(())
}

/// A lease asked beyond the masters' `max_app_lease` is granted at the maximum: an app whose
/// driver died cannot keep its data for as long as it asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_beyond_the_maximum_is_clamped() -> anyhow::Result<()> {
    let c = Cluster::start(1).await?;
    let reg: AppRegistered = c
        .outsider(Some(&c.tenant(0)?))?
        .call_typed(RegisterApp { app: AppId::new("app-forever")?, lease_ms: u64::MAX })
        .await?;
    let max = shuffle_master::config::DEFAULT_MAX_APP_LEASE.as_millis() as u64;
    assert_eq!(reg.lease_ms, max, "the lease granted");
    let apps: AppList = c.outsider(Some(&Credential::from_text(&reg.token)?))?.call_typed(ListApps {}).await?;
    let remaining = apps.apps.iter().find(|a| a.app.as_str() == "app-forever").map(|a| a.lease_remaining_ms);
    assert!(remaining.is_some_and(|r| r > 0 && r <= max), "lease remaining {remaining:?}");
    c.shutdown().await;
    Ok(())
}
