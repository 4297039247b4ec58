//! Frames: how messages travel on a QUIC stream.
//!
//! Layout (little-endian), [`FRAME_HEADER_LEN`] bytes of header, then `auth`, then `meta`,
//! then `body`:
//!
//! ```text
//!  0..2   magic        "SH" (0x53 0x48)
//!  2      version      PROTOCOL_VERSION
//!  3      kind         message kind (see Message::kind)
//!  4..8   meta_len     u32, length of the rkyv archive of the message
//!  8..12  body_len     u32, length of the raw body (batch bytes, stream records, Raft data)
//! 12..14  auth_len     u16, length of the caller's credential (requests only; 0 = none)
//! 14..16  reserved     zero
//! ```
//!
//! Invariants: every length is checked against [`FrameLimits`] before any byte of the frame
//! is buffered, and buffers grow only as bytes arrive, so a peer cannot make us allocate what
//! it has only announced; a frame that fails any check is an error, never a panic, and the
//! connection it came from should be closed.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::ProtoError;
use crate::messages::Message;

pub const MAGIC: [u8; 2] = *b"SH";
pub const PROTOCOL_VERSION: u8 = 6;
pub const FRAME_HEADER_LEN: usize = 16;
/// A buffer is never grown by more than this before the bytes to fill it have arrived.
const GROW_STEP: usize = 64 << 10;

/// Bounds on what a peer may send in one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    pub max_meta: u32,
    pub max_body: u32,
    pub max_auth: u16,
}

impl Default for FrameLimits {
    fn default() -> Self {
        Self { max_meta: 16 << 20, max_body: 72 << 20, max_auth: 2048 }
    }
}

/// A parsed, bounds-checked frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: u8,
    pub meta_len: u32,
    pub body_len: u32,
    pub auth_len: u16,
}

impl FrameHeader {
    pub fn parse(b: &[u8], limits: &FrameLimits) -> Result<FrameHeader, ProtoError> {
        if b.len() < FRAME_HEADER_LEN {
            return Err(ProtoError::Truncated { need: FRAME_HEADER_LEN, have: b.len() });
        }
        if b[0..2] != MAGIC {
            return Err(ProtoError::BadMagic(u16::from_be_bytes([b[0], b[1]])));
        }
        if b[2] != PROTOCOL_VERSION {
            return Err(ProtoError::UnsupportedVersion { got: b[2], supported: PROTOCOL_VERSION });
        }
        let kind = b[3];
        if Message::kind_name(kind).is_none() {
            return Err(ProtoError::UnknownKind(kind));
        }
        let meta_len = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let body_len = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        let auth_len = u16::from_le_bytes([b[12], b[13]]);
        if b[14] != 0 || b[15] != 0 {
            return Err(ProtoError::Invalid("frame reserved bytes are not zero".into()));
        }
        if meta_len > limits.max_meta {
            return Err(ProtoError::TooLarge { what: "frame meta", len: meta_len.into(), max: limits.max_meta.into() });
        }
        if body_len > limits.max_body {
            return Err(ProtoError::TooLarge { what: "frame body", len: body_len.into(), max: limits.max_body.into() });
        }
        if auth_len > limits.max_auth {
            return Err(ProtoError::TooLarge { what: "frame auth", len: auth_len.into(), max: limits.max_auth.into() });
        }
        Ok(FrameHeader { kind, meta_len, body_len, auth_len })
    }

    pub fn encode(&self) -> [u8; FRAME_HEADER_LEN] {
        let mut h = [0u8; FRAME_HEADER_LEN];
        h[0..2].copy_from_slice(&MAGIC);
        h[2] = PROTOCOL_VERSION;
        h[3] = self.kind;
        h[4..8].copy_from_slice(&self.meta_len.to_le_bytes());
        h[8..12].copy_from_slice(&self.body_len.to_le_bytes());
        h[12..14].copy_from_slice(&self.auth_len.to_le_bytes());
        h
    }

    /// Length of the whole frame.
    pub fn frame_len(&self) -> usize {
        FRAME_HEADER_LEN + self.auth_len as usize + self.meta_len as usize + self.body_len as usize
    }
}

/// A frame decoded in place from a buffer.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    pub header: FrameHeader,
    pub auth: &'a [u8],
    pub meta: &'a [u8],
    pub body: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Decodes the frame at the start of `buf`; returns it and its length.
    pub fn decode(buf: &'a [u8], limits: &FrameLimits) -> Result<(Frame<'a>, usize), ProtoError> {
        let header = FrameHeader::parse(buf, limits)?;
        let len = header.frame_len();
        if buf.len() < len {
            return Err(ProtoError::Truncated { need: len, have: buf.len() });
        }
        let auth_end = FRAME_HEADER_LEN + header.auth_len as usize;
        let meta_end = auth_end + header.meta_len as usize;
        let frame = Frame {
            header,
            auth: &buf[FRAME_HEADER_LEN..auth_end],
            meta: &buf[auth_end..meta_end],
            body: &buf[meta_end..len],
        };
        Ok((frame, len))
    }

    /// Validates and decodes the message.
    pub fn message(&self) -> Result<Message, ProtoError> {
        Message::decode_meta(self.header.kind, self.meta)
    }
}

