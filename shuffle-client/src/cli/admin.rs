//! Operator commands: workers, shuffles, apps, and decommission with progress.

use std::time::Duration;

use serde::Serialize;
use shuffle_proto::messages::*;
use shuffle_proto::transport::MasterClient;
use shuffle_proto::WorkerId;

use crate::cli::status::{state, to_json};

/// Why a wait ended without success.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("worker {0} is not registered")]
    Unknown(String),
    #[error("worker {worker} still holds {held} bytes after {after:?}")]
    TimedOut { worker: String, held: u64, after: Duration },
    #[error("worker {0} was lost while draining")]
    Lost(String),
}

#[derive(Debug, Serialize)]
pub struct DrainReport {
    pub worker: String,
    pub state: String,
    pub bytes_at_start: u64,
    pub seconds: f64,
}

pub fn workers_table(st: &ClusterStatus) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:<24} {:<24} {:<16} {:>12} {:>12} {:>10}\n",
        "ID", "ADDRESS", "STATE", "HELD", "SPILLED", "PARTITIONS"
    ));
    for w in to_json(st).workers {
        out.push_str(&format!(
            "{:<24} {:<24} {:<16} {:>12} {:>12} {:>10}\n",
            w.id,
            w.addr,
            w.state,
            bytesize::ByteSize(w.bytes_held).to_string(),
            bytesize::ByteSize(w.bytes_spilled).to_string(),
            w.partitions
        ));
    }
    out
}

#[derive(Debug, Serialize)]
pub struct ShuffleJson {
    pub app: String,
    pub shuffle_id: u32,
    pub generation: u32,
    pub state: String,
    pub maps: u32,
    pub committed_maps: u32,
    pub partitions: u32,
    pub bytes: u64,
}

pub fn shuffles_json(l: &ShuffleList) -> Vec<ShuffleJson> {
    l.shuffles
        .iter()
        .map(|s| ShuffleJson {
            app: s.shuffle.app.to_string(),
            shuffle_id: s.shuffle.shuffle_id,
            generation: s.shuffle.generation,
            state: format!("{:?}", s.state).to_lowercase(),
            maps: s.num_maps,
            committed_maps: s.committed_maps,
            partitions: s.num_partitions,
            bytes: s.bytes,
        })
        .collect()
}

pub fn shuffles_table(l: &ShuffleList) -> String {
    let mut out = format!(
        "{:<32} {:>8} {:>4} {:<8} {:>12} {:>10} {:>12}\n",
        "APP", "SHUFFLE", "GEN", "STATE", "MAPS", "PARTITIONS", "BYTES"
    );
    for s in shuffles_json(l) {
        out.push_str(&format!(
            "{:<32} {:>8} {:>4} {:<8} {:>12} {:>10} {:>12}\n",
            s.app,
            s.shuffle_id,
            s.generation,
            s.state,
            format!("{}/{}", s.committed_maps, s.maps),
            s.partitions,
            bytesize::ByteSize(s.bytes).to_string()
        ));
    }
    out
}

#[derive(Debug, Serialize)]
pub struct AppJson {
    pub app: String,
    pub shuffles: u32,
    pub lease_remaining_ms: u64,
}

pub fn apps_json(l: &AppList) -> Vec<AppJson> {
    l.apps
        .iter()
        .map(|a| AppJson { app: a.app.to_string(), shuffles: a.shuffles, lease_remaining_ms: a.lease_remaining_ms })
        .collect()
}

pub fn apps_table(l: &AppList) -> String {
    let mut out = format!("{:<40} {:>8} {:>14}\n", "APP", "SHUFFLES", "LEASE LEFT");
    for a in apps_json(l) {
        out.push_str(&format!("{:<40} {:>8} {:>13}s\n", a.app, a.shuffles, a.lease_remaining_ms / 1000));
    }
    out
}

/// Asks the master to drain `worker`, then (if `wait`) polls until it is Decommissioned,
/// calling `progress(bytes_left, bytes_at_start)` on every poll.
pub async fn decommission(
    mc: &MasterClient,
    worker: &WorkerId,
    wait: Option<Duration>,
    mut progress: impl FnMut(u64, u64),
) -> anyhow::Result<DrainReport> {
    let t0 = tokio::time::Instant::now();
    let held =
        |st: &ClusterStatus| st.workers.iter().find(|w| &w.id == worker).map(|w| (w.bytes_held, w.state.clone()));
    let before: ClusterStatus = mc.call_typed(GetStatus {}).await?;
    let (start, _) = held(&before).ok_or_else(|| WaitError::Unknown(worker.to_string()))?;
    let _: Ack = mc.call_typed(DecommissionWorker { worker: worker.clone() }).await?;
    let Some(limit) = wait else {
        return Ok(DrainReport {
            worker: worker.to_string(),
            state: "decommissioning".into(),
            bytes_at_start: start,
            seconds: 0.0,
        });
    };
    loop {
        let st: ClusterStatus = mc.call_typed(GetStatus {}).await?;
        let (left, s) = held(&st).ok_or_else(|| WaitError::Unknown(worker.to_string()))?;
        progress(left, start);
        match s {
            WorkerState::Decommissioned => {
                return Ok(DrainReport {
                    worker: worker.to_string(),
                    state: state(&s).into(),
                    bytes_at_start: start,
                    seconds: t0.elapsed().as_secs_f64(),
                })
            }
            WorkerState::Lost => return Err(WaitError::Lost(worker.to_string()).into()),
            _ => {}
        }
        if t0.elapsed() > limit {
            return Err(WaitError::TimedOut { worker: worker.to_string(), held: left, after: limit }.into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
