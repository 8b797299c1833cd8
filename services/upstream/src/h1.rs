//! The HTTP/1.1 a client speaks to an upstream, as plain functions over bytes: a request head
//! written straight from the request's parts, a response head parsed with `httparse` (the
//! parser hyper itself uses), and the response body's framing (RFC 9112 §6) decoded step by
//! step from a buffer. [`crate::conns`] owns the sockets and calls these, so each rule is
//! unit-tested on bytes. The one piece of I/O, [`write_message`], streams a body onto a socket
//! in its framing; the gateway's own server loop writes its answers with it too.
//!
//! Why not hyper's client connection: it runs each connection in a task of its own and hands
//! requests and responses over channels, so every request crosses tasks three times (request
//! in, response head out, body out). Owning the socket in the caller's task — the gateway's
//! client connection task — keeps a proxied exchange in one task, as nginx and HAProxy keep it
//! in one event loop iteration.

use std::io::Write as _;
use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, StatusCode, Version};

/// The longest response head accepted (hyper's default read buffer limit is ~400 kB; services
/// answer with a few hundred bytes).
pub(crate) const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Most headers in a response.
const MAX_RESPONSE_HEADERS: usize = 100;
/// The longest chunk-size line and the most trailer bytes accepted.
const MAX_CHUNK_LINE: usize = 1024;
const MAX_TRAILERS: usize = 16 * 1024;

/// Bytes asked of a socket per read.
pub const READ_SIZE: usize = 16 * 1024;

/// Makes room for a read into `buf`, growing it (or reclaiming its consumed front) only when
/// little room is left, so a connection's buffer is reused from exchange to exchange.
pub fn reserve_read_space(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_SIZE / 4 {
        buf.reserve(READ_SIZE);
    }
}

/// How a message's body is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body and no framing header of its own (a GET; an answer to HEAD, a 1xx, 204 or 304,
    /// whose headers are passed as they are).
    None,
    Length(u64),
    Chunked,
}

impl Framing {
    /// A request's, for a body of `size` (`None`: unknown until it ends). An empty body gets
    /// `Content-Length: 0` where a body is expected (POST, PUT, PATCH) or the caller sent one.
    pub(crate) fn of_request(method: &Method, size: Option<u64>, had_length: bool) -> Self {
        match size {
            Some(0)
                if !had_length
                    && !matches!(*method, Method::POST | Method::PUT | Method::PATCH) =>
            {
                Framing::None
            }
            Some(n) => Framing::Length(n),
            None => Framing::Chunked,
        }
    }

    /// An answer's to a `method` request: none where no body may follow, else by `size`.
    pub fn of_response(method: &Method, status: StatusCode, size: Option<u64>) -> Self {
        if answer_is_bodyless(method, status) {
            return Framing::None;
        }
        match size {
            Some(n) => Framing::Length(n),
            None => Framing::Chunked,
        }
    }
}

