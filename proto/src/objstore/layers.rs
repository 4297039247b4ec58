//! Layers every opened store is wrapped in, innermost first:
//!
//! - [`FaultyStore`] (only with the `failpoints` feature): each call passes a failpoint named
//!   `object-store-<op>` (`put`, `get`, `head`, `delete`, `list`, `copy`, `part`, `complete`),
//!   so fault tests make the store fail a share of calls (`20%return`), stall (`sleep(200)`)
//!   or fail the Nth call (`4*off->return`), in-process with `fail::cfg` or in a real process
//!   with the `FAILPOINTS` environment variable.
//! - [`Instrumented`]: reports each call's operation, latency and outcome to a
//!   [`StoreObserver`] (the worker exports them as Prometheus metrics). It sits under the
//!   retries, so every failed try is seen, not only the ones that were given up on.
//! - [`Retrying`]: retries calls that are safe to repeat (get, head, delete, a whole-object
//!   put, list with delimiter) on transient errors with [`Backoff::STORE_CALL`]. Multipart
//!   parts are not repeated here: a failed upload is aborted and the whole spill retried.
//!   S3's own HTTP-level retries (5xx, throttling, timeouts) run below all layers, with
//!   limits set where the store is opened.
//!
//! Invariant: a layer never changes what a successful call returns.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions,
    PutPayload, PutResult, Result, UploadPart,
};

use crate::retry::{retry, Backoff};

/// An object-store operation, as metrics label it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StoreOp {
    Put,
    Get,
    Head,
    Delete,
    List,
    Copy,
    /// One part of a multipart upload.
    Part,
    /// Completing or aborting a multipart upload.
    Complete,
}

impl StoreOp {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreOp::Put => "put",
            StoreOp::Get => "get",
            StoreOp::Head => "head",
            StoreOp::Delete => "delete",
            StoreOp::List => "list",
            StoreOp::Copy => "copy",
            StoreOp::Part => "part",
            StoreOp::Complete => "complete",
        }
    }
}

/// Receives one observation per store call (try).
pub trait StoreObserver: Send + Sync + fmt::Debug + 'static {
    /// `error` is a short kind (`not_found`, `generic`, ...) when the call failed.
    fn observe(&self, op: StoreOp, elapsed: Duration, error: Option<&'static str>);
}

/// A short, stable name for an error's kind (a metric label; never a path or message).
pub fn error_kind(e: &object_store::Error) -> &'static str {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => "not_found",
        E::AlreadyExists { .. } => "already_exists",
        E::Precondition { .. } => "precondition",
        E::NotModified { .. } => "not_modified",
        E::PermissionDenied { .. } => "permission_denied",
        E::Unauthenticated { .. } => "unauthenticated",
        E::NotSupported { .. } | E::NotImplemented => "not_supported",
        E::InvalidPath { .. } | E::UnknownConfigurationKey { .. } => "invalid",
        E::JoinError { .. } => "join",
        _ => "generic",
    }
}

/// Whether repeating a call may help: store-side and network trouble, not answers.
pub fn transient(e: &object_store::Error) -> bool {
    matches!(error_kind(e), "generic" | "join")
}

/// Reports every call to an observer.
#[derive(Debug)]
pub struct Instrumented {
    inner: Arc<dyn ObjectStore>,
    observer: Arc<dyn StoreObserver>,
}

impl Instrumented {
    pub fn new(inner: Arc<dyn ObjectStore>, observer: Arc<dyn StoreObserver>) -> Self {
        Self { inner, observer }
    }

    async fn timed<T>(&self, op: StoreOp, f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let t0 = tokio::time::Instant::now();
        let r = f.await;
        self.observer.observe(op, t0.elapsed(), r.as_ref().err().map(error_kind));
        r
    }
}

