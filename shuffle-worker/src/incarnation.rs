//! Which registration (incarnation) of each application the worker's data belongs to.
//!
//! An application id can be unregistered and registered again, by the same tenant or by
//! another; the masters give each registration a new incarnation, and every capability they
//! sign carries it (docs/security.md, "App incarnations"). Buffered batches are keyed by shuffle
//! key only, so the worker remembers, per app, the incarnation its data was written under.
//!
//! Invariants:
//! - A request (push, read, spill) of incarnation `i` is served only when the app's recorded
//!   incarnation is `i`. A lower `i` is refused: that registration is over.
//! - A higher `i` proves the recorded registration over (the masters issue a new incarnation
//!   only once the old registration is gone), so every local batch of the app is deleted
//!   before `i` is recorded and served: no request ever sees another registration's batches.
//! - The record of an app is durable before any batch of it is stored (see [`save`]), so
//!   after a restart no batch is attributed to a newer registration than the one it came from.
//! - An app with no record holds no data (records are dropped only for apps with nothing
//!   held): its first request records its incarnation.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use shuffle_proto::AppId;

/// Largest incarnation file read at start: far above any real one (an entry is < 160 bytes).
const MAX_FILE_BYTES: u64 = 64 << 20;

/// What to do with a request of an app's incarnation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The recorded registration: serve it.
    Current,
    /// Nothing recorded: record it (durably) and serve.
    First,
    /// A later registration: delete the app's local data, record it, then serve.
    Newer,
    /// An earlier registration: refuse.
    Superseded,
}

/// The recorded incarnation of each app with local data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Incarnations {
    apps: BTreeMap<AppId, u64>,
}

impl Incarnations {
    pub fn check(&self, app: &AppId, incarnation: u64) -> Verdict {
        match self.apps.get(app) {
            None => Verdict::First,
            Some(&r) if r == incarnation => Verdict::Current,
            Some(&r) if r < incarnation => Verdict::Newer,
            Some(_) => Verdict::Superseded,
        }
    }

    pub fn record(&mut self, app: &AppId, incarnation: u64) {
        self.apps.insert(app.clone(), incarnation);
    }

    #[cfg(test)]
    fn get(&self, app: &AppId) -> Option<u64> {
        self.apps.get(app).copied()
    }

    /// Keeps the records of apps that still hold data (`holds`); returns whether any went.
    pub fn retain(&mut self, holds: impl Fn(&AppId) -> bool) -> bool {
        let before = self.apps.len();
        self.apps.retain(|a, _| holds(a));
        self.apps.len() != before
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.apps.is_empty()
    }

    fn encode(&self) -> String {
        self.apps.iter().map(|(a, i)| format!("{a} {i}\n")).collect()
    }

    fn parse(text: &str) -> Result<Incarnations, String> {
        let mut apps = BTreeMap::new();
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let bad = || format!("line {}: expected `<app> <incarnation>`", n + 1);
            let (app, inc) = line.trim().split_once(' ').ok_or_else(bad)?;
            let app = AppId::new(app).map_err(|_| bad())?;
            apps.insert(app, inc.trim().parse::<u64>().map_err(|_| bad())?);
        }
        Ok(Incarnations { apps })
    }
}

/// Reads the records kept in `path` (none if the file does not exist).
pub fn load(path: &Path) -> Result<Incarnations, std::io::Error> {
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let text = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Incarnations::default()),
        Err(e) => return Err(e),
        Ok(m) if m.len() > MAX_FILE_BYTES => return Err(invalid(format!("{} bytes: too large", m.len()))),
        Ok(_) => std::fs::read_to_string(path)?,
    };
    Incarnations::parse(&text).map_err(invalid)
}

/// Replaces the records in `path` durably: a temporary file, synced, renamed over it, and the
/// directory synced, so a crash leaves the old records or the new ones, never a mix.
pub fn save(path: &Path, inc: &Incarnations) -> Result<(), std::io::Error> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(inc.encode().as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn app(i: u8) -> AppId {
        AppId::new(format!("app-{i}")).unwrap()
    }

    #[test]
    fn records_survive_a_reload_and_bad_files_are_typed_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("incarnations");
        assert!(load(&path).unwrap().is_empty());
        let mut inc = Incarnations::default();
        inc.record(&app(1), 7);
        inc.record(&app(2), 9);
        save(&path, &inc).unwrap();
        assert_eq!(load(&path).unwrap(), inc);
        std::fs::write(&path, "app-1 seven\n").unwrap();
        assert_eq!(load(&path).unwrap_err().kind(), std::io::ErrorKind::InvalidData);
        std::fs::write(&path, "bad/app 1\n").unwrap();
        assert!(load(&path).is_err());
    }

    /// What one request does to the model, as the worker runs it: the verdict, then the data
    /// (a set of incarnations whose batches are stored, per app) and the records.
    fn serve(inc: &mut Incarnations, data: &mut BTreeMap<AppId, Vec<u64>>, a: &AppId, i: u64, store: bool) -> bool {
        match inc.check(a, i) {
            Verdict::Superseded => return false,
            Verdict::Newer => {
                data.remove(a);
                inc.record(a, i);
            }
            Verdict::First => inc.record(a, i),
            Verdict::Current => {}
        }
        if store {
            data.entry(a.clone()).or_default().push(i);
        }
        true
    }

    proptest! {
        /// Over any history of pushes, reads and record pruning with incarnations that only
        /// grow per app (as the masters issue them) or come late (an old holder): a served
        /// request never sees batches of another incarnation, and an old holder is refused
        /// once a newer one was served.
        #[test]
        fn no_request_sees_another_registrations_batches(
            ops in proptest::collection::vec((0u8..3, 0u64..6, any::<bool>(), any::<bool>()), 1..200)
        ) {
            let mut inc = Incarnations::default();
            let mut data: BTreeMap<AppId, Vec<u64>> = BTreeMap::new();
            let mut newest: BTreeMap<AppId, u64> = BTreeMap::new();
            for (a, i, store, prune) in ops {
                let a = app(a);
                if prune {
                    inc.retain(|x| data.get(x).is_some_and(|d| !d.is_empty()));
                }
                let served = serve(&mut inc, &mut data, &a, i, store);
                if served {
                    prop_assert!(data.get(&a).is_none_or(|d| d.iter().all(|&x| x == i)));
                    let n = newest.entry(a.clone()).or_insert(i);
                    *n = (*n).max(i);
                } else {
                    prop_assert!(newest.get(&a).is_some_and(|&n| n > i));
                }
                // Data held means a record of exactly its incarnation.
                for (app, d) in &data {
                    if let Some(&x) = d.first() {
                        prop_assert_eq!(inc.get(app), Some(x));
                    }
                }
            }
        }
    }
}