/// Whether an answer to a `method` request carries no body whatever its headers say (RFC 9112
/// §6.3): one to HEAD, a 1xx, 204 or 304.
fn answer_is_bodyless(method: &Method, status: StatusCode) -> bool {
    *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// Bytes gathered before a write while a body streams in quickly.
const WRITE_SIZE: usize = 64 * 1024;

/// Why a message could not be written whole.
#[derive(Debug)]
pub enum WriteError<E> {
    /// The body failed.
    Body(E),
    /// The body was longer or shorter than its `Content-Length`.
    Length(&'static str),
    /// The socket failed (the peer is gone).
    Io(std::io::Error),
}

/// Writes `out` (a head already in it) and then `body` in `framing` to `stream`: what of the
/// body is ready goes out with the head in one write, the rest as it arrives, not held back.
pub async fn write_message<B>(
    stream: &mut tokio::net::TcpStream,
    out: &mut Vec<u8>,
    mut body: B,
    framing: Framing,
) -> Result<(), WriteError<B::Error>>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;
    let mut sent: u64 = 0;
    if framing != Framing::None {
        while !body.is_end_stream() {
            let Some(frame) = body.frame().await else {
                break;
            };
            // Trailers are not passed on.
            let Ok(data) = frame.map_err(WriteError::Body)?.into_data() else {
                continue;
            };
            sent = sent.saturating_add(data.len() as u64);
            match framing {
                Framing::Length(n) if sent > n => {
                    return Err(WriteError::Length("the body is longer than its length"));
                }
                Framing::Chunked if !data.is_empty() => write_chunk(&data, out),
                _ => out.extend_from_slice(&data),
            }
            if !body.is_end_stream() || out.len() >= WRITE_SIZE {
                stream.write_all(out).await.map_err(WriteError::Io)?;
                out.clear();
            }
        }
        match framing {
            Framing::Length(n) if sent != n => {
                return Err(WriteError::Length("the body is shorter than its length"));
            }
            Framing::Chunked => out.extend_from_slice(LAST_CHUNK),
            _ => {}
        }
    }
    stream.write_all(out).await.map_err(WriteError::Io)
}

/// Writes the request line and headers: origin-form target, the parts' headers without any
/// framing of their own (the body's framing is `framing`), and `Host` when missing.
pub(crate) fn write_request_head(parts: &Parts, host: &[u8], framing: Framing, out: &mut Vec<u8>) {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        parts
            .uri
            .path_and_query()
            .map_or("/", http::uri::PathAndQuery::as_str)
            .as_bytes(),
    );
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !parts.headers.contains_key(header::HOST) {
        header_line(out, b"host", host);
    }
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        header_line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    match framing {
        Framing::None => {}
        Framing::Length(n) => {
            header_line(
                out,
                b"content-length",
                itoa::Buffer::new().format(n).as_bytes(),
            );
        }
        Framing::Chunked => header_line(out, b"transfer-encoding", b"chunked"),
    }
    out.extend_from_slice(b"\r\n");
}

fn header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A chunk of a chunked body.
fn write_chunk(data: &[u8], out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The end of a chunked body (no trailers).
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// What is wrong with an upstream's answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ResponseError {
    #[error("malformed response head: {0}")]
    Malformed(&'static str),
    #[error("response head larger than {MAX_RESPONSE_HEAD} bytes")]
    HeadTooLarge,
    #[error("unrequested protocol switch (101)")]
    UnrequestedUpgrade,
    #[error("invalid Content-Length")]
    BadLength,
    #[error("malformed chunked body: {0}")]
    BadChunk(&'static str),
    #[error("the connection closed mid-body")]
    Cut,
}

/// A parsed response head, and how its body is framed.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: BodyDecoder,
    /// The connection may carry another request once the body has ended.
    pub reusable: bool,
}

/// Parses a response head from the front of `buf`, consuming it (and any interim 1xx
/// responses before it). `Ok(None)`: more bytes are needed.
pub(crate) fn parse_response_head(
    buf: &mut BytesMut,
    request_method: &Method,
) -> Result<Option<ResponseHead>, ResponseError> {
    loop {
        // Uninitialised slots: filling 100 empty headers first cost more than parsing.
        let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_RESPONSE_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let consumed = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            buf,
            &mut slots,
        ) {
            Ok(httparse::Status::Complete(consumed)) => consumed,
            Ok(httparse::Status::Partial) if buf.len() > MAX_RESPONSE_HEAD => {
                return Err(ResponseError::HeadTooLarge);
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(ResponseError::HeadTooLarge),
            Err(_) => {
                return Err(ResponseError::Malformed(
                    "not an HTTP/1.x status line and headers",
                ));
            }
        };
        let code = response.code.unwrap_or_default();
        let status =
            StatusCode::from_u16(code).map_err(|_| ResponseError::Malformed("status code"))?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(ResponseError::UnrequestedUpgrade);
        }
        if status.is_informational() {
            // 100 Continue, 103 Early Hints: interim, the final answer follows.
            buf.advance(consumed);
            continue;
        }
        let version = if response.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        // One copy of the head; the header values are slices of it (one allocation, not one
        // per header).
        let head = Bytes::copy_from_slice(&buf[..consumed]);
        let base = buf.as_ptr() as usize;
        // Room for a few headers the caller adds (the gateway's `x-request-id`), so the map
        // is not grown and rehashed for them.
        let mut headers = HeaderMap::with_capacity(response.headers.len() + 2);
        let mut present = FramingHeaders::default();
        for h in response.headers.iter() {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| ResponseError::Malformed("header name"))?;
            present.note(&name);
            let start = h.value.as_ptr() as usize - base;
            let value = HeaderValue::from_maybe_shared(head.slice(start..start + h.value.len()))
                .map_err(|_| ResponseError::Malformed("header value"))?;
            headers.append(name, value);
        }
        buf.advance(consumed);
        let (body, framing_reusable) = framing(status, request_method, &mut headers, present)?;
        let reusable = framing_reusable
            && version == Version::HTTP_11
            && !(present.connection && asks_close(&headers));
        return Ok(Some(ResponseHead {
            status,
            version,
            headers,
            body,
            reusable,
        }));
    }
}

