//! The value log: pushed batches' bytes, appended once to local files; the buffer's RocksDB
//! index keeps only a [`ValuePtr`] per batch.
//!
//! Storing the batches themselves in RocksDB wrote each byte three times before its segment
//! did (the WAL, the blob file at memtable flush, the segment), and the page-cache copies of
//! those writes were the worker's largest CPU cost. Here each byte is written once locally.
//!
//! Invariants:
//! - A pointer is published (written to the index) only after its bytes are written (and
//!   synced, with `sync`), so a process crash never leaves an index entry without its bytes.
//! - `live[file]` counts the bytes of every pointer into `file` that is reserved or in the
//!   index. It is raised before the pointer is published and lowered only after it was
//!   deleted from the index, so a file is never removed while the index names it.
//! - A file leaves the registry (and is unlinked) only when its live count is 0 and it is not
//!   the file being appended to. Readers that took the registry before keep their open handle,
//!   so a scan never loses a file under it.
//! - Files are never appended to after a restart: a new one is started, so a torn tail left by
//!   a crash is never overwritten or read.
//! - The caller makes the index deletes that released a file durable before releasing (with
//!   `sync`, the delete is a synced WAL write), so a power loss never brings back a pointer
//!   into an unlinked file. A pointer into a file that is gone or too short anyway (the value
//!   log without `sync`, or damage) is [`ValuePtr::dangles`] and the index drops it on open.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Files roll over at this size; a file is removed once nothing in it is live, so smaller
/// files free disk sooner and larger ones mean fewer files.
pub const FILE_BYTES: u64 = 64 << 20;

const SUFFIX: &str = ".vlog";

/// Where a batch's bytes are: `len` bytes at `offset` of file `file`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValuePtr {
    pub file: u32,
    pub offset: u64,
    pub len: u32,
}

impl ValuePtr {
    /// Encoded size in the index.
    pub const LEN: usize = 4 + 4 + 8 + 4;
    /// Marks an index value as a pointer (values written before the value log hold the batch
    /// itself, whose first byte is a codec number, never this).
    const MAGIC: [u8; 4] = *b"VLG1";

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[..4].copy_from_slice(&Self::MAGIC);
        b[4..8].copy_from_slice(&self.file.to_le_bytes());
        b[8..16].copy_from_slice(&self.offset.to_le_bytes());
        b[16..20].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// The pointer an index value holds, or `None` for a batch stored inline.
    pub fn decode(v: &[u8]) -> Option<ValuePtr> {
        if v.len() != Self::LEN || v[..4] != Self::MAGIC {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes([v[i], v[i + 1], v[i + 2], v[i + 3]]);
        let mut off = [0u8; 8];
        off.copy_from_slice(&v[8..16]);
        Some(ValuePtr { file: u32_at(4), offset: u64::from_le_bytes(off), len: u32_at(16) })
    }
}

impl ValuePtr {
    /// Whether the bytes this pointer names are not all in the files `lens` lists (id to
    /// length, from [`file_lengths`]).
    pub fn dangles(&self, lens: &HashMap<u32, u64>) -> bool {
        let end = self.offset.checked_add(self.len as u64);
        !matches!((lens.get(&self.file), end), (Some(len), Some(end)) if end <= *len)
    }
}

/// The log files in `dir` and their lengths; none if `dir` does not exist yet.
pub fn file_lengths(dir: &Path) -> io::Result<HashMap<u32, u64>> {
    let mut out = HashMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(id) = name.to_str().and_then(|n| n.strip_suffix(SUFFIX)).and_then(|n| n.parse::<u32>().ok()) {
            out.insert(id, entry.metadata()?.len());
        }
    }
    Ok(out)
}

/// An index value's batch length, whether it is a pointer or stored inline.
pub fn value_len(v: &[u8]) -> u64 {
    ValuePtr::decode(v).map_or(v.len() as u64, |p| p.len as u64)
}

/// One log file, open for reads (and for appends while it is the active one).
#[derive(Debug)]
pub struct LogFile {
    id: u32,
    file: File,
}

/// The files a reader may use: every file not yet removed when it was taken.
pub type Files = BTreeMap<u32, Arc<LogFile>>;

#[derive(Debug)]
struct State {
    files: Files,
    active: Arc<LogFile>,
    /// Bytes reserved in the active file (its next append offset).
    active_len: u64,
    live: HashMap<u32, u64>,
}

#[derive(Debug)]
pub struct ValueLog {
    dir: PathBuf,
    sync: bool,
    file_bytes: u64,
    state: Mutex<State>,
}

fn file_name(id: u32) -> String {
    format!("{id:010}{SUFFIX}")
}