impl fmt::Display for Instrumented {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Instrumented({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for Instrumented {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        self.timed(StoreOp::Put, self.inner.put_opts(location, payload, opts)).await
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        let upload = self.timed(StoreOp::Put, self.inner.put_multipart_opts(location, opts)).await?;
        Ok(Box::new(InstrumentedUpload { inner: upload, observer: self.observer.clone() }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.timed(StoreOp::Get, self.inner.get_opts(location, options)).await
    }

    async fn get_range(&self, location: &Path, range: Range<u64>) -> Result<Bytes> {
        self.timed(StoreOp::Get, self.inner.get_range(location, range)).await
    }

    async fn head(&self, location: &Path) -> Result<ObjectMeta> {
        self.timed(StoreOp::Head, self.inner.head(location)).await
    }

    async fn delete(&self, location: &Path) -> Result<()> {
        self.timed(StoreOp::Delete, self.inner.delete(location)).await
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        // A listing streams pages; its latency is not one number.
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.timed(StoreOp::List, self.inner.list_with_delimiter(prefix)).await
    }

    async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
        self.timed(StoreOp::Copy, self.inner.copy(from, to)).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        self.timed(StoreOp::Copy, self.inner.copy_if_not_exists(from, to)).await
    }
}

#[derive(Debug)]
struct InstrumentedUpload {
    inner: Box<dyn MultipartUpload>,
    observer: Arc<dyn StoreObserver>,
}

#[async_trait]
impl MultipartUpload for InstrumentedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let part = self.inner.put_part(data);
        let observer = self.observer.clone();
        Box::pin(async move {
            let t0 = tokio::time::Instant::now();
            let r = part.await;
            observer.observe(StoreOp::Part, t0.elapsed(), r.as_ref().err().map(error_kind));
            r
        })
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let t0 = tokio::time::Instant::now();
        let r = self.inner.complete().await;
        self.observer.observe(StoreOp::Complete, t0.elapsed(), r.as_ref().err().map(error_kind));
        r
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}

/// Retries repeatable calls on transient errors.
#[derive(Debug)]
pub struct Retrying {
    inner: Arc<dyn ObjectStore>,
    policy: Backoff,
}

impl Retrying {
    pub fn new(inner: Arc<dyn ObjectStore>, policy: Backoff) -> Self {
        Self { inner, policy }
    }

    async fn again<T, F, Fut>(&self, op: StoreOp, f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        retry(&self.policy, f, transient, |e, d| {
            tracing::debug!(op = op.as_str(), "object store call failed, retrying in {d:?}: {e}")
        })
        .await
    }
}

impl fmt::Display for Retrying {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Retrying({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for Retrying {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        if !matches!(opts.mode, object_store::PutMode::Overwrite) {
            // A conditional put that succeeded but whose answer was lost would fail when
            // repeated: leave those to the caller.
            return self.inner.put_opts(location, payload, opts).await;
        }
        // Payloads are reference-counted: a repeat costs no copy.
        self.again(StoreOp::Put, || self.inner.put_opts(location, payload.clone(), opts.clone())).await
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        self.again(StoreOp::Put, || self.inner.put_multipart_opts(location, opts.clone())).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.again(StoreOp::Get, || self.inner.get_opts(location, options.clone())).await
    }

    async fn get_range(&self, location: &Path, range: Range<u64>) -> Result<Bytes> {
        self.again(StoreOp::Get, || self.inner.get_range(location, range.clone())).await
    }

    async fn head(&self, location: &Path) -> Result<ObjectMeta> {
        self.again(StoreOp::Head, || self.inner.head(location)).await
    }

    async fn delete(&self, location: &Path) -> Result<()> {
        self.again(StoreOp::Delete, || self.inner.delete(location)).await
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.again(StoreOp::List, || self.inner.list_with_delimiter(prefix)).await
    }

    async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
        self.again(StoreOp::Copy, || self.inner.copy(from, to)).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        self.inner.copy_if_not_exists(from, to).await
    }
}

/// Fails, stalls or passes each call as the `object-store-<op>` failpoints say.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self { inner }
    }
}

/// The error a failpoint injects: generic, so it counts as transient like a 503 would.
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
fn injected(op: StoreOp) -> object_store::Error {
    object_store::Error::Generic { store: "faults", source: format!("injected fault in {}", op.as_str()).into() }
}

/// Runs the failpoint of `op`: `Err` when it says to fail (after any sleep it adds).
#[cfg_attr(not(feature = "failpoints"), allow(unused_variables))]
fn check(op: StoreOp) -> Result<()> {
    #[cfg(feature = "failpoints")]
    {
        let name = match op {
            StoreOp::Put => "object-store-put",
            StoreOp::Get => "object-store-get",
            StoreOp::Head => "object-store-head",
            StoreOp::Delete => "object-store-delete",
            StoreOp::List => "object-store-list",
            StoreOp::Copy => "object-store-copy",
            StoreOp::Part => "object-store-part",
            StoreOp::Complete => "object-store-complete",
        };
        fail::fail_point!(name, |_| Err(injected(op)));
    }
    Ok(())
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Faulty({})", self.inner)
    }
}

