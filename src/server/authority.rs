//! Any `:authority` on the Unix socket. A Unix socket has no host, so clients send whatever
//! their library makes of the socket path: grpcio sends the path percent-encoded
//! (`tmp%2Fx%2Factseal.sock`). The `h2` crate parses `:authority` as a URI authority before
//! hyper or tonic see the request and answers RST_STREAM PROTOCOL_ERROR to one that does not
//! parse (`h2::server::Peer::convert_poll_message`), with no option to turn that off.
//!
//! So the Unix listener's read side passes the client's bytes through this rewriter, which
//! decodes each header block (HEADERS and its CONTINUATIONs, HPACK with the client's dynamic
//! table), replaces an `:authority` that is not a valid URI authority by `localhost`, and
//! re-encodes the block with literals that never touch h2's dynamic table (so the two tables
//! cannot disagree). Every other frame passes unchanged. The authority is never used for
//! anything, least of all authorization: callers are who the kernel says they are.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, ReadBuf};

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// SETTINGS_MAX_FRAME_SIZE and SETTINGS_HEADER_TABLE_SIZE as h2 announces them (defaults).
const MAX_FRAME: usize = 16_384;
const TABLE_SIZE: usize = 4096;
/// A header block (encoded, or decoded as RFC 7541 counts it) larger than this closes the
/// connection; hyper refuses anything over 16 KiB anyway.
const MAX_BLOCK: usize = 64 * 1024;
/// What replaces an authority that is not one.
const PLACEHOLDER: &[u8] = b"localhost";

/// Why the rewriter gave up on a connection (its client broke HTTP/2 framing or HPACK).
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error("HTTP/2 frame of {0} bytes carrying headers is too large")]
    FrameTooLarge(usize),
    #[error("header block over {MAX_BLOCK} bytes")]
    BlockTooLarge,
    #[error("HTTP/2 frame type {0:#x} inside a header block")]
    Interleaved(u8),
    #[error("malformed HEADERS frame padding or priority")]
    Padding,
    #[error("HPACK: {0:?}")]
    Hpack(loona_hpack::decoder::DecoderError),
}

/// The sans-IO part: bytes from the client in, bytes for h2 out.
struct Rewriter {
    decoder: loona_hpack::Decoder<'static>,
    preface_left: usize,
    /// Bytes of the current non-header frame's payload still to pass through.
    passing: usize,
    /// The header block being gathered: stream id, END_STREAM, HPACK fragment.
    block: Option<(u32, bool, Vec<u8>)>,
    input: Vec<u8>,
    output: Vec<u8>,
}

