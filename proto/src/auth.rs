//! Who is calling, and what they may do: credentials, signed tokens and capabilities.
//!
//! Three kinds of caller exist besides cluster nodes (which prove themselves with a client
//! certificate from the cluster CA, see [`crate::transport`]):
//! - a **principal** (a tenant, or an admin) holds a long-lived secret, from a file or the
//!   environment, and sends it to the master only ([`Credential::Secret`]);
//! - an **application** holds a token the master signed when it registered
//!   ([`Scope::App`]); executors get it from the driver through the shuffle handle;
//! - a **capability** ([`Scope::Shuffle`]) names one generation of one shuffle with rights
//!   (write, read) and an expiry. Workers verify it offline with the masters' public keys.
//!
//! Invariants:
//! - Tokens are Ed25519 signatures over a domain-separated rkyv archive of [`Claims`]; the
//!   claims a verifier returns are the ones the signature covers, never bytes beside them.
//! - Several verification keys may be valid at once (rotation); exactly one signs.
//! - A secret is compared in constant time against the SHA-256 the master's principals file
//!   holds; secrets and tokens never appear in `Debug` output or logs.
//! - Every check is a pure function of its inputs; time comes in as `now_unix_ms`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rkyv::{Archive, Deserialize, Serialize};

use crate::error::{ErrorCode, WireError};
use crate::ids::{AppId, ShuffleKey};
use crate::messages::{AuthKeys, VerifyKey};

/// Longest encoded credential a frame may carry.
pub use crate::messages::MAX_CREDENTIAL_LEN;
/// Longest principal name and secret.
pub const MAX_NAME_LEN: usize = 64;
pub const MAX_SECRET_LEN: usize = 256;
/// Verified tokens remembered by a verifier before it starts afresh.
const CACHE_ENTRIES: usize = 16_384;
// v2: claims carry the app's incarnation; a v1 token never verifies as a v2 one.
const SIGNING_CONTEXT: &[u8] = b"shoal-token-v2\0";

/// Right to push batches of a shuffle.
pub const RIGHT_WRITE: u8 = 1;
/// Right to read partitions of a shuffle.
pub const RIGHT_READ: u8 = 2;

/// What a caller presents with a request (the frame's auth section).
#[derive(Archive, Serialize, Deserialize, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum Credential {
    /// A principal's long-lived secret; only masters accept it.
    Secret { principal: String, secret: String },
    /// A token signed by a master.
    Token { key_id: u32, claims: Vec<u8>, signature: Vec<u8> },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Secret { principal, .. } => write!(f, "Secret({principal}, ***)"),
            Credential::Token { key_id, .. } => write!(f, "Token(key {key_id}, ***)"),
        }
    }
}

/// What a token says.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Claims {
    pub tenant: String,
    pub app: AppId,
    /// Which registration of `app` the masters issued this for (see
    /// `docs/security.md#app-incarnations`): an app id unregistered and registered again, by
    /// the same tenant or another, gets a new incarnation, and tokens of the old one open
    /// nothing of the new one's, nor the reverse.
    pub incarnation: u64,
    pub scope: Scope,
    /// Wall-clock milliseconds since the Unix epoch after which the token is refused.
    pub expires_unix_ms: u64,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum Scope {
    /// The application itself: master calls about its own shuffles.
    App,
    /// One generation of one shuffle, with [`RIGHT_WRITE`] and/or [`RIGHT_READ`].
    Shuffle { shuffle_id: u32, generation: u32, rights: u8 },
}

impl Claims {
    /// Whether these claims allow `rights` on `shuffle`.
    pub fn allows(&self, shuffle: &ShuffleKey, rights: u8) -> bool {
        match self.scope {
            Scope::Shuffle { shuffle_id, generation, rights: have } => {
                self.app == shuffle.app
                    && shuffle_id == shuffle.shuffle_id
                    && generation == shuffle.generation
                    && have & rights == rights
            }
            Scope::App => false,
        }
    }
}

