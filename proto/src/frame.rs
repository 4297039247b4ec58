//! Frames: how messages travel on a QUIC stream.
//!
//! Layout (little-endian), [`FRAME_HEADER_LEN`] bytes of header, then `meta`, then `body`:
//!
//! ```text
//!  0..2   magic        "SH" (0x53 0x48)
//!  2      version      PROTOCOL_VERSION
//!  3      kind         message kind (see Message::kind)
//!  4..8   meta_len     u32, length of the rkyv archive of the message
//!  8..12  body_len     u32, length of the raw body (batch bytes, stream records, Raft data)
//! ```
//!
//! Invariants: both lengths are checked against [`FrameLimits`] before any byte of the frame
//! is buffered, so a peer cannot make us allocate more than the limits; a frame that fails any
//! check is an error, never a panic, and the connection it came from should be closed.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::ProtoError;
use crate::messages::Message;

pub const MAGIC: [u8; 2] = *b"SH";
pub const PROTOCOL_VERSION: u8 = 1;
pub const FRAME_HEADER_LEN: usize = 12;

/// Bounds on what a peer may send in one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    pub max_meta: u32,
    pub max_body: u32,
}

impl Default for FrameLimits {
    fn default() -> Self {
        Self { max_meta: 16 << 20, max_body: 72 << 20 }
    }
}

/// A parsed, bounds-checked frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: u8,
    pub meta_len: u32,
    pub body_len: u32,
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
        if meta_len > limits.max_meta {
            return Err(ProtoError::TooLarge { what: "frame meta", len: meta_len.into(), max: limits.max_meta.into() });
        }
        if body_len > limits.max_body {
            return Err(ProtoError::TooLarge { what: "frame body", len: body_len.into(), max: limits.max_body.into() });
        }
        Ok(FrameHeader { kind, meta_len, body_len })
    }

    pub fn encode(&self) -> [u8; FRAME_HEADER_LEN] {
        let mut h = [0u8; FRAME_HEADER_LEN];
        h[0..2].copy_from_slice(&MAGIC);
        h[2] = PROTOCOL_VERSION;
        h[3] = self.kind;
        h[4..8].copy_from_slice(&self.meta_len.to_le_bytes());
        h[8..12].copy_from_slice(&self.body_len.to_le_bytes());
        h
    }

    /// Length of the whole frame.
    pub fn frame_len(&self) -> usize {
        FRAME_HEADER_LEN + self.meta_len as usize + self.body_len as usize
    }
}

/// A frame decoded in place from a buffer.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    pub header: FrameHeader,
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
        let meta_end = FRAME_HEADER_LEN + header.meta_len as usize;
        Ok((Frame { header, meta: &buf[FRAME_HEADER_LEN..meta_end], body: &buf[meta_end..len] }, len))
    }

    /// Validates and decodes the message.
    pub fn message(&self) -> Result<Message, ProtoError> {
        Message::decode_meta(self.header.kind, self.meta)
    }
}

/// Appends the frame header and the message archive to `out`, announcing `body_len` bytes of
/// body that the caller sends next (so a large body is never copied into the frame).
pub fn encode_head(msg: &Message, body_len: usize, out: &mut Vec<u8>) -> Result<(), ProtoError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
    msg.encode_meta(out)?;
    let meta_len = out.len() - start - FRAME_HEADER_LEN;
    let too_large = |what, len: usize| ProtoError::TooLarge { what, len: len as u64, max: u32::MAX as u64 };
    let header = FrameHeader {
        kind: msg.kind(),
        meta_len: u32::try_from(meta_len).map_err(|_| too_large("frame meta", meta_len))?,
        body_len: u32::try_from(body_len).map_err(|_| too_large("frame body", body_len))?,
    };
    out[start..start + FRAME_HEADER_LEN].copy_from_slice(&header.encode());
    Ok(())
}

/// Appends a whole frame (header, archive, body) to `out`.
pub fn encode_frame(msg: &Message, body: &[u8], out: &mut Vec<u8>) -> Result<(), ProtoError> {
    encode_head(msg, body.len(), out)?;
    out.extend_from_slice(body);
    Ok(())
}

/// Reads one frame. Returns `Ok(None)` on a clean end of stream before the first header byte.
/// After `Ok(Some(msg))`, `body` holds exactly the frame's body (its allocation is reused).
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    limits: &FrameLimits,
    body: &mut Vec<u8>,
) -> Result<Option<Message>, ProtoError> {
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
    let header = FrameHeader::parse(&head, limits)?;
    body.clear();
    body.resize(header.meta_len as usize, 0);
    read_fully(r, body, FRAME_HEADER_LEN).await?;
    let msg = Message::decode_meta(header.kind, body)?;
    body.clear();
    body.resize(header.body_len as usize, 0);
    read_fully(r, body, FRAME_HEADER_LEN + header.meta_len as usize).await?;
    Ok(Some(msg))
}

async fn read_fully<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8], before: usize) -> Result<(), ProtoError> {
    match r.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(ProtoError::Truncated { need: before + buf.len(), have: before })
        }
        Err(e) => Err(e.into()),
    }
}

/// Writes one frame: header and archive from `scratch` (reused), then `body` in place.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &Message,
    body: &[u8],
    scratch: &mut Vec<u8>,
) -> Result<(), ProtoError> {
    scratch.clear();
    encode_head(msg, body.len(), scratch)?;
    w.write_all(scratch).await?;
    if !body.is_empty() {
        w.write_all(body).await?;
    }
    Ok(())
}