/// Appends the frame header, the caller's credential and the message archive to `out`,
/// announcing `body_len` bytes of body that the caller sends next (so a large body is never
/// copied into the frame).
pub fn encode_head(msg: &Message, auth: &[u8], body_len: usize, out: &mut Vec<u8>) -> Result<(), ProtoError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
    out.extend_from_slice(auth);
    let meta_start = out.len();
    msg.encode_meta(out)?;
    let meta_len = out.len() - meta_start;
    let too_large = |what, len: usize, max: u64| ProtoError::TooLarge { what, len: len as u64, max };
    let header = FrameHeader {
        kind: msg.kind(),
        meta_len: u32::try_from(meta_len).map_err(|_| too_large("frame meta", meta_len, u32::MAX.into()))?,
        body_len: u32::try_from(body_len).map_err(|_| too_large("frame body", body_len, u32::MAX.into()))?,
        auth_len: u16::try_from(auth.len()).map_err(|_| too_large("frame auth", auth.len(), u16::MAX.into()))?,
    };
    out[start..start + FRAME_HEADER_LEN].copy_from_slice(&header.encode());
    Ok(())
}

/// Appends a whole frame (header, archive, body) to `out`.
pub fn encode_frame(msg: &Message, body: &[u8], out: &mut Vec<u8>) -> Result<(), ProtoError> {
    encode_head(msg, &[], body.len(), out)?;
    out.extend_from_slice(body);
    Ok(())
}

/// Reads one frame. Returns `Ok(None)` on a clean end of stream before the first header byte.
/// After `Ok(Some(msg))`, `body` holds exactly the frame's body (its allocation is reused).
/// A credential in the frame is skipped: replies carry none.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    limits: &FrameLimits,
    body: &mut Vec<u8>,
) -> Result<Option<Message>, ProtoError> {
    let Some(header) = read_header(r, limits).await? else { return Ok(None) };
    let mut auth = Vec::new();
    read_rest(r, &header, body, &mut auth).await.map(Some)
}

/// Reads a frame header. `Ok(None)` on a clean end of stream before its first byte.
pub async fn read_header<R: AsyncRead + Unpin>(
    r: &mut R,
    limits: &FrameLimits,
) -> Result<Option<FrameHeader>, ProtoError> {
    let mut head = [0u8; FRAME_HEADER_LEN];
    let mut got = 0;
    while got < FRAME_HEADER_LEN {
        let n = r.read(&mut head[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(ProtoError::Truncated { need: FRAME_HEADER_LEN, have: got });
        }
        got += n;
    }
    FrameHeader::parse(&head, limits).map(Some)
}

/// Reads what follows a parsed header: the credential into `auth`, the message, and the body
/// into `body`. Buffers grow with the bytes that arrive, never ahead of them by more than
/// one step.
pub async fn read_rest<R: AsyncRead + Unpin>(
    r: &mut R,
    header: &FrameHeader,
    body: &mut Vec<u8>,
    auth: &mut Vec<u8>,
) -> Result<Message, ProtoError> {
    read_growing(r, auth, header.auth_len as usize, FRAME_HEADER_LEN).await?;
    let before = FRAME_HEADER_LEN + header.auth_len as usize;
    read_growing(r, body, header.meta_len as usize, before).await?;
    let msg = Message::decode_meta(header.kind, body)?;
    read_growing(r, body, header.body_len as usize, before + header.meta_len as usize).await?;
    Ok(msg)
}

/// Fills `buf` with exactly `len` bytes, growing it by at most [`GROW_STEP`] past what has
/// arrived (an existing allocation is reused as it is).
async fn read_growing<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    len: usize,
    before: usize,
) -> Result<(), ProtoError> {
    buf.clear();
    while buf.len() < len {
        if buf.capacity() == buf.len() {
            buf.reserve((len - buf.len()).min(GROW_STEP.max(buf.len())));
        }
        let have = buf.len();
        let room = (buf.capacity() - have).min(len - have);
        buf.resize(have + room, 0);
        let n = match r.read(&mut buf[have..]).await {
            Ok(n) => n,
            Err(e) => {
                buf.truncate(have);
                return Err(e.into());
            }
        };
        buf.truncate(have + n);
        if n == 0 {
            return Err(ProtoError::Truncated { need: before + len, have: before + have });
        }
    }
    Ok(())
}

/// Writes one frame: header and archive from `scratch` (reused), then `body` in place.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &Message,
    body: &[u8],
    scratch: &mut Vec<u8>,
) -> Result<(), ProtoError> {
    write_request(w, msg, &[], body, scratch).await
}

/// Writes one request frame carrying the caller's encoded credential (`auth`, may be empty).
pub async fn write_request<W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &Message,
    auth: &[u8],
    body: &[u8],
    scratch: &mut Vec<u8>,
) -> Result<(), ProtoError> {
    scratch.clear();
    encode_head(msg, auth, body.len(), scratch)?;
    w.write_all(scratch).await?;
    if !body.is_empty() {
        w.write_all(body).await?;
    }
    Ok(())
}
