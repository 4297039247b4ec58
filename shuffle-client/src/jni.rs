//! JNI entry points of `io.shoal.spark.ShoalNative` (built with `--features jni` as a cdylib).
//!
//! Invariants:
//! - Every entry point goes through [`entry`]: a panic is caught and becomes
//!   `ShoalInternalException`; no panic unwinds into the JVM.
//! - Errors become Java exceptions of their kind's class (`ShoalDataLostException`,
//!   `ShoalCorruptException`, `ShoalUnavailableException`, `ShoalRejectedException`,
//!   `ShoalConfigException`, `ShoalInternalException`), built with the wire code (number and
//!   name) and the [`Remedy`](shuffle_proto::Remedy) that Rust decided ([`JavaError`]); the
//!   plugin branches on `remedy()`, never on messages. Failures without a wire code
//!   (configuration, a closed handle, JNI, a panic) carry code 0, "none".
//! - Arguments from Java are checked before use: negative ids, counts and lengths, buffers that
//!   are not direct or are shorter than the range named, are `ShoalConfigException`s.
//! - Bytes cross as direct ByteBuffers: the writer compresses straight from the JVM's memory,
//!   the reader copies one decompressed batch into it.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use jni::objects::{JByteBuffer, JClass, JIntArray, JString, JThrowable, JValue};
use jni::sys::{jint, jlong, jlongArray, jstring};
use jni::JNIEnv;
use shuffle_proto::{AppId, ShuffleKey};

use crate::bridge::{Bridge, BridgeConfig, JavaError, ReadNext, ShuffleShape, MAX_READ_MAPS};
use crate::error::ClientError;

enum Failure {
    Client(ClientError),
    /// A JNI call failed; a Java exception may already be pending.
    Jni(jni::errors::Error),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::Client(e)
    }
}

impl From<jni::errors::Error> for Failure {
    fn from(e: jni::errors::Error) -> Self {
        Failure::Jni(e)
    }
}

impl From<shuffle_proto::ProtoError> for Failure {
    fn from(e: shuffle_proto::ProtoError) -> Self {
        Failure::Client(e.into())
    }
}

/// The signature of the constructor every `ShoalException` subclass has for this side.
const CONSTRUCTOR: &str = "(Ljava/lang/String;ILjava/lang/String;I)V";

fn throw(env: &mut JNIEnv, e: &JavaError, msg: &str) {
    if env.exception_check().unwrap_or(false) {
        return;
    }
    if let Ok(t) = exception(env, e, msg) {
        if env.throw(t).is_ok() {
            return;
        }
    }
    // A jar without that constructor, or no memory left: the class and message still go.
    let _ = env.exception_clear();
    if env.throw_new(e.class, msg).is_err() && !env.exception_check().unwrap_or(false) {
        // The class itself is missing (a jar without the exception classes): still fail loudly.
        let _ = env.throw_new("java/lang/IllegalStateException", msg);
    }
}

fn exception<'l>(env: &mut JNIEnv<'l>, e: &JavaError, msg: &str) -> jni::errors::Result<JThrowable<'l>> {
    let msg = env.new_string(msg)?;
    let name = env.new_string(&e.code_name)?;
    let args = [JValue::Object(&msg), JValue::Int(e.code), JValue::Object(&name), JValue::Int(e.remedy)];
    Ok(JThrowable::from(env.new_object(e.class, CONSTRUCTOR, &args)?))
}

/// Runs one entry point: catches panics, turns failures into Java exceptions, and returns
/// `fallback` to the JVM when an exception is pending.
fn entry<T>(env: &mut JNIEnv, fallback: T, f: impl FnOnce(&mut JNIEnv) -> Result<T, Failure>) -> T {
    match catch_unwind(AssertUnwindSafe(|| f(env))) {
        Ok(Ok(v)) => v,
        Ok(Err(Failure::Client(e))) => {
            throw(env, &JavaError::of(&e), &e.to_string());
            fallback
        }
        Ok(Err(Failure::Jni(e))) => {
            throw(env, &JavaError::internal(), &format!("JNI: {e}"));
            fallback
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into());
            throw(env, &JavaError::internal(), &format!("panic in the Shoal client: {what}"));
            fallback
        }
    }
}