impl Rewriter {
    fn new() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        Rewriter {
            decoder,
            preface_left: PREFACE_LEN,
            passing: 0,
            block: None,
            input: Vec::new(),
            output: Vec::new(),
        }
    }

    /// Moves what can be moved from `input` to `output`.
    fn process(&mut self) -> Result<(), RewriteError> {
        let mut at = 0;
        let input = std::mem::take(&mut self.input);
        let result = loop {
            let rest = &input[at..];
            if rest.is_empty() {
                break Ok(());
            }
            let pass = if self.preface_left > 0 {
                &mut self.preface_left
            } else {
                &mut self.passing
            };
            if *pass > 0 {
                let n = (*pass).min(rest.len());
                self.output.extend_from_slice(&rest[..n]);
                *pass -= n;
                at += n;
                continue;
            }
            match self.frame(rest) {
                Ok(Some(used)) => at += used,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        self.input = input;
        self.input.drain(..at);
        result
    }

    /// Handles the frame at the start of `rest`; the bytes used, or None until it is whole.
    fn frame(&mut self, rest: &[u8]) -> Result<Option<usize>, RewriteError> {
        let Some(header) = rest.get(..FRAME_HEADER_LEN) else {
            return Ok(None);
        };
        let len =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let (kind, flags) = (header[3], header[4]);
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        if kind != HEADERS && kind != CONTINUATION {
            if self.block.is_some() {
                return Err(RewriteError::Interleaved(kind));
            }
            self.output.extend_from_slice(header);
            self.passing = len;
            return Ok(Some(FRAME_HEADER_LEN));
        }
        if len > MAX_FRAME {
            return Err(RewriteError::FrameTooLarge(len));
        }
        let Some(payload) = rest.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len) else {
            return Ok(None);
        };
        self.gather(kind, flags, stream, payload)?;
        if flags & END_HEADERS != 0 {
            self.finish_block()?;
        }
        Ok(Some(FRAME_HEADER_LEN + len))
    }

    /// Adds a HEADERS or CONTINUATION payload to the block being gathered.
    fn gather(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
    ) -> Result<(), RewriteError> {
        let fragment = match (kind, &mut self.block) {
            (HEADERS, None) => {
                let fragment = headers_fragment(flags, payload)?;
                self.block = Some((stream, flags & END_STREAM != 0, Vec::new()));
                fragment
            }
            (CONTINUATION, Some((open, _, _))) if *open == stream => payload,
            _ => return Err(RewriteError::Interleaved(kind)),
        };
        let (_, _, block) = self.block.as_mut().ok_or(RewriteError::Interleaved(kind))?;
        if block.len() + fragment.len() > MAX_BLOCK {
            return Err(RewriteError::BlockTooLarge);
        }
        block.extend_from_slice(fragment);
        Ok(())
    }

    /// Decodes the gathered block, fixes the authority, emits it re-encoded.
    fn finish_block(&mut self) -> Result<(), RewriteError> {
        let Some((stream, end_stream, block)) = self.block.take() else {
            return Ok(());
        };
        let mut encoded = Vec::with_capacity(block.len() * 2);
        let mut decoded_size = 0;
        self.decoder
            .decode_with_cb(&block, |name, value| {
                decoded_size += name.len() + value.len() + 32;
                if decoded_size <= MAX_BLOCK {
                    let value = if name.as_ref() == b":authority" && !valid_authority(&value) {
                        PLACEHOLDER
                    } else {
                        value.as_ref()
                    };
                    encode_literal(&mut encoded, &name, value);
                }
            })
            .map_err(RewriteError::Hpack)?;
        if decoded_size > MAX_BLOCK {
            return Err(RewriteError::BlockTooLarge);
        }
        self.emit_block(stream, end_stream, &encoded);
        Ok(())
    }

    /// Writes a header block as HEADERS and, if needed, CONTINUATION frames.
    fn emit_block(&mut self, stream: u32, end_stream: bool, encoded: &[u8]) {
        let mut chunks = encoded.chunks(MAX_FRAME).peekable();
        let mut kind = HEADERS;
        let mut flags = if end_stream { END_STREAM } else { 0 };
        // An empty block still needs its one HEADERS frame.
        let empty: &[u8] = &[];
        let first = chunks.next().unwrap_or(empty);
        let mut chunk = Some(first);
        while let Some(payload) = chunk {
            chunk = chunks.next();
            if chunk.is_none() {
                flags |= END_HEADERS;
            }
            let len = u32::try_from(payload.len()).unwrap_or(0).to_be_bytes();
            self.output.extend_from_slice(&len[1..]);
            self.output.extend_from_slice(&[kind, flags]);
            self.output.extend_from_slice(&stream.to_be_bytes());
            self.output.extend_from_slice(payload);
            kind = CONTINUATION;
            flags = 0;
        }
    }
}

/// The HPACK fragment of a HEADERS payload, without padding and priority.
fn headers_fragment(flags: u8, payload: &[u8]) -> Result<&[u8], RewriteError> {
    let (pad, payload) = if flags & PADDED != 0 {
        let (&pad, rest) = payload.split_first().ok_or(RewriteError::Padding)?;
        (usize::from(pad), rest)
    } else {
        (0, payload)
    };
    let payload = if flags & PRIORITY != 0 {
        payload.get(5..).ok_or(RewriteError::Padding)?
    } else {
        payload
    };
    let end = payload
        .len()
        .checked_sub(pad)
        .ok_or(RewriteError::Padding)?;
    Ok(&payload[..end])
}

fn valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// RFC 7541 §6.2.2: literal header field without indexing, new name, no Huffman coding.
fn encode_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0);
    for string in [name, value] {
        encode_integer(out, string.len());
        out.extend_from_slice(string);
    }
}

/// RFC 7541 §5.1 with a 7-bit prefix (the Huffman bit left 0).
fn encode_integer(out: &mut Vec<u8>, mut value: usize) {
    if value < 0x7f {
        out.push(value as u8);
        return;
    }
    out.push(0x7f);
    value -= 0x7f;
    while value >= 0x80 {
        out.push((value % 0x80) as u8 | 0x80);
        value /= 0x80;
    }
    out.push(value as u8);
}