/// Why a caller was refused. Peers see only [`AuthError::wire`]: a code and a fixed message.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    #[error("no credential")]
    Missing,
    #[error("unknown principal or wrong secret")]
    BadSecret,
    #[error("token signed by unknown key {0}")]
    UnknownKey(u32),
    #[error("token signature does not verify")]
    BadSignature,
    #[error("malformed credential: {0}")]
    Malformed(&'static str),
    #[error("token expired")]
    Expired,
    #[error("not allowed: {0}")]
    Forbidden(&'static str),
    #[error("key material: {0}")]
    Keys(String),
}

impl AuthError {
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::Expired => ErrorCode::Unauthorized,
            AuthError::Keys(_) => ErrorCode::Internal,
            _ => ErrorCode::Unauthorized,
        }
    }

    /// The error a peer sees: no key ids, names or internal detail.
    pub fn wire(&self) -> WireError {
        let msg = match self {
            AuthError::Missing => "this call needs a credential",
            AuthError::BadSecret => "unknown principal or wrong secret",
            AuthError::UnknownKey(_) | AuthError::BadSignature | AuthError::Malformed(_) => "invalid credential",
            AuthError::Expired => "credential expired: fetch a fresh one",
            AuthError::Forbidden(what) => what,
            AuthError::Keys(_) => "authentication is not available",
        };
        WireError::new(self.code(), msg)
    }
}

impl From<AuthError> for WireError {
    fn from(e: AuthError) -> Self {
        e.wire()
    }
}

fn archive<T>(v: &T) -> Result<Vec<u8>, AuthError>
where
    T: for<'a> rkyv::Serialize<
        rkyv::api::high::HighSerializer<
            rkyv::util::AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rkyv::rancor::Error,
        >,
    >,
{
    rkyv::to_bytes::<rkyv::rancor::Error>(v).map(|b| b.to_vec()).map_err(|_| AuthError::Malformed("encode"))
}

impl Credential {
    /// The bytes a frame's auth section carries.
    pub fn encode(&self) -> Result<Vec<u8>, AuthError> {
        let b = archive(self)?;
        if b.len() > MAX_CREDENTIAL_LEN {
            return Err(AuthError::Malformed("credential too large"));
        }
        Ok(b)
    }

    /// Validates and decodes an auth section.
    pub fn decode(b: &[u8]) -> Result<Credential, AuthError> {
        if b.len() > MAX_CREDENTIAL_LEN {
            return Err(AuthError::Malformed("credential too large"));
        }
        let c = rkyv::from_bytes::<Credential, rkyv::rancor::Error>(b).map_err(|_| AuthError::Malformed("archive"))?;
        if let Credential::Secret { principal, secret } = &c {
            if principal.len() > MAX_NAME_LEN || secret.len() > MAX_SECRET_LEN {
                return Err(AuthError::Malformed("secret too long"));
            }
        }
        Ok(c)
    }

    /// Parses the text form kept in credential files and env: `<principal>:<secret>`.
    pub fn parse_secret(text: &str) -> Result<Credential, AuthError> {
        let (principal, secret) = text.trim().split_once(':').ok_or(AuthError::Malformed("expected name:secret"))?;
        check_name(principal)?;
        if secret.is_empty() || secret.len() > MAX_SECRET_LEN {
            return Err(AuthError::Malformed("secret must be 1..=256 bytes"));
        }
        Ok(Credential::Secret { principal: principal.into(), secret: secret.into() })
    }

    /// Text form of a token (for handing to executors): base64url of its encoding.
    pub fn to_text(&self) -> Result<String, AuthError> {
        Ok(URL_SAFE_NO_PAD.encode(self.encode()?))
    }

    pub fn from_text(text: &str) -> Result<Credential, AuthError> {
        let b = URL_SAFE_NO_PAD.decode(text.trim()).map_err(|_| AuthError::Malformed("base64"))?;
        Credential::decode(&b)
    }

    /// The claims of a token, unverified: what a client may read of its own token (its
    /// expiry, to refresh early). Never use this to decide access.
    pub fn unverified_claims(&self) -> Option<Claims> {
        match self {
            Credential::Token { claims, .. } => rkyv::from_bytes::<Claims, rkyv::rancor::Error>(claims).ok(),
            Credential::Secret { .. } => None,
        }
    }
}

