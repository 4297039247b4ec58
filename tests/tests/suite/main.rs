//! End-to-end suites that share one test binary: one compile and one link instead of one per
//! file, which is most of a cold build's test time. A suite that touches process-wide state
//! keeps a binary of its own: failpoints (`drain_race`, `spill_faults`), the environment
//! (`s3_faults`), this process's RSS (`resources`, `big_partition`), one Spark or chart run
//! at a time (`spark`, `chart_cluster`).

mod bridge;
mod cli;
mod client;
mod crash_restart;
mod decommission;
mod disk_full;
mod master_disk_full;
mod partition;
mod processes;
mod replication;
mod s3;
mod security;
mod status_page;
mod worker;
