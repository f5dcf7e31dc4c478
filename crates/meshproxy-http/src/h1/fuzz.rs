//! Property tests over the upstream HTTP/1.1 response parser: what a hostile or broken upstream
//! can send (arbitrary bytes, any split across reads) never panics, and well-formed responses
//! parse to what was sent wherever the reads split them. They run in `cargo test`, briefly (the
//! proptest defaults), as the project's fuzz targets for this parser (`cargo fuzz` needs a
//! nightly toolchain).

use bytes::BytesMut;
use proptest::prelude::*;

use super::response::{decode_chunked, parse_head, Chunk, Decoded, Framing};
use super::H1Error;

/// A field name: a token of lowercase letters and `-`, never one the parser treats specially.
fn field_name() -> impl Strategy<Value = String> {
    "x-[a-z]{1,12}"
}

/// A field value: visible ASCII and inner spaces, no CR or LF.
fn field_value() -> impl Strategy<Value = String> {
    "[!-~]([ -~]{0,30}[!-~])?"
}

/// Decodes all of `wire` fed in pieces cut at `cuts`: the data bytes, whether the end was seen.
fn decode_in_pieces(wire: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, bool), H1Error> {
    let mut buf = BytesMut::new();
    let mut state = Chunk::Size;
    let mut data = Vec::new();
    let mut at = 0;
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.push(wire.len());
    for cut in cuts {
        buf.extend_from_slice(&wire[at..cut.max(at)]);
        at = cut.max(at);
        loop {
            match decode_chunked(&mut buf, &mut state)? {
                Decoded::Frame(f) => match f.into_data() {
                    Ok(d) => data.extend_from_slice(&d),
                    Err(_) => return Ok((data, true)),
                },
                Decoded::End => return Ok((data, true)),
                Decoded::NeedMore => break,
            }
        }
    }
    Ok((data, false))
}

proptest! {
    #[test]
    fn a_response_head_of_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = parse_head(&mut buf);
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_status_line_never_panic(
        tail in proptest::collection::vec(any::<u8>(), 0..1024),
    ) {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\n"[..]);
        buf.extend_from_slice(&tail);
        let _ = parse_head(&mut buf);
    }

    #[test]
    fn a_well_formed_head_parses_the_same_at_any_split(
        status in 200u16..600,
        fields in proptest::collection::vec((field_name(), field_value()), 0..12),
        length in proptest::option::of(0u64..1_000_000),
        cut in any::<usize>(),
    ) {
        let mut wire = format!("HTTP/1.1 {status} Whatever\r\n");
        for (n, v) in &fields {
            wire.push_str(&format!("{n}: {v}\r\n"));
        }
        if let Some(l) = length {
            wire.push_str(&format!("content-length: {l}\r\n"));
        }
        wire.push_str("\r\n");
        let wire = wire.into_bytes();
        let cut = cut % wire.len();
        let mut partial = BytesMut::from(&wire[..cut]);
        prop_assert!(parse_head(&mut partial).unwrap().is_none(), "an incomplete head waits for more");
        prop_assert_eq!(partial.len(), cut, "and consumes nothing");
        let mut whole = BytesMut::from(&wire[..]);
        whole.extend_from_slice(b"body bytes");
        let head = parse_head(&mut whole).unwrap().unwrap();
        prop_assert_eq!(&whole[..], b"body bytes", "exactly the head is consumed");
        prop_assert_eq!(head.response.status().as_u16(), status);
        for (n, v) in &fields {
            prop_assert!(head.response.headers().get_all(n.as_str()).iter().any(|h| h.as_bytes() == v.as_bytes()));
        }
        let no_body = status == 204 || status == 304;
        let expected = match length {
            _ if no_body => Framing::Done,
            Some(0) => Framing::Done,
            Some(l) => Framing::Length(l),
            None => Framing::Eof,
        };
        prop_assert_eq!(head.framing, expected);
        prop_assert!(head.keep_alive);
    }

    #[test]
    fn a_chunked_body_decodes_to_its_bytes_at_any_split(
        body in proptest::collection::vec(any::<u8>(), 0..4096),
        sizes in proptest::collection::vec(1usize..700, 1..20),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
        extensions in any::<bool>(),
    ) {
        let mut wire = Vec::new();
        let mut rest = &body[..];
        for size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at((*size).min(rest.len()));
            let ext = if extensions { ";name=value" } else { "" };
            wire.extend_from_slice(format!("{:X}{ext}\r\n", chunk.len()).as_bytes());
            wire.extend_from_slice(chunk);
            wire.extend_from_slice(b"\r\n");
            rest = tail;
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        let (data, ended) = decode_in_pieces(&wire, &cuts).unwrap();
        prop_assert!(ended);
        prop_assert_eq!(data, body);
    }

    #[test]
    fn chunked_framing_of_arbitrary_bytes_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let _ = decode_in_pieces(&bytes, &cuts);
    }

    #[test]
    fn a_chunk_size_line_of_arbitrary_text_is_bounded(line in "[0-9a-fA-F;= \\t]{0,64}") {
        let mut buf = BytesMut::from(format!("{line}\r\n").as_bytes());
        let mut state = Chunk::Size;
        let _ = decode_chunked(&mut buf, &mut state);
        // A size the parser accepts fits its 15-hex-digit bound.
        if let Chunk::Data(n) = state {
            prop_assert!(n < 1 << 60);
        }
    }
}