fn check_name(name: &str) -> Result<(), AuthError> {
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(AuthError::Malformed("principal names are 1..=64 of [A-Za-z0-9._-]"));
    }
    Ok(())
}

fn random_bytes<const N: usize>() -> Result<[u8; N], AuthError> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new().fill(&mut b).map_err(|_| AuthError::Keys("no system randomness".into()))?;
    Ok(b)
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn b64_32(what: &str, text: &str) -> Result<[u8; 32], AuthError> {
    let v = URL_SAFE_NO_PAD.decode(text.trim()).map_err(|_| AuthError::Keys(format!("{what}: not base64url")))?;
    v.try_into().map_err(|_| AuthError::Keys(format!("{what}: expected 32 bytes")))
}

// ---------------------------------------------------------------------------------------------
// Principals: tenants and admins, known to the masters by the hash of their secret.

/// What a principal is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Tenant,
    Admin,
}

/// The masters' table of principals (`principals.toml`):
///
/// ```toml
/// [tenants]
/// analytics = "<base64url SHA-256 of the secret>"
/// [admins]
/// ops = "<...>"
/// ```
#[derive(Clone, Default)]
pub struct Principals {
    entries: BTreeMap<String, (Role, [u8; 32])>,
}

#[derive(serde::Deserialize, serde::Serialize, Default)]
struct PrincipalsFile {
    #[serde(default)]
    tenants: BTreeMap<String, String>,
    #[serde(default)]
    admins: BTreeMap<String, String>,
}

impl Principals {
    pub fn parse(text: &str) -> Result<Principals, AuthError> {
        let f: PrincipalsFile = toml::from_str(text).map_err(|e| AuthError::Keys(format!("principals: {e}")))?;
        let mut entries = BTreeMap::new();
        for (role, table) in [(Role::Tenant, f.tenants), (Role::Admin, f.admins)] {
            for (name, hash) in table {
                check_name(&name).map_err(|_| AuthError::Keys(format!("principal `{name}`: bad name")))?;
                let h = b64_32(&format!("principal `{name}`"), &hash)?;
                if entries.insert(name.clone(), (role, h)).is_some() {
                    return Err(AuthError::Keys(format!("principal `{name}` is both a tenant and an admin")));
                }
            }
        }
        Ok(Principals { entries })
    }

    pub fn load(path: &std::path::Path) -> Result<Principals, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|e| AuthError::Keys(format!("{}: {e}", path.display())))?;
        Self::parse(&text)
    }

    /// The role of the principal whose secret this is.
    pub fn check(&self, principal: &str, secret: &str) -> Result<Role, AuthError> {
        let want = self.entries.get(principal);
        // Hash even for unknown names, so timing does not tell which names exist.
        let got = sha256(secret.as_bytes());
        match want {
            Some((role, h)) if constant_time_eq(h, &got) => Ok(*role),
            _ => Err(AuthError::BadSecret),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A new secret for `principal`: the credential text to hand over (`name:secret`) and the
    /// line of `principals.toml` that admits it.
    pub fn new_secret(principal: &str) -> Result<(String, String), AuthError> {
        check_name(principal)?;
        let secret = URL_SAFE_NO_PAD.encode(random_bytes::<32>()?);
        let hash = URL_SAFE_NO_PAD.encode(sha256(secret.as_bytes()));
        Ok((format!("{principal}:{secret}"), format!("{principal} = \"{hash}\"")))
    }
}

// ---------------------------------------------------------------------------------------------
// Keys: the masters sign, everyone with the public keys verifies.

/// A public key that verifies tokens, as handed to workers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    pub id: u32,
    pub key: [u8; 32],
}

/// Wall-clock milliseconds since the Unix epoch: the time tokens expire by. Read at the edges
/// and passed in, so every check stays a pure function.
#[allow(clippy::disallowed_methods)] // the one wall-clock read for expiry checks
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The masters' signing keys (`signing-keys.toml`):
///
/// ```toml
/// sign = 2          # the key that signs; every listed key verifies
/// [keys]
/// 1 = "<base64url 32-byte Ed25519 seed>"
/// 2 = "<...>"
/// ```
pub struct SigningKeys {
    sign_id: u32,
    pairs: BTreeMap<u32, ring::signature::Ed25519KeyPair>,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeys").field("sign", &self.sign_id).field("keys", &self.pairs.len()).finish()
    }
}

