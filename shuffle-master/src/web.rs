//! The master's read-only HTTP pages: `/` (status page), `/status.json`, `/metrics`
//! (Prometheus), `/healthz` (the process answers and its Raft node runs), `/readyz` (a leader is known and this
//! master applied its whole log). Any master serves them, from its own applied state; the page
//! says which master answered and who leads.

use std::fmt::Write;
use std::sync::Weak;

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
        "/status.json" => match svc.status() {
            Ok(st) => Page::ok("application/json", serde_json::to_string_pretty(&st).unwrap_or_default()),
            Err(e) => Page { status: 503, content_type: "text/plain", body: format!("{e}\n") },
        },
        "/metrics" => match svc.status() {
            Ok(st) => Page::ok("text/plain; version=0.0.4", metrics(&st, svc.is_leader_now())),
            Err(e) => Page { status: 503, content_type: "text/plain", body: format!("{e}\n") },
        },
        "/" => match svc.status() {
            Ok(st) => Page::ok("text/html; charset=utf-8", html(&st, svc.id())),
            Err(e) => Page { status: 503, content_type: "text/plain", body: format!("{e}\n") },
        },
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
