//! Body framing: the chunked decoder (RFC 9112 section 7.1) and the chunk encoder.
//!
//! The decoder is an explicit state machine over byte slices, with every length bounded. It is
//! strict where parsers disagree: no bare LF or CR anywhere, no whitespace after a size unless an
//! extension follows, no `0x` prefix, no more than 16 hex digits, and capped extensions and
//! trailers. Trailers are checked and dropped, never merged into the header.

/// Most chunk-extension bytes in one body (hyper allows 16 KiB; nginx ignores them).
pub const MAX_EXTENSIONS: usize = 4 * 1024;
/// Most trailer bytes in one body.
pub const MAX_TRAILERS: usize = 8 * 1024;

/// Why a chunked body is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkError(pub &'static str);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// The first hex digit of a size.
    SizeStart,
    /// More hex digits, or the end of the size.
    Size,
    /// Whitespace after the size: an extension must follow.
    SizeWs,
    /// Inside extensions, until CR.
    Ext,
    /// A CR was seen after a size line; LF must follow.
    SizeLf,
    Data,
    /// After the data of a chunk: CR.
    DataCr,
    DataLf,
    /// The start of a trailer line, or the final empty line.
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// Decodes one chunked body.
#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    digits: u8,
    ext_bytes: usize,
    trailer_bytes: usize,
    /// The current trailer line has its colon.
    trailer_colon: bool,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        Self {
            state: State::SizeStart,
            size: 0,
            digits: 0,
            ext_bytes: 0,
            trailer_bytes: 0,
            trailer_colon: false,
        }
    }

    /// The whole body, trailers included, has been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from `input`, handing each run of body data to `data`. Returns how many bytes of
    /// `input` were consumed: all of them, unless the body ended before (the rest belongs to the
    /// next message).
    pub fn decode(
        &mut self,
        input: &[u8],
        data: &mut impl FnMut(&[u8]),
    ) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Data => {
                    let take = (input.len() - i).min(self.size.min(usize::MAX as u64) as usize);
                    data(&input[i..i + take]);
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::SizeStart | State::Size => match hex(b) {
                    Some(d) => {
                        self.digits += 1;
                        if self.digits > 16 {
                            return Err(ChunkError("chunk size too long"));
                        }
                        self.size = (self.size << 4) | d as u64;
                        self.state = State::Size;
                    }
                    None if self.state == State::SizeStart => {
                        return Err(ChunkError("invalid chunk size"))
                    }
                    None => match b {
                        b'\r' => self.state = State::SizeLf,
                        b';' => self.state = State::Ext,
                        b' ' | b'\t' => self.state = State::SizeWs,
                        _ => return Err(ChunkError("invalid chunk size")),
                    },
                },
                State::SizeWs => match b {
                    b' ' | b'\t' => self.ext()?,
                    b';' => self.state = State::Ext,
                    _ => return Err(ChunkError("invalid chunk size line")),
                },
                State::Ext => match b {
                    b'\r' => self.state = State::SizeLf,
                    b'\t' | b' '..=b'~' | 0x80..=0xff => self.ext()?,
                    _ => return Err(ChunkError("invalid chunk extension")),
                },
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError("chunk size line without CRLF"));
                    }
                    if self.size == 0 {
                        self.state = State::TrailerStart;
                    } else {
                        self.state = State::Data;
                    }
                    self.digits = 0;
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError("chunk data without CRLF"));
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError("chunk data without CRLF"));
                    }
                    self.state = State::SizeStart;
                }
                State::TrailerStart => match b {
                    b'\r' => self.state = State::EndLf,
                    b' ' | b'\t' | b':' => return Err(ChunkError("invalid trailer")),
                    _ => {
                        self.trailer_colon = false;
                        self.state = State::Trailer;
                        self.trailer(b)?;
                    }
                },
                State::Trailer => match b {
                    b'\r' if self.trailer_colon => self.state = State::TrailerLf,
                    _ => self.trailer(b)?,
                },
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError("trailer without CRLF"));
                    }
                    self.state = State::TrailerStart;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError("chunked body without final CRLF"));
                    }
                    self.state = State::Done;
                    return Ok(i + 1);
                }
                State::Done => return Ok(i),
            }
            i += 1;
        }
        Ok(i)
    }

    fn ext(&mut self) -> Result<(), ChunkError> {
        self.ext_bytes += 1;
        if self.ext_bytes > MAX_EXTENSIONS {
            return Err(ChunkError("chunk extensions too long"));
        }
        Ok(())
    }

    fn trailer(&mut self, b: u8) -> Result<(), ChunkError> {
        self.trailer_bytes += 1;
        if self.trailer_bytes > MAX_TRAILERS {
            return Err(ChunkError("trailers too large"));
        }
        match b {
            b':' => self.trailer_colon = true,
            b'\t' | b' '..=b'~' | 0x80..=0xff => {}
            _ => return Err(ChunkError("invalid trailer")),
        }
        Ok(())
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The line that starts a chunk of `len` bytes: hex size and CRLF.
pub fn chunk_line(len: usize, out: &mut Vec<u8>) {
    use std::io::Write;
    let _ = write!(out, "{len:x}\r\n");
}

/// The last chunk and the empty trailer section.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        let n = d.decode(input, &mut |b| out.extend_from_slice(b))?;
        Ok((out, n, d.is_done()))
    }

    /// The same bytes split at every point give the same result.
    fn split_invariant(input: &[u8]) {
        let whole = decode_all(input);
        for cut in 0..input.len() {
            let mut d = ChunkedDecoder::new();
            let mut out = Vec::new();
            let r = d
                .decode(&input[..cut], &mut |b| out.extend_from_slice(b))
                .and_then(|a| {
                    let b = d.decode(&input[cut..], &mut |b| out.extend_from_slice(b))?;
                    Ok(a + b)
                });
            match (&whole, r) {
                (Ok((w, n, done)), Ok(m)) => {
                    assert_eq!((w, *n, *done), (&out, m, d.is_done()), "cut at {cut}")
                }
                (Err(e), Err(f)) => assert_eq!(*e, f),
                (w, r) => panic!("cut at {cut}: {w:?} vs {r:?}"),
            }
        }
    }

    #[test]
    fn decodes_chunks_extensions_and_trailers() {
        let body = b"4\r\nWiki\r\n5;name=\"va;l\"\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let (out, n, done) = decode_all(body).unwrap();
        assert_eq!(out, b"Wikipedia in\r\n\r\nchunks.");
        assert!(done);
        assert_eq!(&body[n..], b"NEXT");
        split_invariant(body);
    }

    #[test]
    fn refuses_what_parsers_disagree_on() {
        let bad: &[&[u8]] = &[
            b"0x4\r\nWiki\r\n0\r\n\r\n",
            b"4\nWiki\r\n0\r\n\r\n",
            b"4\r\nWiki\n0\r\n\r\n",
            b"4\r\nWikiXX0\r\n\r\n",
            b"2;a\nb\r\nab\r\n0\r\n\r\n",
            b"4 \r\nWiki\r\n0\r\n\r\n",
            b"\r\n",
            b"-1\r\n",
            b"11111111111111111\r\n",
            b"0\r\n\r\r\n",
            b"0\r\n folded: x\r\n\r\n",
            b"0\r\nno-colon\r\n\r\n",
        ];
        for b in bad {
            assert!(decode_all(b).is_err(), "{:?}", String::from_utf8_lossy(b));
            split_invariant(b);
        }
        let long_ext = format!("1;{}\r\na\r\n0\r\n\r\n", "a".repeat(MAX_EXTENSIONS + 1));
        assert!(decode_all(long_ext.as_bytes()).is_err());
        let big = format!("0\r\nX: {}\r\n\r\n", "a".repeat(MAX_TRAILERS));
        assert!(decode_all(big.as_bytes()).is_err());
        // Sixteen digits are allowed: the size is then bounded by the body limit, not here.
        let (_, _, done) = decode_all(b"ffffffffffffffff\r\nab").unwrap();
        assert!(!done);
    }
}