#[derive(serde::Deserialize)]
struct KeysFile {
    sign: u32,
    keys: BTreeMap<String, String>,
}

impl SigningKeys {
    pub fn parse(text: &str) -> Result<SigningKeys, AuthError> {
        let f: KeysFile = toml::from_str(text).map_err(|e| AuthError::Keys(format!("signing keys: {e}")))?;
        let mut pairs = BTreeMap::new();
        for (id, seed) in f.keys {
            let id: u32 = id.parse().map_err(|_| AuthError::Keys(format!("signing key id `{id}` is not a number")))?;
            let seed = b64_32(&format!("signing key {id}"), &seed)?;
            let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed)
                .map_err(|_| AuthError::Keys(format!("signing key {id} is not an Ed25519 seed")))?;
            pairs.insert(id, pair);
        }
        if !pairs.contains_key(&f.sign) {
            return Err(AuthError::Keys(format!("sign = {} names no key in [keys]", f.sign)));
        }
        Ok(SigningKeys { sign_id: f.sign, pairs })
    }

    pub fn load(path: &std::path::Path) -> Result<SigningKeys, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|e| AuthError::Keys(format!("{}: {e}", path.display())))?;
        Self::parse(&text)
    }

    /// The text of a new keys file with one fresh key, id `id`, signing.
    pub fn generate_file(id: u32) -> Result<String, AuthError> {
        let seed = URL_SAFE_NO_PAD.encode(random_bytes::<32>()?);
        Ok(format!("sign = {id}\n\n[keys]\n{id} = \"{seed}\"\n"))
    }

    pub fn public_keys(&self) -> Vec<PublicKey> {
        use ring::signature::KeyPair;
        self.pairs
            .iter()
            .filter_map(|(id, p)| p.public_key().as_ref().try_into().ok().map(|key| PublicKey { id: *id, key }))
            .collect()
    }

    /// Signs `claims` with the signing key.
    pub fn sign(&self, claims: &Claims) -> Result<Credential, AuthError> {
        let pair = self.pairs.get(&self.sign_id).ok_or_else(|| AuthError::Keys("no signing key".into()))?;
        let bytes = archive(claims)?;
        let mut msg = Vec::with_capacity(SIGNING_CONTEXT.len() + bytes.len());
        msg.extend_from_slice(SIGNING_CONTEXT);
        msg.extend_from_slice(&bytes);
        let signature = pair.sign(&msg).as_ref().to_vec();
        Ok(Credential::Token { key_id: self.sign_id, claims: bytes, signature })
    }
}

/// Signs what the masters hand out: app tokens at registration, capabilities with assignments
/// and read plans. Pure apart from the signature: time comes in as `now_unix_ms`.
#[derive(Debug)]
pub struct Issuer {
    pub keys: SigningKeys,
    pub token_ttl_ms: u64,
    pub capability_ttl_ms: u64,
}

impl Issuer {
    /// The token an application presents for its master calls.
    pub fn app_token(
        &self,
        tenant: &str,
        app: &AppId,
        incarnation: u64,
        now_unix_ms: u64,
    ) -> Result<Credential, AuthError> {
        self.keys.sign(&Claims {
            tenant: tenant.into(),
            app: app.clone(),
            incarnation,
            scope: Scope::App,
            expires_unix_ms: now_unix_ms.saturating_add(self.token_ttl_ms),
        })
    }

    /// A capability for `rights` on one generation of one shuffle, encoded for the wire.
    pub fn capability(
        &self,
        tenant: &str,
        incarnation: u64,
        shuffle: &ShuffleKey,
        rights: u8,
        now_unix_ms: u64,
    ) -> Result<Vec<u8>, AuthError> {
        self.keys
            .sign(&Claims {
                tenant: tenant.into(),
                app: shuffle.app.clone(),
                incarnation,
                scope: Scope::Shuffle { shuffle_id: shuffle.shuffle_id, generation: shuffle.generation, rights },
                expires_unix_ms: now_unix_ms.saturating_add(self.capability_ttl_ms),
            })?
            .encode()
    }