/// A client connection whose request headers pass through the rewriter.
pub struct AnyAuthority<S> {
    inner: S,
    rewriter: Box<Rewriter>,
    failed: bool,
}

impl<S> AnyAuthority<S> {
    pub fn new(inner: S) -> Self {
        AnyAuthority {
            inner,
            rewriter: Box::new(Rewriter::new()),
            failed: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AnyAuthority<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let out = &mut this.rewriter.output;
            if !out.is_empty() {
                let n = out.len().min(buf.remaining());
                buf.put_slice(&out[..n]);
                out.drain(..n);
                return Poll::Ready(Ok(()));
            }
            if this.failed {
                return Poll::Ready(Err(io::Error::other("HTTP/2 framing error")));
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
            this.rewriter.input.extend_from_slice(read.filled());
            if let Err(e) = this.rewriter.process() {
                // Whatever was decoded before goes to h2, which then sees the connection end.
                tracing::debug!(error = %e, "closing a Unix connection: bad header framing");
                this.failed = true;
            }
        }
    }
}

super::listen::write_through!(AnyAuthority, inner);

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = u32::try_from(payload.len()).unwrap().to_be_bytes()[1..].to_vec();
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn decode_all(bytes: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut decoder = loona_hpack::Decoder::new();
        let mut at = PREFACE_LEN;
        let mut blocks = Vec::new();
        let mut block = Vec::new();
        while at < bytes.len() {
            let len = usize::from(bytes[at]) << 16
                | usize::from(bytes[at + 1]) << 8
                | usize::from(bytes[at + 2]);
            let (kind, flags) = (bytes[at + 3], bytes[at + 4]);
            let payload = &bytes[at + 9..at + 9 + len];
            if kind == HEADERS || kind == CONTINUATION {
                block.extend_from_slice(payload);
                if flags & END_HEADERS != 0 {
                    blocks.push(decoder.decode(&block).unwrap());
                    block.clear();
                }
            }
            at += 9 + len;
        }
        blocks
    }

    #[test]
    fn a_percent_encoded_authority_becomes_localhost_and_the_rest_stays() {
        let mut encoder = loona_hpack::Encoder::new();
        let headers: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/actseal.v1.Signer/Sign"),
            (b":authority", b"tmp%2Fx%2Factseal.sock"),
            (b"te", b"trailers"),
        ];
        let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        wire.extend(frame(0x4, 0, 0, &[]));
        // The same block twice: the second one refers to the client's dynamic table.
        for stream in [1, 3] {
            let block = encoder.encode(headers.iter().copied());
            let (a, b) = block.split_at(block.len() / 2);
            wire.extend(frame(
                HEADERS,
                PADDED,
                stream,
                &[&[2u8][..], a, &[0, 0]].concat(),
            ));
            wire.extend(frame(CONTINUATION, END_HEADERS, stream, b));
            wire.extend(frame(0x0, END_STREAM, stream, b"\0\0\0\0\0"));
        }
        let mut rewriter = Rewriter::new();
        // Byte by byte: frames split anywhere must come out whole.
        for byte in wire {
            rewriter.input.push(byte);
            rewriter.process().unwrap();
        }
        let blocks = decode_all(&rewriter.output);
        assert_eq!(blocks.len(), 2);
        for block in blocks {
            assert_eq!(block[3], (b":authority".to_vec(), b"localhost".to_vec()));
            assert_eq!(block[2].1, b"/actseal.v1.Signer/Sign");
            assert_eq!(block.len(), 5);
        }
    }

    #[test]
    fn a_valid_authority_is_kept_and_garbage_closes() {
        let mut encoder = loona_hpack::Encoder::new();
        let block = encoder.encode([(&b":authority"[..], &b"localhost:50051"[..])]);
        let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        wire.extend(frame(HEADERS, END_HEADERS, 1, &block));
        let mut rewriter = Rewriter::new();
        rewriter.input = wire;
        rewriter.process().unwrap();
        assert_eq!(decode_all(&rewriter.output)[0][0].1, b"localhost:50051");
        rewriter.input = frame(
            HEADERS,
            END_HEADERS,
            3,
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        );
        assert!(rewriter.process().is_err());
    }

    #[test]
    fn integers_encode_per_rfc7541() {
        let mut out = Vec::new();
        encode_integer(&mut out, 1337);
        // 1337 with a 7-bit prefix: 0x7f, then 1210 as 0xba 0x09.
        assert_eq!(out, [0x7f, 0xba, 0x09]);
    }
}