fn config_err(msg: String) -> Failure {
    Failure::Client(ClientError::Config(msg))
}

fn non_negative(what: &str, v: jint) -> Result<u32, Failure> {
    u32::try_from(v).map_err(|_| config_err(format!("{what} {v} is negative")))
}

fn string(env: &mut JNIEnv, s: &JString) -> Result<String, Failure> {
    if s.is_null() {
        return Err(config_err("a string argument is null".into()));
    }
    Ok(env.get_string(s)?.into())
}

fn key(env: &mut JNIEnv, app: &JString, shuffle_id: jint, generation: jint) -> Result<ShuffleKey, Failure> {
    let app = AppId::new(string(env, app)?)?;
    Ok(ShuffleKey::new(app, non_negative("shuffle id", shuffle_id)?, non_negative("generation", generation)?))
}

fn shape(num_maps: jint, num_partitions: jint, replication: jint) -> Result<ShuffleShape, Failure> {
    Ok(ShuffleShape {
        num_maps: non_negative("map count", num_maps)?,
        num_partitions: non_negative("partition count", num_partitions)?,
        replication: u8::try_from(replication).map_err(|_| config_err(format!("replication {replication}")))?,
    })
}

/// One application-level call: the client handle and the application's name.
fn app_call<T>(
    env: &mut JNIEnv,
    app: &JString,
    f: impl FnOnce(&Bridge, &str) -> Result<T, ClientError>,
) -> Result<T, Failure> {
    let app = string(env, app)?;
    Ok(f(Bridge::existing()?, &app)?)
}