    /// What workers need to verify offline.
    pub fn auth_keys(&self) -> AuthKeys {
        AuthKeys { required: true, keys: self.keys.public_keys().iter().map(PublicKey::to_wire).collect() }
    }
}

impl PublicKey {
    pub fn to_wire(&self) -> VerifyKey {
        VerifyKey { id: self.id, key: self.key.to_vec() }
    }

    /// A key from the wire; `None` if it is not 32 bytes.
    pub fn from_wire(k: &VerifyKey) -> Option<PublicKey> {
        Some(PublicKey { id: k.id, key: k.key.as_slice().try_into().ok()? })
    }
}

/// A verified token, by signature: the key id and claims bytes it was verified with, and what
/// the claims decode to.
type Verified = (u32, Vec<u8>, Arc<Claims>);

/// Verifies tokens against a set of public keys, remembering the ones it has verified (so a
/// stream of pushes with the same capability costs one signature check).
///
/// Invariant: a remembered token is accepted only with the key id and claims it was verified
/// with, so the cache never accepts what a signature check would refuse.
#[derive(Default)]
pub struct Verifier {
    keys: RwLock<BTreeMap<u32, [u8; 32]>>,
    cache: Mutex<HashMap<Vec<u8>, Verified>>,
}

impl Verifier {
    pub fn new(keys: &[PublicKey]) -> Verifier {
        let v = Verifier::default();
        v.set_keys(keys);
        v
    }

    /// Replaces the key set (rotation); tokens of a dropped key stop verifying at once.
    pub fn set_keys(&self, keys: &[PublicKey]) {
        let new: BTreeMap<u32, [u8; 32]> = keys.iter().map(|k| (k.id, k.key)).collect();
        let mut g = self.keys.write().unwrap_or_else(|p| p.into_inner());
        if *g != new {
            *g = new;
            self.cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }

    pub fn has_keys(&self) -> bool {
        !self.keys.read().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    /// The verified claims of a token that has not expired at `now_unix_ms`.
    pub fn verify(&self, cred: &Credential, now_unix_ms: u64) -> Result<Arc<Claims>, AuthError> {
        let Credential::Token { key_id, claims, signature } = cred else {
            return Err(AuthError::Forbidden("a token is needed here, not a secret"));
        };
        let cached = {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.get(signature).filter(|(k, c, _)| k == key_id && c == claims).map(|(_, _, v)| v.clone())
        };
        let verified = match cached {
            Some(c) => c,
            None => {
                let key = self.keys.read().unwrap_or_else(|p| p.into_inner()).get(key_id).copied();
                let key = key.ok_or(AuthError::UnknownKey(*key_id))?;
                let mut msg = Vec::with_capacity(SIGNING_CONTEXT.len() + claims.len());
                msg.extend_from_slice(SIGNING_CONTEXT);
                msg.extend_from_slice(claims);
                ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key)
                    .verify(&msg, signature)
                    .map_err(|_| AuthError::BadSignature)?;
                let c = rkyv::from_bytes::<Claims, rkyv::rancor::Error>(claims)
                    .map_err(|_| AuthError::Malformed("claims"))?;
                c.app.validate().map_err(|_| AuthError::Malformed("claims"))?;
                let c = Arc::new(c);
                let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                if cache.len() >= CACHE_ENTRIES {
                    cache.clear();
                }
                cache.insert(signature.clone(), (*key_id, claims.clone(), c.clone()));
                c
            }
        };
        if now_unix_ms > verified.expires_unix_ms {
            return Err(AuthError::Expired);
        }
        Ok(verified)
    }
}

// ---------------------------------------------------------------------------------------------
// Files: credentials for clients, key material for masters.

impl Credential {
    /// Reads a credential file (`name:secret`, as `shoal auth init` writes it).
    pub fn load_secret_file(path: &std::path::Path) -> Result<Credential, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|e| AuthError::Keys(format!("{}: {e}", path.display())))?;
        Credential::parse_secret(&text)
            .map_err(|e| AuthError::Keys(format!("{}: {e} (expected name:secret)", path.display())))
    }
}