/// Which of the headers that frame a message a head carries, noted while the head is read, so
/// that the common answer (a `Content-Length`, nothing else) costs one hashed lookup, not four.
#[derive(Clone, Copy, Default)]
struct FramingHeaders {
    transfer_encoding: bool,
    content_length: bool,
    connection: bool,
}

impl FramingHeaders {
    fn note(&mut self, name: &HeaderName) {
        if name == header::TRANSFER_ENCODING {
            self.transfer_encoding = true;
        } else if name == header::CONTENT_LENGTH {
            self.content_length = true;
        } else if name == header::CONNECTION {
            self.connection = true;
        }
    }
}

/// The body's framing by RFC 9112 §6.3, and whether it leaves the connection reusable. A
/// `Transfer-Encoding` overrides `Content-Length` (which is then removed, and the connection
/// not reused); differing lengths are refused.
fn framing(
    status: StatusCode,
    method: &Method,
    headers: &mut HeaderMap,
    present: FramingHeaders,
) -> Result<(BodyDecoder, bool), ResponseError> {
    if answer_is_bodyless(method, status) {
        return Ok((BodyDecoder::Length(0), true));
    }
    if present.transfer_encoding {
        let had_length = headers.remove(header::CONTENT_LENGTH).is_some();
        let chunked_last = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .next_back()
            .is_some_and(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        return Ok(if chunked_last {
            (BodyDecoder::chunked(), !had_length)
        } else {
            (BodyDecoder::UntilClose, false)
        });
    }
    if !present.content_length {
        return Ok((BodyDecoder::UntilClose, false));
    }
    let mut length: Option<u64> = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for item in value.as_bytes().split(|b| *b == b',') {
            let item = item.trim_ascii();
            if item.is_empty() || !item.iter().all(u8::is_ascii_digit) {
                return Err(ResponseError::BadLength);
            }
            let n: u64 = std::str::from_utf8(item)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(ResponseError::BadLength)?;
            if length.is_some_and(|seen| seen != n) {
                return Err(ResponseError::BadLength);
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(n) => (BodyDecoder::Length(n), true),
        None => (BodyDecoder::UntilClose, false),
    })
}

/// Whether `Connection` lists `close`.
fn asks_close(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
}

/// Where a response body stands, decoded from the bytes read so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum BodyDecoder {
    /// This many bytes still to come.
    Length(u64),
    Chunked(Chunk),
    /// Everything until the connection closes (HTTP/1.0 style).
    UntilClose,
    Done,
}

/// The chunked decoder's position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// This many data bytes of the current chunk still to come.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one (trailers are dropped); the
    /// bytes of trailers seen so far.
    Trailers(usize),
}

/// Pieces up to this size are copied out of the read buffer, which then stays the
/// connection's own for its next exchange; larger ones are handed over without a copy.
const COPY_AT_MOST: usize = 8 * 1024;

/// The first `n` bytes of `buf`, taken off it.
fn take_front(buf: &mut BytesMut, n: usize) -> Bytes {
    if n <= COPY_AT_MOST {
        let piece = Bytes::copy_from_slice(&buf[..n]);
        buf.advance(n);
        piece
    } else {
        buf.split_to(n).freeze()
    }
}

/// One step of decoding.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Data(Bytes),
    /// Nothing more can be decoded until more bytes arrive.
    NeedMore,
    /// The body ended.
    Done,
}

impl BodyDecoder {
    fn chunked() -> Self {
        BodyDecoder::Chunked(Chunk::Size)
    }

