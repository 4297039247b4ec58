//! The master's read-only HTTP pages: `/` (status page), `/status.json`, `/metrics`
//! (Prometheus), `/healthz` (the process answers and its Raft node runs), `/readyz` (a leader is known and this
//! master applied its whole log). Any master serves them, from its own applied state; the page
//! says which master answered and who leads.
//!
//! Invariant: the three status pages come from one cached computation at most
//! [`STATUS_MAX_AGE_MS`] old, and at most one computation runs at a time, however many
//! requests arrive (they are unauthenticated, and a computation walks the whole state under
//! its lock). A request never waits for a computation, except before the first one.

use std::fmt::Write;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError, Weak};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use shuffle_proto::http::Page;
use shuffle_proto::messages::{ClusterStatus, WorkerState};

use crate::service::MasterService;

fn state_name(s: &WorkerState) -> &'static str {
    match s {
        WorkerState::Active => "active",
        WorkerState::Decommissioning => "decommissioning",
        WorkerState::Decommissioned => "decommissioned",
        WorkerState::Lost => "lost",
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// How long the status pages are served from one computation: a second costs the leader at
/// most one walk of its state per second whatever the request rate, and is fresher than any
/// scrape interval or a person refreshing the page needs.
pub const STATUS_MAX_AGE_MS: u64 = 1_000;

/// The status pages, rendered from one computation of the cluster status.
pub struct Rendered {
    json: String,
    metrics: String,
    html: String,
}

/// The pages, or why the status could not be computed (served as 503).
pub type Snapshot = Result<Rendered, String>;

/// The latest status pages and when they were computed (see the module invariant).
#[derive(Default)]
pub struct StatusCache {
    latest: Mutex<Option<(u64, Arc<Snapshot>)>>,
    /// Held by the one caller computing.
    computing: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl StatusCache {
    /// The pages computed at most `max_age_ms` before `now_ms`, computed with `compute` if
    /// there are none. While another caller computes, the previous pages are returned at
    /// once; only a caller with no pages to show at all waits for that computation.
    pub fn get(&self, now_ms: u64, max_age_ms: u64, compute: impl FnOnce() -> Snapshot) -> Arc<Snapshot> {
        let fresh = |latest: &Option<(u64, Arc<Snapshot>)>| {
            latest.as_ref().filter(|(at, _)| now_ms.saturating_sub(*at) < max_age_ms).map(|(_, p)| p.clone())
        };
        let stale = {
            let latest = lock(&self.latest);
            if let Some(p) = fresh(&latest) {
                return p;
            }
            latest.as_ref().map(|(_, p)| p.clone())
        };
        let _computing = match (self.computing.try_lock(), stale) {
            (Ok(g), _) => g,
            (Err(TryLockError::Poisoned(p)), _) => p.into_inner(),
            (Err(TryLockError::WouldBlock), Some(stale)) => return stale,
            (Err(TryLockError::WouldBlock), None) => lock(&self.computing),
        };
        // Another caller may have computed them while this one waited.
        if let Some(p) = fresh(&lock(&self.latest)) {
            return p;
        }
        let p = Arc::new(compute());
        *lock(&self.latest) = Some((now_ms, p.clone()));
        p
    }
}

fn render(svc: &MasterService) -> Snapshot {
    let st = svc.status().map_err(|e| format!("{e}\n"))?;
    Ok(Rendered {
        json: serde_json::to_string_pretty(&st).unwrap_or_default(),
        metrics: metrics(&st, svc.is_leader_now()),
        html: html(&st, svc.id()),
    })
}

/// Renders a page for `path`.
pub fn page(service: &Weak<MasterService>, path: &str) -> Page {
    let Some(svc) = service.upgrade() else { return Page::not_found() };
    match path {
        // Not alive once Raft stopped on a storage error: a liveness probe restarts it.
        // (The reason is in the master's log; the page names no file.)
        "/healthz" => match svc.raft().metrics().borrow().running_state {
            Ok(()) => Page::ok("text/plain", "ok\n".into()),
            Err(_) => {
                Page { status: 503, content_type: "text/plain", body: "raft stopped on a storage error\n".into() }
            }
        },
        "/readyz" => match svc.readiness() {
            Ok(()) => Page::ok("text/plain", "ready\n".into()),
            Err(why) => Page { status: 503, content_type: "text/plain", body: format!("{why}\n") },
        },
        "/status.json" | "/metrics" | "/" => {
            let pages = svc.status_pages().get(svc.now_ms(), STATUS_MAX_AGE_MS, || render(&svc));
            match (&*pages, path) {
                (Err(e), _) => Page { status: 503, content_type: "text/plain", body: e.clone() },
                (Ok(p), "/status.json") => Page::ok("application/json", p.json.clone()),
                (Ok(p), "/metrics") => Page::ok("text/plain; version=0.0.4", p.metrics.clone()),
                (Ok(p), _) => Page::ok("text/html; charset=utf-8", p.html.clone()),
            }
        }
        _ => Page::not_found(),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabel {
    worker: String,
}

fn metrics(st: &ClusterStatus, leader: bool) -> String {
    let mut reg = Registry::with_prefix("shoal_master");
    let is_leader = Gauge::<i64>::default();
    is_leader.set(leader as i64);
    reg.register("is_leader", "1 on the Raft leader", is_leader);
    let shuffles = Gauge::<i64>::default();
    shuffles.set(st.shuffles as i64);
    reg.register("shuffles", "Registered shuffles", shuffles);
    let apps = Gauge::<i64>::default();
    apps.set(st.apps as i64);
    reg.register("apps", "Registered applications", apps);
    let workers = Family::<StateLabel, Gauge>::default();
    for s in ["active", "decommissioning", "decommissioned", "lost"] {
        workers.get_or_create(&StateLabel { state: s.into() }).set(0);
    }
    let held = Family::<WorkerLabel, Gauge>::default();
    let spilled = Family::<WorkerLabel, Gauge>::default();
    for w in &st.workers {
        workers.get_or_create(&StateLabel { state: state_name(&w.state).into() }).inc();
        held.get_or_create(&WorkerLabel { worker: w.id.to_string() }).set(w.bytes_held as i64);
        spilled.get_or_create(&WorkerLabel { worker: w.id.to_string() }).set(w.bytes_spilled as i64);
    }
    reg.register("workers", "Workers by state", workers);
    reg.register("worker_held_bytes", "Bytes a worker holds locally", held);
    reg.register("worker_spilled_bytes", "Bytes of a worker's data in the object store", spilled);
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &reg).is_err() {
        out.clear();
    }
    out
}

fn html(st: &ClusterStatus, me: u64) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=utf-8><title>Shoal</title>\
         <style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 12px;text-align:left}}\
         .lost{{color:#b00}}</style></head><body><h1>Shoal</h1><p>Answered by master {me}; leader: {}.</p>",
        st.leader.map(|l| l.to_string()).unwrap_or_else(|| "none".into())
    );
    h.push_str("<h2>Masters</h2><table><tr><th>id</th><th>address</th><th>role</th></tr>");
    for m in &st.masters {
        let _ = write!(h, "<tr><td>{}</td><td>{}</td><td>{:?}</td></tr>", m.id, escape(&m.addr), m.role);
    }
    h.push_str("</table><h2>Workers</h2><table><tr><th>id</th><th>address</th><th>state</th><th>held</th><th>spilled</th><th>partitions</th><th>last heartbeat</th></tr>");
    for w in &st.workers {
        let _ = write!(
            h,
            "<tr class={}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1} s ago</td></tr>",
            state_name(&w.state),
            escape(w.id.as_str()),
            escape(&w.addr),
            state_name(&w.state),
            bytesize::ByteSize(w.bytes_held),
            bytesize::ByteSize(w.bytes_spilled),
            w.partitions,
            w.millis_since_heartbeat as f64 / 1000.0
        );
    }
    let _ = write!(h, "</table><p>{} shuffles in flight, {} applications.</p></body></html>", st.shuffles, st.apps);
    h
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;
    use crate::node::{MasterConfig, MasterNode};

    const PAGES: [&str; 3] = ["/", "/metrics", "/status.json"];

    /// Requests for the status pages, many at once and then many in a row, cost one
    /// computation of the cluster status; once the pages are older than the max age, the next
    /// request computes them again, once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_and_rapid_requests_share_one_status_computation() {
        let dir = tempfile::tempdir().unwrap();
        let tls = shuffle_proto::transport::generate_cluster_tls(&dir.path().join("tls")).unwrap();
        let cfg = MasterConfig::single("127.0.0.1:0".parse().unwrap(), dir.path().join("m"), tls);
        let node = MasterNode::start(cfg).await.unwrap();
        let svc = Arc::downgrade(&node.service);
        let before = node.service.status_computations();
        const AT_ONCE: usize = 48;
        let start = std::sync::Barrier::new(AT_ONCE);
        std::thread::scope(|s| {
            for i in 0..AT_ONCE {
                let (svc, start) = (&svc, &start);
                s.spawn(move || {
                    start.wait();
                    let p = page(svc, PAGES[i % PAGES.len()]);
                    assert_eq!(p.status, 200, "{}", p.body);
                });
            }
        });
        for path in PAGES.repeat(30) {
            assert_eq!(page(&svc, path).status, 200);
        }
        let computed = node.service.status_computations() - before;
        assert_eq!(computed, 1, "{} requests computed the status {computed} times", AT_ONCE + 90);
        tokio::time::sleep(Duration::from_millis(STATUS_MAX_AGE_MS + 100)).await;
        for path in PAGES.repeat(10) {
            assert_eq!(page(&svc, path).status, 200);
        }
        assert_eq!(node.service.status_computations() - before, 2);
        node.shutdown().await;
    }

    fn pages(body: &str) -> Snapshot {
        Ok(Rendered { json: body.into(), metrics: String::new(), html: String::new() })
    }

    fn json(p: &Snapshot) -> &str {
        p.as_ref().map(|r| r.json.as_str()).unwrap_or("error")
    }

    #[test]
    fn while_one_caller_computes_the_others_get_the_previous_pages_at_once() {
        let cache = StatusCache::default();
        let computed = AtomicU64::new(0);
        assert_eq!(json(&cache.get(0, 1000, || pages("first"))), "first");
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        std::thread::scope(|s| {
            let (cache, computed) = (&cache, &computed);
            let refresher = s.spawn(move || {
                let p = cache.get(5_000, 1000, move || {
                    let _ = entered_tx.send(());
                    let _ = release_rx.recv();
                    computed.fetch_add(1, Ordering::SeqCst);
                    pages("second")
                });
                json(&p).to_string()
            });
            entered_rx.recv().unwrap();
            // The pages are stale and a computation runs: every other caller gets the old
            // pages without waiting, and none computes.
            for _ in 0..10 {
                let p = cache.get(5_001, 1000, || {
                    computed.fetch_add(1, Ordering::SeqCst);
                    pages("other")
                });
                assert_eq!(json(&p), "first");
            }
            release_tx.send(()).unwrap();
            assert_eq!(refresher.join().unwrap(), "second");
        });
        assert_eq!(json(&cache.get(5_002, 1000, || pages("late"))), "second");
        assert_eq!(computed.load(Ordering::SeqCst), 1);
    }
}