/// Writes `text` to `path`, readable by its owner only.
pub fn write_private(path: &std::path::Path, text: &str) -> Result<(), AuthError> {
    crate::certs::write_owner_only(path, text).map_err(|e| AuthError::Keys(format!("{}: {e}", path.display())))
}

/// What [`init_auth_dir`] wrote.
#[derive(Clone, Debug)]
pub struct AuthFiles {
    /// For the masters.
    pub principals: std::path::PathBuf,
    pub signing_keys: std::path::PathBuf,
    /// The admin's credential file, for the `shoal` CLI.
    pub admin: std::path::PathBuf,
    /// Each tenant's name and credential file, for its Spark drivers.
    pub tenants: Vec<(String, std::path::PathBuf)>,
}

/// Makes everything a new cluster's authentication needs in `dir`: a signing key, one secret
/// per tenant and one admin secret (credential files `<name>.credential`, mode 0600), and the
/// masters' `principals.toml`, which holds only hashes.
pub fn init_auth_dir(dir: &std::path::Path, tenants: &[&str], admin: &str) -> Result<AuthFiles, AuthError> {
    std::fs::create_dir_all(dir).map_err(|e| AuthError::Keys(format!("{}: {e}", dir.display())))?;
    let signing_keys = dir.join("signing-keys.toml");
    write_private(&signing_keys, &SigningKeys::generate_file(1)?)?;
    let mut table = String::from("[tenants]\n");
    let mut out = Vec::new();
    for t in tenants {
        let (cred, line) = Principals::new_secret(t)?;
        let path = dir.join(format!("{t}.credential"));
        write_private(&path, &format!("{cred}\n"))?;
        table.push_str(&line);
        table.push('\n');
        out.push((t.to_string(), path));
    }
    let (cred, line) = Principals::new_secret(admin)?;
    let admin_path = dir.join(format!("{admin}.credential"));
    write_private(&admin_path, &format!("{cred}\n"))?;
    table.push_str(&format!("\n[admins]\n{line}\n"));
    let principals = dir.join("principals.toml");
    write_private(&principals, &table)?;
    Principals::load(&principals)?;
    Ok(AuthFiles { principals, signing_keys, admin: admin_path, tenants: out })
}

// ---------------------------------------------------------------------------------------------
// Callers.

/// Who a request comes from, once its credential is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// No credential (a node may still be calling: see [`Caller::node`]).
    None,
    Admin(String),
    Tenant(String),
    App {
        tenant: String,
        app: AppId,
        incarnation: u64,
    },
    Capability(Arc<Claims>),
}

/// A checked caller: the rights of a cluster node (client certificate from the cluster CA)
/// and of the credential it presented, together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub node: bool,
    pub principal: Principal,
}

impl Caller {
    pub fn anonymous() -> Caller {
        Caller { node: false, principal: Principal::None }
    }

    /// A cluster node (or an admin, where admins may act).
    pub fn is_node(&self) -> bool {
        self.node
    }

    pub fn is_admin(&self) -> bool {
        matches!(self.principal, Principal::Admin(_))
    }

    /// The application this caller speaks for, with its tenant.
    pub fn app(&self) -> Option<(&str, &AppId)> {
        match &self.principal {
            Principal::App { tenant, app, .. } => Some((tenant, app)),
            _ => None,
        }
    }

    /// Whether the caller holds `rights` on `shuffle`: a node, or a capability for it.
    pub fn may(&self, shuffle: &ShuffleKey, rights: u8) -> bool {
        self.node || matches!(&self.principal, Principal::Capability(c) if c.allows(shuffle, rights))
    }
}

/// Turns what a request carried into a [`Caller`].
pub struct Authenticator {
    pub verifier: Arc<Verifier>,
    /// Masters only: the principals that may present secrets.
    pub principals: Option<Principals>,
}