/// The bytes `[offset, offset + len)` of a direct buffer.
///
/// Safety of the returned slice: the JVM keeps a direct buffer's memory fixed while the Java
/// caller holds a reference to it, which it does for the whole native call.
fn direct<'b>(env: &mut JNIEnv, buf: &JByteBuffer, offset: jint, len: jint) -> Result<&'b mut [u8], Failure> {
    if buf.is_null() {
        return Err(config_err("the buffer is null".into()));
    }
    let off = non_negative("offset", offset)? as usize;
    let len = non_negative("length", len)? as usize;
    // A heap buffer has no direct address: the caller's mistake, not a JNI failure.
    let not_direct = |_| config_err("the buffer is not a direct ByteBuffer".into());
    let addr = env.get_direct_buffer_address(buf).map_err(not_direct)?;
    let cap = env.get_direct_buffer_capacity(buf).map_err(not_direct)?;
    if addr.is_null() || off.checked_add(len).is_none_or(|end| end > cap) {
        return Err(config_err(format!("range {off}+{len} outside a direct buffer of {cap} bytes")));
    }
    // SAFETY: addr..addr+cap is the buffer's live memory (checked non-null above) and
    // off+len <= cap; the Java side does not touch the buffer during the call.
    Ok(unsafe { std::slice::from_raw_parts_mut(addr.add(off), len) })
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(format!("shuffle_client={level},shuffle_proto={level}"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

#[no_mangle]
pub extern "system" fn Java_io_shoal_spark_ShoalNative_clientOpen(
    mut env: JNIEnv,
    _: JClass,
    settings: JString,
) -> jlong {
    entry(&mut env, 0, |env| {
        let text = string(env, &settings)?;
        let cfg = BridgeConfig::parse(&text)?;
        init_logging(&cfg.log);
        let b = Bridge::global(cfg.runtime_threads)?;
        Ok(b.open_client(&cfg)?)
    })
}

#[no_mangle]
pub extern "system" fn Java_io_shoal_spark_ShoalNative_registerApp(
    mut env: JNIEnv,
    _: JClass,
    client: jlong,
    app: JString,
    lease_ms: jlong,
) -> jstring {
    entry(&mut env, std::ptr::null_mut(), |env| {
        let lease = u64::try_from(lease_ms).map_err(|_| config_err(format!("lease {lease_ms} ms is negative")))?;
        let token = app_call(env, &app, |b, app| b.register_app(client, app, Duration::from_millis(lease)))?;
        Ok(env.new_string(token)?.into_raw())
    })
}

#[no_mangle]
pub extern "system" fn Java_io_shoal_spark_ShoalNative_appHeartbeat(
    mut env: JNIEnv,
    _: JClass,
    client: jlong,
    app: JString,
) {
    entry(&mut env, (), |env| app_call(env, &app, |b, app| b.app_heartbeat(client, app)))
}

#[no_mangle]
pub extern "system" fn Java_io_shoal_spark_ShoalNative_unregisterApp(
    mut env: JNIEnv,
    _: JClass,
    client: jlong,
    app: JString,
) {
    entry(&mut env, (), |env| app_call(env, &app, |b, app| b.unregister_app(client, app)))
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "system" fn Java_io_shoal_spark_ShoalNative_registerShuffle(
    mut env: JNIEnv,
    _: JClass,
    client: jlong,
    app: JString,
    shuffle_id: jint,
    generation: jint,
    num_maps: jint,
    num_partitions: jint,
    replication: jint,
) {
    entry(&mut env, (), |env| {
        let k = key(env, &app, shuffle_id, generation)?;
        let shape = shape(num_maps, num_partitions, replication)?;
        Ok(Bridge::existing()?.register_shuffle(client, &k, shape)?)
    })
}

#[no_mangle]
pub extern "system" fn Java_io_shoal_spark_ShoalNative_unregisterShuffle(
    mut env: JNIEnv,
    _: JClass,
    client: jlong,
    app: JString,
    shuffle_id: jint,
) {
    entry(&mut env, (), |env| {
        let k = key(env, &app, shuffle_id, 0)?;
        Ok(Bridge::existing()?.unregister_shuffle(client, &k)?)
    })
}

#[no_mangle]
pub extern "system" fn Java_io_shoal_spark_ShoalNative_forgetShuffle(
    mut env: JNIEnv,
    _: JClass,
    client: jlong,
    shuffle_id: jint,
) {
    entry(&mut env, (), |_| {
        let sid = non_negative("shuffle id", shuffle_id)?;
        if let Ok(b) = Bridge::existing() {
            b.forget_shuffle(client, sid);
        }
        Ok(())
    })
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "system" fn Java_io_shoal_spark_ShoalNative_writerOpen(
    mut env: JNIEnv,
    _: JClass,
    client: jlong,
    app: JString,
    shuffle_id: jint,
    generation: jint,
    num_maps: jint,
    num_partitions: jint,
    replication: jint,
    map: jint,
    attempt: jlong,
) -> jlong {
    entry(&mut env, 0, |env| {
        let k = key(env, &app, shuffle_id, generation)?;
        let shape = shape(num_maps, num_partitions, replication)?;
        let map = non_negative("map index", map)?;
        let attempt = u64::try_from(attempt).map_err(|_| config_err(format!("attempt {attempt} is negative")))?;
        Ok(Bridge::existing()?.open_writer(client, &k, shape, map, attempt)?)
    })
}

#[no_mangle]
pub extern "system" fn Java_io_shoal_spark_ShoalNative_writerWrite(
    mut env: JNIEnv,
    _: JClass,
    writer: jlong,
    partition: jint,
    buf: JByteBuffer,
    offset: jint,
    len: jint,
) {
    entry(&mut env, (), |env| {
        let p = non_negative("partition", partition)?;
        let chunk = direct(env, &buf, offset, len)?;
        Ok(Bridge::existing()?.write(writer, p, chunk)?)
    })
}

/// Returns `[accepted (0/1), wire bytes, compressed bytes of partition 0, 1, ...]` and closes
/// the writer.
#[no_mangle]
pub extern "system" fn Java_io_shoal_spark_ShoalNative_writerCommit(
    mut env: JNIEnv,
    _: JClass,
    writer: jlong,
) -> jlongArray {
    entry(&mut env, std::ptr::null_mut(), |env| {
        let c = Bridge::existing()?.commit(writer)?;
        let mut out: Vec<i64> = Vec::with_capacity(c.partition_wire_bytes.len() + 2);
        out.push(i64::from(c.accepted));
        out.push(i64::try_from(c.wire_bytes).unwrap_or(i64::MAX));
        out.extend(c.partition_wire_bytes.iter().map(|b| i64::try_from(*b).unwrap_or(i64::MAX)));
        let len = i32::try_from(out.len()).map_err(|_| config_err("too many partitions".into()))?;
        let arr = env.new_long_array(len)?;
        env.set_long_array_region(&arr, 0, &out)?;
        Ok(arr.into_raw())
    })
}

#[no_mangle]
pub extern "system" fn Java_io_shoal_spark_ShoalNative_writerAbort(mut env: JNIEnv, _: JClass, writer: jlong) {
    entry(&mut env, (), |_| Ok(Bridge::existing()?.abort(writer)?))
}

#[no_mangle]
pub extern "system" fn Java_io_shoal_spark_ShoalNative_readerOpen(
    mut env: JNIEnv,
    _: JClass,
    client: jlong,
    app: JString,
    shuffle_id: jint,
    generation: jint,
    partition: jint,
    maps: JIntArray,
) -> jlong {
    entry(&mut env, 0, |env| {
        let k = key(env, &app, shuffle_id, generation)?;
        let p = non_negative("partition", partition)?;
        if maps.is_null() {
            return Err(config_err("the map list is null".into()));
        }
        let n = env.get_array_length(&maps)? as usize;
        if n > MAX_READ_MAPS {
            return Err(config_err(format!("{n} maps in one read, at most {MAX_READ_MAPS}")));
        }
        let mut raw = vec![0i32; n];
        env.get_int_array_region(&maps, 0, &mut raw)?;
        let maps = raw.into_iter().map(|m| non_negative("map index", m)).collect::<Result<Vec<u32>, _>>()?;
        Ok(Bridge::existing()?.open_reader(client, &k, p, &maps)?)
    })
}

/// Copies the next batch into `buf` from position 0: returns its length, `-1` at the end, or
/// `-n` (n > 1) when the buffer must hold at least n bytes (nothing is consumed then).
#[no_mangle]
pub extern "system" fn Java_io_shoal_spark_ShoalNative_readerNext(
    mut env: JNIEnv,
    _: JClass,
    reader: jlong,
    buf: JByteBuffer,
) -> jint {
    entry(&mut env, -1, |env| {
        if buf.is_null() {
            return Err(config_err("the buffer is null".into()));
        }
        let cap = env
            .get_direct_buffer_capacity(&buf)
            .map_err(|_| config_err("the buffer is not a direct ByteBuffer".into()))?;
        let dst = direct(env, &buf, 0, i32::try_from(cap).unwrap_or(i32::MAX))?;
        let as_int = |n: usize| i32::try_from(n).map_err(|_| config_err(format!("a batch of {n} bytes")));
        Ok(match Bridge::existing()?.read(reader, dst)? {
            ReadNext::Copied(n) => as_int(n)?,
            ReadNext::NeedCapacity(n) => -as_int(n)?,
            ReadNext::End => -1,
        })
    })
}

#[no_mangle]
pub extern "system" fn Java_io_shoal_spark_ShoalNative_readerClose(mut env: JNIEnv, _: JClass, reader: jlong) {
    entry(&mut env, (), |_| Ok(Bridge::existing()?.close_reader(reader)?))
}

/// Open writers and readers in this process (for leak checks in tests).
#[no_mangle]
pub extern "system" fn Java_io_shoal_spark_ShoalNative_openStreams(mut env: JNIEnv, _: JClass) -> jint {
    entry(&mut env, 0, |_| Ok(Bridge::existing().map(|b| b.open_streams() as jint).unwrap_or(0)))
}
