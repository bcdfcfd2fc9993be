//! The HTTP/1.1 server side of the control API: read one request from a connection (bounded in
//! size and time), write one response, close.
//!
//! Why hand-written and not hyper: the API has eight routes, small JSON bodies, and exactly two
//! kinds of clients (the kubelet's probes and the orchestrator through a port-forward, plus curl
//! by hand), so one request per connection (`Connection: close`) is all it needs. What a
//! server must get right here is the limits (head size, body size, read timeout) and never
//! dying on bad input; ~200 lines on tokio do that with every status chosen by us, and keep
//! hyper, hyper-util, http, http-body-util and their dependencies out of a build that runs on
//! two cores. Chunked request bodies are refused with 411 (no client of ours sends them);
//! `Expect: 100-continue` (curl, for bodies over 1 KiB) is honoured.

use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest request body accepted (413 beyond).
pub const MAX_BODY: usize = 64 * 1024;
/// Largest request line plus headers accepted (431 beyond).
pub const MAX_HEAD: usize = 16 * 1024;
/// Time a client has to send its whole request (408 after).
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed request: method, path without the query string, credentials, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// The `Authorization` header's value.
    pub authorization: Option<String>,
    pub body: Vec<u8>,
}

/// The request line and the headers that matter to us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    pub path: String,
    pub content_length: usize,
    pub expect_continue: bool,
    pub authorization: Option<String>,
}

/// A response; always sent with `Content-Length` and `Connection: close`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

pub const JSON: &str = "application/json";
pub const TEXT: &str = "text/plain; charset=utf-8";
/// The Prometheus text exposition format, version 0.0.4.
pub const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Response {
    pub fn json(status: u16, value: &impl Serialize) -> Self {
        let mut body = serde_json::to_vec_pretty(value).expect("response values serialize");
        body.push(b'\n');
        Self {
            status,
            content_type: JSON,
            headers: Vec::new(),
            body,
        }
    }

    pub fn text(status: u16, content_type: &'static str, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into().into_bytes(),
        }
    }

    /// `{"error": reason, "status": N}`.
    pub fn error(status: u16, reason: impl Into<String>) -> Self {
        #[derive(Serialize)]
        struct ErrorBody {
            status: u16,
            error: String,
        }
        Self::json(
            status,
            &ErrorBody {
                status,
                error: reason.into(),
            },
        )
    }

    pub fn no_content() -> Self {
        Self {
            status: 204,
            content_type: TEXT,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The bytes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\n",
            self.status,
            reason_phrase(self.status)
        );
        if self.status != 204 {
            head.push_str(&format!(
                "Content-Type: {}\r\nContent-Length: {}\r\n",
                self.content_type,
                self.body.len()
            ));
        }
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("Connection: close\r\n\r\n");
        let mut bytes = head.into_bytes();
        if self.status != 204 {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Why no request came out of a connection.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed (or only sent blank lines) before a request started: answer nothing.
    Closed,
    /// Answer this (4xx) and close.
    Reject(Response),
}

/// Parses the request line and headers (everything before the empty line, without it).
pub fn parse_head(raw: &[u8]) -> Result<Head, Response> {
    let bad = |reason: &str| Response::error(400, reason);
    let text = std::str::from_utf8(raw).map_err(|_| bad("the request head is not UTF-8"))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().unwrap_or_default();
    let parts: Vec<&str> = request_line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Err(bad(
            "malformed request line: expected `METHOD /path HTTP/1.1`",
        ));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(bad(
            "malformed request line: the method must be an upper-case token",
        ));
    }
    if !target.starts_with('/') {
        return Err(bad(
            "malformed request line: the target must be a path starting with /",
        ));
    }
    match version {
        "HTTP/1.1" | "HTTP/1.0" => {}
        v if v.starts_with("HTTP/") => {
            return Err(Response::error(
                505,
                format!("{v} is not supported: use HTTP/1.1"),
            ))
        }
        _ => {
            return Err(bad(
                "malformed request line: expected `METHOD /path HTTP/1.1`",
            ))
        }
    }
    let mut content_length: Option<usize> = None;
    let mut expect_continue = false;
    let mut authorization = None;
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(bad("malformed header line: expected `Name: value`"));
        };
        if name.is_empty()
            || name
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(bad("malformed header name"));
        }
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let length: usize = value
                .parse()
                .map_err(|_| bad("Content-Length is not a non-negative integer"))?;
            if content_length.is_some_and(|l| l != length) {
                return Err(bad("conflicting Content-Length headers"));
            }
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Response::error(
                411,
                "Transfer-Encoding is not supported: send the body with a Content-Length",
            ));
        } else if name.eq_ignore_ascii_case("expect") {
            if !value.eq_ignore_ascii_case("100-continue") {
                return Err(bad("unsupported Expect header"));
            }
            expect_continue = true;
        } else if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(value.to_owned());
        }
    }
    let path = target.split(['?', '#']).next().unwrap_or(target).to_owned();
    Ok(Head {
        method: method.to_owned(),
        path,
        content_length: content_length.unwrap_or(0),
        expect_continue,
        authorization,
    })
}

