//! Reading a response off the front of the read buffer: the head (status line and fields, and
//! from them the body's framing and whether the connection can be reused) and chunked framing.
//! Pure functions over bytes, so every split point is testable without a socket.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode, Version};
use http_body::Frame;

use super::{H1Error, MAX_CHUNK_LINE, MAX_FIELDS, MAX_HEAD};

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Framing {
    Done,
    Length(u64),
    Chunked(Chunk),
    /// Until the upstream closes the connection.
    Eof,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

pub(super) struct ResponseHead {
    pub(super) response: Response<()>,
    pub(super) framing: Framing,
    pub(super) keep_alive: bool,
}

/// Parses a response head off the front of `buf`, if it is all there.
pub(super) fn parse_head(buf: &mut BytesMut) -> Result<Option<ResponseHead>, H1Error> {
    if buf.is_empty() {
        return Ok(None);
    }
    // Uninitialized: zeroing room for MAX_FIELDS fields on every response costs more than the
    // parse of a typical head.
    let mut fields = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(_)) | Err(httparse::Error::TooManyHeaders) => {
            return Err(H1Error::HeadTooLarge)
        }
        Err(_) => return Err(H1Error::Malformed("status line or header field")),
    };
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let status =
        parsed.code.and_then(|c| StatusCode::from_u16(c).ok()).ok_or(H1Error::Malformed("status code"))?;
    // Names and values become slices of the head's bytes once it is split off: no copies.
    let base = buf.as_ptr() as usize;
    let mut spans = [[0u32; 4]; MAX_FIELDS];
    let count = parsed.headers.len();
    for (span, f) in spans.iter_mut().zip(parsed.headers.iter()) {
        let (name, value) = (f.name.as_ptr() as usize - base, f.value.as_ptr() as usize - base);
        // The head is at most MAX_HEAD bytes plus one read, far below u32::MAX.
        *span = [name as u32, f.name.len() as u32, value as u32, f.value.len() as u32];
    }
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    let (mut length, mut chunked, mut coded) = (None::<u64>, false, false);
    let (mut close, mut keep_alive) = (false, false);
    for &[name_at, name_len, at, len] in &spans[..count] {
        let (name_at, at) = (name_at as usize, at as usize);
        let name = HeaderName::from_bytes(&head[name_at..name_at + name_len as usize])
            .map_err(|_| H1Error::Malformed("header field name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(at..at + len as usize))
            .map_err(|_| H1Error::Malformed("header field value"))?;
        if name == header::CONTENT_LENGTH {
            let n = parse_length(value.as_bytes()).ok_or(H1Error::Malformed("content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(H1Error::Malformed("conflicting content-length"));
            }
            length = Some(n);
        } else if name == header::TRANSFER_ENCODING {
            coded = true;
            // Only the last coding decides whether the body is chunked.
            chunked = value
                .as_bytes()
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            // Framing is this hop's business: the field goes no further.
            continue;
        } else if name == header::CONNECTION {
            let mut names_fields = false;
            for token in value.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                let (c, k) =
                    (token.eq_ignore_ascii_case(b"close"), token.eq_ignore_ascii_case(b"keep-alive"));
                close |= c;
                keep_alive |= k;
                names_fields |= !(c || k || token.is_empty());
            }
            // Hop-by-hop either way; kept only when it names fields that the downstream side's
            // stripping must remove too (the usual `keep-alive` costs nothing further).
            if !names_fields {
                continue;
            }
        } else if name.as_str() == "keep-alive" {
            continue;
        }
        headers.append(name, value);
    }
    let no_body =
        status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let framing = if no_body {
        Framing::Done
    } else if coded {
        // A transfer coding overrides content-length, which must not travel on (a message with
        // both is a smuggling attempt or a broken sender).
        headers.remove(header::CONTENT_LENGTH);
        if chunked {
            Framing::Chunked(Chunk::Size)
        } else {
            Framing::Eof
        }
    } else {
        match length {
            Some(0) => Framing::Done,
            Some(n) => Framing::Length(n),
            None => Framing::Eof,
        }
    };
    // Both a coding and a length: the framing is suspect, so the connection is not reused.
    let suspect = coded && length.is_some();
    let keep_alive = !(close || suspect) && (version == Version::HTTP_11 || keep_alive);
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    Ok(Some(ResponseHead { response, framing, keep_alive }))
}

fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

pub(super) enum Decoded {
    Frame(Frame<Bytes>),
    /// The last chunk and an empty trailer section: the body is complete.
    End,
    NeedMore,
}

/// Decodes chunked framing off the front of `buf`: the next data or trailers frame, the end,
/// or that more bytes are needed.
pub(super) fn decode_chunked(buf: &mut BytesMut, state: &mut Chunk) -> Result<Decoded, H1Error> {
    loop {
        match state {
            Chunk::Size => {
                let Some(eol) = buf.iter().position(|&b| b == b'\n') else {
                    return if buf.len() > MAX_CHUNK_LINE {
                        Err(H1Error::Malformed("chunk size line"))
                    } else {
                        Ok(Decoded::NeedMore)
                    };
                };
                let line = &buf[..eol];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                // Extensions (`;name=value`) are allowed and ignored.
                let digits = line.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
                if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
                    return Err(H1Error::Malformed("chunk size"));
                }
                let size = digits
                    .iter()
                    .fold(0u64, |n, &d| (n << 4) | u64::from((d as char).to_digit(16).unwrap_or(0)));
                buf.advance(eol + 1);
                *state = if size == 0 { Chunk::Trailers } else { Chunk::Data(size) };
            }
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let n = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= n as u64;
                if *left == 0 {
                    *state = Chunk::DataEnd;
                }
                return Ok(Decoded::Frame(Frame::data(buf.split_to(n).freeze())));
            }
            Chunk::DataEnd => {
                // CRLF after the data (a bare LF is tolerated, as for every line here).
                match buf.first() {
                    None => return Ok(Decoded::NeedMore),
                    Some(b'\n') => buf.advance(1),
                    Some(b'\r') if buf.len() < 2 => return Ok(Decoded::NeedMore),
                    Some(b'\r') if buf[1] == b'\n' => buf.advance(2),
                    Some(_) => return Err(H1Error::Malformed("chunk data end")),
                }
                *state = Chunk::Size;
            }
            Chunk::Trailers => {
                if buf.starts_with(b"\r\n") || buf.starts_with(b"\n") {
                    buf.advance(if buf[0] == b'\r' { 2 } else { 1 });
                    return Ok(Decoded::End);
                }
                let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
                return match httparse::parse_headers(buf, &mut fields) {
                    Ok(httparse::Status::Complete((len, fields))) => {
                        let mut trailers = HeaderMap::with_capacity(fields.len());
                        for f in fields.iter() {
                            let name = HeaderName::from_bytes(f.name.as_bytes())
                                .map_err(|_| H1Error::Malformed("trailer field name"))?;
                            let value = HeaderValue::from_bytes(f.value)
                                .map_err(|_| H1Error::Malformed("trailer field value"))?;
                            trailers.append(name, value);
                        }
                        buf.advance(len);
                        crate::headers::strip_hop_by_hop(&mut trailers);
                        Ok(Decoded::Frame(Frame::trailers(trailers)))
                    }
                    Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => Ok(Decoded::NeedMore),
                    Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
                        Err(H1Error::HeadTooLarge)
                    }
                    Err(_) => Err(H1Error::Malformed("trailer section")),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(input: &[u8]) -> Result<(Vec<u8>, Option<HeaderMap>, bool), H1Error> {
        let mut buf = BytesMut::new();
        let mut state = Chunk::Size;
        let (mut data, mut trailers, mut done) = (Vec::new(), None, false);
        // Fed a byte at a time: every split point must decode the same.
        for &b in input {
            buf.extend_from_slice(&[b]);
            while !done {
                match decode_chunked(&mut buf, &mut state)? {
                    Decoded::Frame(frame) => match frame.into_data() {
                        Ok(d) => data.extend_from_slice(&d),
                        Err(f) => (trailers, done) = (f.into_trailers().ok(), true),
                    },
                    Decoded::End => done = true,
                    Decoded::NeedMore => break,
                }
            }
        }
        Ok((data, trailers, done))
    }

    #[test]
    fn chunked_bodies_with_extensions_and_trailers() {
        let (data, trailers, done) =
            chunks(b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\ngrpc-status: 0\r\nx-t: a\r\n\r\n").unwrap();
        assert_eq!(data, b"hello world");
        assert!(done);
        let t = trailers.unwrap();
        assert_eq!(t.get("grpc-status").unwrap(), "0");
        assert_eq!(t.get("x-t").unwrap(), "a");
        let (data, trailers, done) = chunks(b"A\r\n0123456789\r\n0\r\n\r\n").unwrap();
        assert_eq!(data, b"0123456789");
        assert!(done && trailers.is_none());
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for bad in [&b"x\r\n"[..], b"5\r\nhelloXX", b"\r\n", b"fffffffffffffffff\r\n"] {
            assert!(chunks(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    fn head(raw: &[u8]) -> Result<Option<ResponseHead>, H1Error> {
        parse_head(&mut BytesMut::from(raw))
    }

    #[test]
    fn framing_and_keep_alive_follow_rfc_9112() {
        let h = head(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n").unwrap().unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Length(5), true));
        let h = head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Chunked(Chunk::Size));
        assert!(!h.keep_alive && h.response.headers().get("content-length").is_none());
        let h = head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.framing, Framing::Eof);
        let h = head(b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
        let h =
            head(b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\n").unwrap().unwrap();
        assert!(h.keep_alive);
        let h = head(b"HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.framing, Framing::Done);
        let h = head(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n").unwrap().unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Eof, false));
        assert!(head(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n").unwrap().is_none(), "partial");
        assert!(head(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n").is_err());
        assert!(head(b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n").is_err());
        assert!(head(b"HTTX/1.1 200 OK\r\n\r\n").is_err());
    }
}