/// Failpoints that sleep block the thread: run them where blocking is allowed.
async fn checked(op: StoreOp) -> Result<()> {
    tokio::task::spawn_blocking(move || check(op)).await.map_err(|e| object_store::Error::JoinError { source: e })?
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        checked(StoreOp::Put).await?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        checked(StoreOp::Put).await?;
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(FaultyUpload { inner }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        checked(StoreOp::Get).await?;
        self.inner.get_opts(location, options).await
    }

    async fn get_range(&self, location: &Path, range: Range<u64>) -> Result<Bytes> {
        checked(StoreOp::Get).await?;
        self.inner.get_range(location, range).await
    }

    async fn head(&self, location: &Path) -> Result<ObjectMeta> {
        checked(StoreOp::Head).await?;
        self.inner.head(location).await
    }

    async fn delete(&self, location: &Path) -> Result<()> {
        checked(StoreOp::Delete).await?;
        self.inner.delete(location).await
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        use futures::StreamExt;
        match check(StoreOp::List) {
            Ok(()) => self.inner.list(prefix),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        checked(StoreOp::List).await?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
        checked(StoreOp::Copy).await?;
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        checked(StoreOp::Copy).await?;
        self.inner.copy_if_not_exists(from, to).await
    }
}

#[derive(Debug)]
struct FaultyUpload {
    inner: Box<dyn MultipartUpload>,
}

#[async_trait]
impl MultipartUpload for FaultyUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let part = self.inner.put_part(data);
        Box::pin(async move {
            checked(StoreOp::Part).await?;
            part.await
        })
    }

    async fn complete(&mut self) -> Result<PutResult> {
        checked(StoreOp::Complete).await?;
        self.inner.complete().await
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Mutex;

    use object_store::memory::InMemory;

    use super::*;

    /// An in-memory store whose next `fail` calls fail with `error`.
    #[derive(Debug)]
    struct Flaky {
        inner: InMemory,
        fail: AtomicU32,
        not_found: bool,
        calls: AtomicU32,
    }

    impl Flaky {
        fn new(fail: u32, not_found: bool) -> Arc<Self> {
            Arc::new(Self { inner: InMemory::new(), fail: AtomicU32::new(fail), not_found, calls: AtomicU32::new(0) })
        }

        fn trip(&self) -> Result<()> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.fail.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_err() {
                return Ok(());
            }
            Err(if self.not_found {
                object_store::Error::NotFound { path: "x".into(), source: "gone".into() }
            } else {
                object_store::Error::Generic { store: "flaky", source: "503".into() }
            })
        }
    }

    impl fmt::Display for Flaky {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Flaky")
        }
    }

    #[async_trait]
    impl ObjectStore for Flaky {
        async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
            self.trip()?;
            self.inner.put_opts(location, payload, opts).await
        }
        async fn put_multipart_opts(&self, l: &Path, o: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
            self.inner.put_multipart_opts(l, o).await
        }
        async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
            self.trip()?;
            self.inner.get_opts(location, options).await
        }
        async fn delete(&self, location: &Path) -> Result<()> {
            self.trip()?;
            self.inner.delete(location).await
        }
        fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
            self.inner.list(prefix)
        }
        async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }
        async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
            self.inner.copy(from, to).await
        }
        async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
            self.inner.copy_if_not_exists(from, to).await
        }
    }

    #[derive(Debug, Default)]
    struct Seen(Mutex<Vec<(StoreOp, Option<&'static str>)>>);

    impl StoreObserver for Seen {
        fn observe(&self, op: StoreOp, _: Duration, error: Option<&'static str>) {
            self.0.lock().unwrap().push((op, error));
        }
    }

    const QUICK: Backoff = Backoff {
        base: Duration::from_millis(1),
        max: Duration::from_millis(1),
        max_tries: 4,
        deadline: Duration::from_secs(5),
    };

    #[tokio::test]
    async fn transient_errors_are_retried_and_every_try_is_observed() {
        let flaky = Flaky::new(2, false);
        let seen = Arc::new(Seen::default());
        let store = Retrying::new(Arc::new(Instrumented::new(flaky.clone(), seen.clone())), QUICK);
        let at = Path::from("a/b");
        store.put(&at, Bytes::from_static(b"hello").into()).await.unwrap();
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 3, "two failures, then the put");
        assert_eq!(store.get_range(&at, 1..4).await.unwrap(), Bytes::from_static(b"ell"));
        let seen = seen.0.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec![
                (StoreOp::Put, Some("generic")),
                (StoreOp::Put, Some("generic")),
                (StoreOp::Put, None),
                (StoreOp::Get, None)
            ]
        );
    }

    #[tokio::test]
    async fn answers_are_not_retried_and_outages_end_at_the_policy() {
        let flaky = Flaky::new(1, true);
        let store = Retrying::new(flaky.clone(), QUICK);
        let err = store.get(&Path::from("nothing")).await.unwrap_err();
        assert!(matches!(err, object_store::Error::NotFound { .. }));
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 1, "not found is an answer");
        let down = Flaky::new(u32::MAX, false);
        let store = Retrying::new(down.clone(), QUICK);
        assert!(store.delete(&Path::from("x")).await.is_err());
        assert_eq!(down.calls.load(Ordering::SeqCst), QUICK.max_tries, "gave up after the policy's tries");
    }
}