impl Authenticator {
    pub fn identify(&self, node: bool, cred: Option<&Credential>, now_unix_ms: u64) -> Result<Caller, AuthError> {
        let principal = match cred {
            None => Principal::None,
            Some(Credential::Secret { principal, secret }) => {
                let table = self.principals.as_ref().ok_or(AuthError::Forbidden("secrets go to masters only"))?;
                match table.check(principal, secret)? {
                    Role::Admin => Principal::Admin(principal.clone()),
                    Role::Tenant => Principal::Tenant(principal.clone()),
                }
            }
            Some(token) => {
                let claims = self.verifier.verify(token, now_unix_ms)?;
                match claims.scope {
                    Scope::App => Principal::App {
                        tenant: claims.tenant.clone(),
                        app: claims.app.clone(),
                        incarnation: claims.incarnation,
                    },
                    Scope::Shuffle { .. } => Principal::Capability(claims),
                }
            }
        };
        Ok(Caller { node, principal })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(id: u32) -> SigningKeys {
        SigningKeys::parse(&SigningKeys::generate_file(id).unwrap()).unwrap()
    }

    fn claims(app: &str, scope: Scope, expires: u64) -> Claims {
        Claims { tenant: "t".into(), app: AppId::new(app).unwrap(), incarnation: 1, scope, expires_unix_ms: expires }
    }

    fn cap(shuffle_id: u32, generation: u32, rights: u8) -> Scope {
        Scope::Shuffle { shuffle_id, generation, rights }
    }

    #[test]
    fn a_signed_token_verifies_and_round_trips_through_text() {
        let k = keys(1);
        let v = Verifier::new(&k.public_keys());
        let tok = k.sign(&claims("a", Scope::App, 1000)).unwrap();
        let back = Credential::from_text(&tok.to_text().unwrap()).unwrap();
        assert_eq!(*v.verify(&back, 999).unwrap(), claims("a", Scope::App, 1000));
        assert_eq!(v.verify(&back, 1001), Err(AuthError::Expired));
    }

    #[test]
    fn tampered_claims_and_foreign_keys_are_refused() {
        let k = keys(1);
        let v = Verifier::new(&k.public_keys());
        let tok = k.sign(&claims("a", cap(1, 0, RIGHT_READ), 1000)).unwrap();
        v.verify(&tok, 0).unwrap(); // cached now: tampering must still fail
        let Credential::Token { key_id, signature, .. } = tok.clone() else { unreachable!() };
        let forged = archive(&claims("a", cap(1, 0, RIGHT_READ | RIGHT_WRITE), 1000)).unwrap();
        let t2 = Credential::Token { key_id, claims: forged, signature: signature.clone() };
        assert_eq!(v.verify(&t2, 0), Err(AuthError::BadSignature));
        let other = keys(1).sign(&claims("a", Scope::App, 1000)).unwrap();
        assert_eq!(v.verify(&other, 0), Err(AuthError::BadSignature));
        let unknown = keys(7).sign(&claims("a", Scope::App, 1000)).unwrap();
        assert_eq!(v.verify(&unknown, 0), Err(AuthError::UnknownKey(7)));
    }

    #[test]
    fn a_cached_token_verifies_under_its_own_key_id_only() {
        let (one, two) = (keys(1), keys(2));
        let mut both = one.public_keys();
        both.extend(two.public_keys());
        let v = Verifier::new(&both);
        let tok = one.sign(&claims("a", Scope::App, 1000)).unwrap();
        v.verify(&tok, 0).unwrap(); // cached now
        let Credential::Token { claims: bytes, signature, .. } = tok else { unreachable!() };
        let under = |key_id| Credential::Token { key_id, claims: bytes.clone(), signature: signature.clone() };
        assert_eq!(v.verify(&under(2), 0), Err(AuthError::BadSignature), "another listed key");
        assert_eq!(v.verify(&under(9), 0), Err(AuthError::UnknownKey(9)), "an unknown key");
        assert!(v.verify(&under(1), 0).is_ok(), "its own key, still cached");
    }

    #[test]
    fn two_keys_verify_during_rotation_and_a_dropped_key_stops_at_once() {
        let old = keys(1);
        let new = keys(2);
        let mut both = old.public_keys();
        both.extend(new.public_keys());
        let v = Verifier::new(&both);
        let t_old = old.sign(&claims("a", Scope::App, 10)).unwrap();
        let t_new = new.sign(&claims("a", Scope::App, 10)).unwrap();
        assert!(v.verify(&t_old, 0).is_ok() && v.verify(&t_new, 0).is_ok());
        v.set_keys(&new.public_keys());
        assert_eq!(v.verify(&t_old, 0), Err(AuthError::UnknownKey(1)));
        assert!(v.verify(&t_new, 0).is_ok());
    }

    #[test]
    fn capabilities_name_one_generation_of_one_shuffle() {
        let app = AppId::new("a").unwrap();
        let c = claims("a", cap(3, 1, RIGHT_WRITE), 10);
        assert!(c.allows(&ShuffleKey::new(app.clone(), 3, 1), RIGHT_WRITE));
        assert!(!c.allows(&ShuffleKey::new(app.clone(), 3, 1), RIGHT_READ));
        assert!(!c.allows(&ShuffleKey::new(app.clone(), 3, 0), RIGHT_WRITE), "another generation");
        assert!(!c.allows(&ShuffleKey::new(app, 4, 1), RIGHT_WRITE), "another shuffle");
        assert!(!c.allows(&ShuffleKey::new(AppId::new("b").unwrap(), 3, 1), RIGHT_WRITE), "another app");
        assert!(!claims("a", Scope::App, 10).allows(&ShuffleKey::new(AppId::new("a").unwrap(), 3, 1), RIGHT_READ));
    }

    #[test]
    fn principals_check_secrets_by_hash() {
        let (cred, line) = Principals::new_secret("analytics").unwrap();
        let (admin, aline) = Principals::new_secret("ops").unwrap();
        let p = Principals::parse(&format!("[tenants]\n{line}\n[admins]\n{aline}\n")).unwrap();
        let Credential::Secret { principal, secret } = Credential::parse_secret(&cred).unwrap() else { panic!() };
        assert_eq!(p.check(&principal, &secret), Ok(Role::Tenant));
        let Credential::Secret { principal, secret } = Credential::parse_secret(&admin).unwrap() else { panic!() };
        assert_eq!(p.check(&principal, &secret), Ok(Role::Admin));
        assert_eq!(p.check("analytics", &secret), Err(AuthError::BadSecret));
        assert_eq!(p.check("nobody", &secret), Err(AuthError::BadSecret));
        assert!(Principals::parse(&format!("[tenants]\n{line}\n[admins]\n{line}\n")).is_err(), "name in both");
        assert!(!format!("{:?}", Credential::parse_secret(&cred).unwrap()).contains(cred.split(':').nth(1).unwrap()));
    }

    #[test]
    fn an_initialised_directory_admits_its_principals_and_holds_no_secret_in_plain() {
        let dir = tempfile::tempdir().unwrap();
        let f = init_auth_dir(dir.path(), &["spark", "etl"], "admin").unwrap();
        let p = Principals::load(&f.principals).unwrap();
        let keys = SigningKeys::load(&f.signing_keys).unwrap();
        assert_eq!(keys.public_keys().len(), 1);
        let table = std::fs::read_to_string(&f.principals).unwrap();
        for (name, path) in f.tenants.iter().chain([&("admin".to_string(), f.admin.clone())]) {
            let Credential::Secret { principal, secret } = Credential::load_secret_file(path).unwrap() else {
                panic!()
            };
            assert_eq!(&principal, name);
            let role = if name == "admin" { Role::Admin } else { Role::Tenant };
            assert_eq!(p.check(&principal, &secret), Ok(role));
            assert!(!table.contains(&secret), "principals.toml holds hashes only");
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                assert_eq!(std::fs::metadata(path).unwrap().permissions().mode() & 0o777, 0o600);
            }
        }
    }

    #[test]
    fn hostile_auth_sections_are_typed_errors() {
        assert!(Credential::decode(&[0xff; 40]).is_err());
        assert!(Credential::decode(&vec![0; MAX_CREDENTIAL_LEN + 1]).is_err());
        assert!(Credential::parse_secret("no-colon").is_err());
        assert!(Credential::parse_secret("bad name:x").is_err());
        let auth = Authenticator { verifier: Arc::new(Verifier::default()), principals: None };
        let s = Credential::parse_secret("a:b").unwrap();
        assert!(auth.identify(false, Some(&s), 0).is_err(), "workers take no secrets");
    }
}