    /// Decodes what it can from the front of `buf`, consuming it.
    pub(crate) fn step(&mut self, buf: &mut BytesMut) -> Result<Step, ResponseError> {
        loop {
            match self {
                BodyDecoder::Done | BodyDecoder::Length(0) => {
                    *self = BodyDecoder::Done;
                    return Ok(Step::Done);
                }
                BodyDecoder::Length(left) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let take = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                    *left -= take as u64;
                    return Ok(Step::Data(take_front(buf, take)));
                }
                BodyDecoder::UntilClose => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    return Ok(Step::Data(take_front(buf, buf.len())));
                }
                BodyDecoder::Chunked(chunk) => match chunk {
                    Chunk::Size => match httparse::parse_chunk_size(buf) {
                        Ok(httparse::Status::Complete((used, 0))) => {
                            buf.advance(used);
                            *chunk = Chunk::Trailers(0);
                        }
                        Ok(httparse::Status::Complete((used, size))) => {
                            buf.advance(used);
                            *chunk = Chunk::Data(size);
                        }
                        Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                            return Err(ResponseError::BadChunk("chunk-size line too long"));
                        }
                        Ok(httparse::Status::Partial) => return Ok(Step::NeedMore),
                        Err(_) => return Err(ResponseError::BadChunk("chunk size")),
                    },
                    Chunk::Data(left) => {
                        if buf.is_empty() {
                            return Ok(Step::NeedMore);
                        }
                        let take = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                        *left -= take as u64;
                        if *left == 0 {
                            *chunk = Chunk::DataEnd;
                        }
                        return Ok(Step::Data(take_front(buf, take)));
                    }
                    Chunk::DataEnd => {
                        if buf.len() < 2 {
                            return Ok(Step::NeedMore);
                        }
                        if &buf[..2] != b"\r\n" {
                            return Err(ResponseError::BadChunk("no CRLF after chunk data"));
                        }
                        buf.advance(2);
                        *chunk = Chunk::Size;
                    }
                    Chunk::Trailers(seen) => {
                        let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
                            if *seen + buf.len() > MAX_TRAILERS {
                                return Err(ResponseError::BadChunk("trailers too large"));
                            }
                            return Ok(Step::NeedMore);
                        };
                        buf.advance(end + 2);
                        if end == 0 {
                            *self = BodyDecoder::Done;
                        } else {
                            *seen += end + 2;
                            if *seen > MAX_TRAILERS {
                                return Err(ResponseError::BadChunk("trailers too large"));
                            }
                        }
                    }
                },
            }
        }
    }

    /// The connection closed: fine for a close-delimited body, a cut otherwise.
    pub(crate) fn at_eof(&mut self) -> Result<(), ResponseError> {
        match self {
            BodyDecoder::UntilClose | BodyDecoder::Done | BodyDecoder::Length(0) => {
                *self = BodyDecoder::Done;
                Ok(())
            }
            BodyDecoder::Length(_) | BodyDecoder::Chunked(_) => Err(ResponseError::Cut),
        }
    }

    /// Bytes still to come, when the framing says.
    pub(crate) fn remaining(&self) -> Option<u64> {
        match self {
            BodyDecoder::Length(n) => Some(*n),
            BodyDecoder::Done => Some(0),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str, method: &Method) -> Result<Option<ResponseHead>, ResponseError> {
        parse_response_head(&mut BytesMut::from(text), method)
    }

    /// Decodes `wire` fed in pieces of `piece` bytes; the data and whether it ended.
    fn decode(
        mut decoder: BodyDecoder,
        wire: &[u8],
        piece: usize,
    ) -> Result<(Vec<u8>, bool), ResponseError> {
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        for part in wire.chunks(piece.max(1)) {
            buf.extend_from_slice(part);
            loop {
                match decoder.step(&mut buf)? {
                    Step::Data(bytes) => data.extend_from_slice(&bytes),
                    Step::NeedMore => break,
                    Step::Done => return Ok((data, true)),
                }
            }
        }
        Ok((data, false))
    }

    #[test]
    fn request_heads_carry_origin_form_host_and_one_framing() {
        let (parts, ()) = http::Request::post("http://example.test/orders?x=1")
            .header("content-length", "99")
            .header("transfer-encoding", "chunked")
            .header("x-request-id", "abc")
            .body(())
            .unwrap()
            .into_parts();
        let mut out = Vec::new();
        write_request_head(&parts, b"127.0.0.1:9", Framing::Length(5), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /orders?x=1 HTTP/1.1\r\nhost: 127.0.0.1:9\r\nx-request-id: abc\r\ncontent-length: 5\r\n\r\n"
        );

        let (parts, ()) = http::Request::get("/users")
            .header("host", "shop.example")
            .body(())
            .unwrap()
            .into_parts();
        let mut out = Vec::new();
        write_request_head(&parts, b"127.0.0.1:9", Framing::None, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /users HTTP/1.1\r\nhost: shop.example\r\n\r\n"
        );
    }

    #[test]
    fn empty_bodies_get_a_zero_length_only_where_a_body_is_expected() {
        assert_eq!(
            Framing::of_request(&Method::GET, Some(0), false),
            Framing::None
        );
        assert_eq!(
            Framing::of_request(&Method::GET, Some(0), true),
            Framing::Length(0)
        );
        assert_eq!(
            Framing::of_request(&Method::POST, Some(0), false),
            Framing::Length(0)
        );
        assert_eq!(
            Framing::of_request(&Method::PUT, Some(3), false),
            Framing::Length(3)
        );
        assert_eq!(
            Framing::of_request(&Method::POST, None, false),
            Framing::Chunked
        );
    }

    #[test]
    fn answers_have_no_body_after_head_and_for_1xx_204_and_304() {
        for (method, status) in [
            (Method::HEAD, StatusCode::OK),
            (Method::GET, StatusCode::CONTINUE),
            (Method::GET, StatusCode::NO_CONTENT),
            (Method::GET, StatusCode::NOT_MODIFIED),
        ] {
            assert_eq!(
                Framing::of_response(&method, status, Some(5)),
                Framing::None
            );
        }
        assert_eq!(
            Framing::of_response(&Method::GET, StatusCode::OK, Some(5)),
            Framing::Length(5)
        );
        assert_eq!(
            Framing::of_response(&Method::POST, StatusCode::CREATED, None),
            Framing::Chunked
        );
    }

    #[test]
    fn chunks_are_framed_in_hex() {
        let mut out = Vec::new();
        write_chunk(&[b'x'; 26], &mut out);
        assert!(out.starts_with(b"1a\r\nxxxx"));
        assert!(out.ends_with(b"x\r\n"));
    }

    #[test]
    fn a_response_head_is_parsed_after_interim_answers() {
        let parsed = head(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\nx-a: 1\r\nx-a: 2\r\n\r\nok",
            &Method::POST,
        )
        .unwrap()
        .unwrap();
        assert_eq!(parsed.status, StatusCode::CREATED);
        assert_eq!(parsed.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(parsed.body, BodyDecoder::Length(2));
        assert!(parsed.reusable);
    }

    #[test]
    fn partial_heads_wait_and_oversized_or_malformed_ones_are_refused() {
        assert!(
            head("HTTP/1.1 200 OK\r\ncontent-le", &Method::GET)
                .unwrap()
                .is_none()
        );
        let huge = format!(
            "HTTP/1.1 200 OK\r\nx: {}",
            "a".repeat(MAX_RESPONSE_HEAD + 1)
        );
        assert_eq!(
            head(&huge, &Method::GET).unwrap_err(),
            ResponseError::HeadTooLarge
        );
        assert!(matches!(
            head("SSH-2.0-OpenSSH\r\n\r\n", &Method::GET),
            Err(ResponseError::Malformed(_))
        ));
        assert_eq!(
            head("HTTP/1.1 101 Switching Protocols\r\n\r\n", &Method::GET).unwrap_err(),
            ResponseError::UnrequestedUpgrade
        );
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let framed = |text: &str, method: Method| {
            head(text, &method).map(|h| h.map(|h| (h.body, h.reusable, h.headers)))
        };
        // No body after HEAD, 204 and 304, whatever the headers say.
        for (text, method) in [
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n",
                Method::HEAD,
            ),
            ("HTTP/1.1 204 No Content\r\n\r\n", Method::GET),
            (
                "HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n",
                Method::GET,
            ),
        ] {
            assert_eq!(
                framed(text, method).unwrap().unwrap().0,
                BodyDecoder::Length(0),
                "{text}"
            );
        }
        // Transfer-Encoding wins over Content-Length, which is dropped; the connection is not reused.
        let (body, reusable, headers) = framed(
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        assert_eq!(body, BodyDecoder::Chunked(Chunk::Size));
        assert!(!reusable);
        assert!(!headers.contains_key("content-length"));
        // Repeated equal lengths are one length; differing or malformed ones are refused.
        assert_eq!(
            framed(
                "HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\ncontent-length: 3\r\n\r\n",
                Method::GET
            )
            .unwrap()
            .unwrap()
            .0,
            BodyDecoder::Length(3)
        );
        for bad in ["3, 4", "-1", "+3", "0x10", "", "99999999999999999999999"] {
            let text = format!("HTTP/1.1 200 OK\r\ncontent-length: {bad}\r\n\r\n");
            assert_eq!(
                framed(&text, Method::GET).unwrap_err(),
                ResponseError::BadLength,
                "{bad}"
            );
        }
        // Neither: the body runs until the connection closes.
        let (body, reusable, _) = framed("HTTP/1.1 200 OK\r\n\r\n", Method::GET)
            .unwrap()
            .unwrap();
        assert_eq!(body, BodyDecoder::UntilClose);
        assert!(!reusable);
        // Only HTTP/1.1 without `Connection: close` is kept.
        for text in [
            "HTTP/1.1 200 OK\r\nconnection: keep-alive, close\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n",
        ] {
            assert!(!framed(text, Method::GET).unwrap().unwrap().1, "{text}");
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_pieces_they_arrive_in() {
        let wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\ntrailer: x\r\n\r\n";
        for piece in [1, 2, 3, 7, wire.len()] {
            assert_eq!(
                decode(BodyDecoder::chunked(), wire, piece).unwrap(),
                (b"hello world".to_vec(), true),
                "pieces of {piece}"
            );
        }
        // Bytes after the body's end are left in the buffer.
        let mut buf = BytesMut::from(&b"0\r\n\r\nHTTP/1.1"[..]);
        assert_eq!(BodyDecoder::chunked().step(&mut buf).unwrap(), Step::Done);
        assert_eq!(&buf[..], b"HTTP/1.1");
    }

    #[test]
    fn malformed_chunks_are_refused() {
        for wire in [&b"zz\r\n"[..], b"5\r\nhelloXX", b"ffffffffffffffffffff\r\n"] {
            assert!(
                decode(BodyDecoder::chunked(), wire, wire.len()).is_err(),
                "{wire:?}"
            );
        }
        let long_line = vec![b'1'; MAX_CHUNK_LINE + 2];
        assert!(decode(BodyDecoder::chunked(), &long_line, long_line.len()).is_err());
        let mut endless_trailers = b"0\r\n".to_vec();
        endless_trailers.extend(std::iter::repeat_n(b"x: y\r\n".to_vec(), 4000).flatten());
        assert!(decode(BodyDecoder::chunked(), &endless_trailers, 4096).is_err());
    }

    #[test]
    fn length_bodies_end_at_their_length_and_a_close_cuts_them() {
        assert_eq!(
            decode(BodyDecoder::Length(5), b"helloEXTRA", 3).unwrap(),
            (b"hello".to_vec(), true)
        );
        let mut short = BodyDecoder::Length(5);
        assert_eq!(
            short.step(&mut BytesMut::from(&b"hel"[..])).unwrap(),
            Step::Data(Bytes::from_static(b"hel"))
        );
        assert!(short.at_eof().is_err());
        let mut until_close = BodyDecoder::UntilClose;
        assert_eq!(
            until_close.step(&mut BytesMut::from(&b"all"[..])).unwrap(),
            Step::Data(Bytes::from_static(b"all"))
        );
        assert!(until_close.at_eof().is_ok());
        assert_eq!(until_close.step(&mut BytesMut::new()).unwrap(), Step::Done);
    }
}