fn create(dir: &Path, id: u32, sync: bool) -> io::Result<Arc<LogFile>> {
    let file = File::options().read(true).write(true).create_new(true).open(dir.join(file_name(id)))?;
    if sync {
        // The new name must survive a power loss before anything in it is acknowledged.
        File::open(dir)?.sync_all()?;
    }
    Ok(Arc::new(LogFile { id, file }))
}

impl ValueLog {
    /// Opens the log in `dir`. `live` holds the bytes the index names in each file (from a scan
    /// of the index); files it does not name are deleted, and appends go to a new file.
    pub fn open(dir: &Path, sync: bool, live: HashMap<u32, u64>) -> io::Result<ValueLog> {
        Self::open_sized(dir, sync, live, FILE_BYTES)
    }

    /// [`ValueLog::open`] with files rolling over at `file_bytes`.
    pub fn open_sized(dir: &Path, sync: bool, live: HashMap<u32, u64>, file_bytes: u64) -> io::Result<ValueLog> {
        std::fs::create_dir_all(dir)?;
        let mut files = Files::new();
        let mut next = 0u32;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(SUFFIX)).and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            next = next.max(id.saturating_add(1));
            if live.get(&id).copied().unwrap_or(0) == 0 {
                std::fs::remove_file(entry.path())?;
                continue;
            }
            let file = File::open(entry.path())?;
            files.insert(id, Arc::new(LogFile { id, file }));
        }
        let active = create(dir, next, sync)?;
        files.insert(next, active.clone());
        let live = live.into_iter().filter(|(id, b)| *b > 0 && files.contains_key(id)).collect();
        Ok(ValueLog {
            dir: dir.to_path_buf(),
            sync,
            file_bytes,
            state: Mutex::new(State { files, active, active_len: 0, live }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the files readers may use, while no file can be removed or added: an index
    /// snapshot taken inside it points only into these files (see the module invariants).
    pub fn with_files<T>(&self, f: impl FnOnce(&Files) -> T) -> T {
        let st = self.state();
        f(&st.files)
    }

    /// Writes `bytes` and returns where they are. The bytes count as live until
    /// [`ValueLog::release`]d, whether or not the pointer is ever published.
    pub fn append(&self, bytes: &[u8]) -> io::Result<ValuePtr> {
        let len = u32::try_from(bytes.len()).map_err(|_| io::Error::other("batch larger than 4 GiB"))?;
        let (file, ptr) = {
            let mut st = self.state();
            if st.active_len > 0 && st.active_len + len as u64 > self.file_bytes {
                self.roll(&mut st)?;
            }
            let ptr = ValuePtr { file: st.active.id, offset: st.active_len, len };
            st.active_len += len as u64;
            *st.live.entry(ptr.file).or_insert(0) += len as u64;
            (st.active.clone(), ptr)
        };
        let written =
            file.file.write_all_at(bytes, ptr.offset).and_then(
                |()| {
                    if self.sync {
                        file.file.sync_data()
                    } else {
                        Ok(())
                    }
                },
            );
        if let Err(e) = written {
            self.release(&[ptr]);
            return Err(e);
        }
        Ok(ptr)
    }

    /// Starts a new active file; the old one is removed at once if nothing in it is live.
    fn roll(&self, st: &mut State) -> io::Result<()> {
        let id = st.active.id.checked_add(1).ok_or_else(|| io::Error::other("value log file ids exhausted"))?;
        let next = create(&self.dir, id, self.sync)?;
        let old = std::mem::replace(&mut st.active, next.clone());
        st.files.insert(id, next);
        st.active_len = 0;
        if st.live.get(&old.id).copied().unwrap_or(0) == 0 {
            self.remove(st, old.id);
        }
        Ok(())
    }

    fn remove(&self, st: &mut State, id: u32) {
        st.live.remove(&id);
        st.files.remove(&id);
        // Readers holding the file keep reading it; only its name goes.
        if let Err(e) = std::fs::remove_file(self.dir.join(file_name(id))) {
            tracing::warn!(file = id, "removing a value log file failed: {e}");
        }
    }

    /// Marks these pointers' bytes dead (deleted from the index, or never published); files
    /// left with nothing live are removed.
    pub fn release(&self, ptrs: &[ValuePtr]) {
        if ptrs.is_empty() {
            return;
        }
        let mut st = self.state();
        let mut emptied = Vec::new();
        for p in ptrs {
            if let Some(b) = st.live.get_mut(&p.file) {
                *b = b.saturating_sub(p.len as u64);
                if *b == 0 {
                    emptied.push(p.file);
                }
            }
        }
        let active = st.active.id;
        for id in emptied {
            if id != active && st.live.get(&id) == Some(&0) {
                self.remove(&mut st, id);
            }
        }
    }

    /// Appends the bytes `ptr` names to `out`, read from `files`.
    pub fn read_into(files: &Files, ptr: ValuePtr, out: &mut Vec<u8>) -> io::Result<()> {
        let file = files.get(&ptr.file).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("value log file {} is missing", ptr.file))
        })?;
        let start = out.len();
        out.resize(start + ptr.len as usize, 0);
        let read = file.file.read_exact_at(&mut out[start..], ptr.offset);
        if read.is_err() {
            out.truncate(start);
        }
        read
    }

    /// Live bytes and files on disk: (bytes the index names, files).
    pub fn usage(&self) -> (u64, usize) {
        let st = self.state();
        (st.live.values().sum(), st.files.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    }

    #[test]
    fn pointers_round_trip_and_inline_values_are_not_pointers() {
        let p = ValuePtr { file: 7, offset: 1 << 40, len: 123 };
        assert_eq!(ValuePtr::decode(&p.encode()), Some(p));
        assert_eq!(value_len(&p.encode()), 123);
        // A batch stored inline (its first byte a codec number) is not a pointer.
        let mut inline = p.encode();
        inline[0] = 1;
        assert_eq!(ValuePtr::decode(&inline), None);
        assert_eq!(value_len(&inline), ValuePtr::LEN as u64);
        assert_eq!(ValuePtr::decode(b"short"), None);
    }

    #[test]
    fn files_roll_and_go_once_nothing_in_them_is_live() {
        let dir = tempfile::tempdir().unwrap();
        let log = ValueLog::open_sized(dir.path(), false, HashMap::new(), 1000).unwrap();
        let big = vec![7u8; 501];
        let a = log.append(&big).unwrap();
        let b = log.append(&big).unwrap(); // rolls: a's file is full
        assert_ne!(a.file, b.file);
        assert_eq!(names(dir.path()).len(), 2);
        let files = log.with_files(Files::clone);
        log.release(&[a]);
        assert_eq!(names(dir.path()), vec![file_name(b.file)], "a's file is gone once a is dead");
        // A reader that took the files before still reads a's bytes.
        let mut out = vec![1, 2];
        ValueLog::read_into(&files, a, &mut out).unwrap();
        assert_eq!(out.len(), 2 + big.len());
        assert!(out[2..].iter().all(|b| *b == 7));
        // A reader that took them after gets a typed error, and `out` is unchanged.
        let mut out = vec![1, 2];
        let err = ValueLog::read_into(&log.with_files(Files::clone), a, &mut out).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert_eq!(out, vec![1, 2]);
        // The active file stays even when empty.
        log.release(&[b]);
        assert_eq!(names(dir.path()), vec![file_name(b.file)]);
        assert_eq!(log.usage(), (0, 1));
    }

    #[test]
    fn pointers_dangle_past_a_file_end_or_into_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(file_lengths(&dir.path().join("nothing-yet")).unwrap().is_empty());
        let log = ValueLog::open(dir.path(), false, HashMap::new()).unwrap();
        let a = log.append(b"12345").unwrap();
        let lens = file_lengths(dir.path()).unwrap();
        assert_eq!(lens.get(&a.file), Some(&5));
        assert!(!a.dangles(&lens));
        assert!(ValuePtr { len: 6, ..a }.dangles(&lens), "past the end");
        assert!(ValuePtr { offset: u64::MAX, ..a }.dangles(&lens), "overflowing");
        assert!(ValuePtr { file: a.file + 1, ..a }.dangles(&lens), "missing file");
    }

    #[test]
    fn reopening_keeps_named_files_and_starts_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = {
            let log = ValueLog::open(dir.path(), true, HashMap::new()).unwrap();
            let a = log.append(b"hello").unwrap();
            let b = log.append(b"world!").unwrap();
            (a, b)
        };
        // The index names only b (a was deleted from it before the crash).
        let log = ValueLog::open(dir.path(), false, HashMap::from([(b.file, b.len as u64), (99, 5)])).unwrap();
        assert_eq!(a.file, b.file);
        let mut out = Vec::new();
        ValueLog::read_into(&log.with_files(Files::clone), b, &mut out).unwrap();
        assert_eq!(out, b"world!");
        let c = log.append(b"x").unwrap();
        assert!(c.file > b.file, "appends never go to a file from before the restart");
        // A pointer past a file's end is an error, not a panic or a short read.
        let bad = ValuePtr { file: b.file, offset: 1 << 20, len: 4 };
        assert!(ValueLog::read_into(&log.with_files(Files::clone), bad, &mut out).is_err());
        assert_eq!(log.usage().0, b.len as u64 + 1);
        // Nothing the index names is left behind: a file named by no pointer is deleted.
        drop(log);
        let log = ValueLog::open(dir.path(), false, HashMap::new()).unwrap();
        assert_eq!(log.usage(), (0, 1));
        assert_eq!(names(dir.path()).len(), 1);
    }
}