/// Where the head ends: (end of head, start of body).
fn head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4));
    let lf = buf
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| (i, i + 2));
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// Reads one request. The caller bounds the time ([`READ_TIMEOUT`]).
pub async fn read_request<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
) -> Result<Request, ReadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let (end, body_start) = loop {
        // Blank lines before a request are allowed (RFC 9112 2.2).
        while buf.starts_with(b"\r\n") || buf.starts_with(b"\n") {
            let skip = if buf.starts_with(b"\r\n") { 2 } else { 1 };
            buf.drain(..skip);
        }
        if let Some(found) = head_end(&buf) {
            break found;
        }
        if buf.len() > MAX_HEAD {
            return Err(ReadError::Reject(Response::error(
                431,
                format!("the request line and headers exceed {MAX_HEAD} bytes"),
            )));
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| ReadError::Closed)?;
        if n == 0 {
            if buf.is_empty() {
                return Err(ReadError::Closed);
            }
            return Err(ReadError::Reject(Response::error(
                400,
                "the connection closed inside the request head",
            )));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if end > MAX_HEAD {
        return Err(ReadError::Reject(Response::error(
            431,
            format!("the request line and headers exceed {MAX_HEAD} bytes"),
        )));
    }
    let head = parse_head(&buf[..end]).map_err(ReadError::Reject)?;
    if head.content_length > MAX_BODY {
        return Err(ReadError::Reject(Response::error(
            413,
            format!(
                "the body has {} bytes; the limit is {MAX_BODY}",
                head.content_length
            ),
        )));
    }
    let mut body = buf.split_off(body_start);
    if head.expect_continue && body.len() < head.content_length {
        stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(|_| ReadError::Closed)?;
    }
    while body.len() < head.content_length {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| ReadError::Closed)?;
        if n == 0 {
            return Err(ReadError::Reject(Response::error(
                400,
                format!(
                    "the body ended after {} of {} bytes (Content-Length)",
                    body.len(),
                    head.content_length
                ),
            )));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    // Pipelined bytes after the body are ignored: one request per connection.
    body.truncate(head.content_length);
    Ok(Request {
        method: head.method,
        path: head.path,
        authorization: head.authorization,
        body,
    })
}

/// Writes `response`, half-closes, and drains what the client still sends (up to a bound), so
/// that closing with unread input does not reset the connection before the client has read an
/// early answer (a 413 for a body we did not read, say).
pub async fn respond<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, response: &Response) {
    if stream.write_all(&response.to_bytes()).await.is_err() {
        return;
    }
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
    let drain = async {
        let mut chunk = [0u8; 4096];
        let mut left = 4 * MAX_BODY;
        while left > 0 {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Result<Head, u16> {
        parse_head(raw.as_bytes()).map_err(|r| r.status)
    }

    #[test]
    fn parses_a_post_with_a_body_length() {
        let h = head("POST /v1/start?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-length: 42\r\nExpect: 100-continue\r\nauthorization: Bearer abc ").unwrap();
        assert_eq!(
            h,
            Head {
                method: "POST".into(),
                path: "/v1/start".into(),
                content_length: 42,
                expect_continue: true,
                authorization: Some("Bearer abc".into()),
            }
        );
        assert_eq!(head("GET /healthz HTTP/1.1").unwrap().authorization, None);
        assert_eq!(head("GET /healthz HTTP/1.0").unwrap().content_length, 0);
        // Bare LF line ends are tolerated.
        assert_eq!(
            head("GET /metrics HTTP/1.1\nHost: x").unwrap().path,
            "/metrics"
        );
    }

    #[test]
    fn refuses_malformed_heads_with_a_reason() {
        for raw in [
            "",
            "garbage",
            "GET /healthz",
            "get /healthz HTTP/1.1",
            "GET healthz HTTP/1.1",
            "GET  /healthz HTTP/1.1",
            "GET /healthz FTP/1.0",
            "GET /healthz HTTP/1.1\r\nno colon here",
            "GET /healthz HTTP/1.1\r\nBad Name: x",
            "POST /v1/start HTTP/1.1\r\nContent-Length: -1",
            "POST /v1/start HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2",
            "POST /v1/start HTTP/1.1\r\nExpect: something",
        ] {
            assert_eq!(head(raw), Err(400), "{raw:?}");
        }
        assert_eq!(head("GET / HTTP/2.0"), Err(505));
        assert_eq!(
            head("POST /v1/start HTTP/1.1\r\nTransfer-Encoding: chunked"),
            Err(411)
        );
        assert_eq!(parse_head(&[0xff, 0xfe]).unwrap_err().status, 400);
        let reason = String::from_utf8(parse_head(b"nonsense").unwrap_err().body).unwrap();
        assert!(reason.contains("METHOD /path HTTP/1.1"), "{reason}");
    }

    #[test]
    fn responses_carry_length_and_close() {
        let r = Response::text(200, TEXT, "ok\n").to_bytes();
        assert_eq!(
            String::from_utf8(r).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
        );
        let r = String::from_utf8(Response::no_content().to_bytes()).unwrap();
        assert_eq!(r, "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
        let e: serde_json::Value =
            serde_json::from_slice(&Response::error(409, "busy").body).unwrap();
        assert_eq!(e, serde_json::json!({"status": 409, "error": "busy"}));
    }

    async fn read(input: &[u8]) -> Result<Request, u16> {
        let (mut client, mut server) = tokio::io::duplex(1 << 20);
        client.write_all(input).await.unwrap();
        client.shutdown().await.unwrap();
        read_request(&mut server).await.map_err(|e| match e {
            ReadError::Closed => 0,
            ReadError::Reject(r) => r.status,
        })
    }

    #[tokio::test]
    async fn reads_requests_within_the_limits() {
        let r = read(b"\r\nPOST /v1/start HTTP/1.1\r\nContent-Length: 4\r\n\r\n{}\r\nextra")
            .await
            .unwrap();
        assert_eq!(
            (r.method.as_str(), r.path.as_str(), r.body.as_slice()),
            ("POST", "/v1/start", &b"{}\r\n"[..])
        );
        assert_eq!(read(b"").await, Err(0));
        assert_eq!(read(b"GET /healthz HTTP/1.1\r\n").await, Err(400));
        assert_eq!(
            read(b"POST /v1/start HTTP/1.1\r\nContent-Length: 10\r\n\r\n{}").await,
            Err(400)
        );
        let big = format!(
            "POST /v1/start HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert_eq!(read(big.as_bytes()).await, Err(413));
        let fat = format!(
            "GET /healthz HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(MAX_HEAD)
        );
        assert_eq!(read(fat.as_bytes()).await, Err(431));
        let exact = format!(
            "POST /v1/start HTTP/1.1\r\nContent-Length: {MAX_BODY}\r\n\r\n{}",
            " ".repeat(MAX_BODY)
        );
        assert_eq!(read(exact.as_bytes()).await.unwrap().body.len(), MAX_BODY);
    }
}
