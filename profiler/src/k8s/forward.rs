//! One HTTP/1.1 request to a port on a pod's loopback through the port-forward API (a WebSocket:
//! per port a data and an error channel). The agent answers one request per connection with
//! `Content-Length` and `Connection: close`, so a minimal client is all it takes.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::error::ApiCause;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("cannot open the port-forward: {0}{hint}", hint = forbidden_hint(.0))]
    Open(#[source] ApiCause),
    #[error("the port-forward reported: {0}")]
    Refused(String),
    #[error("the port-forward stream failed")]
    Io(#[source] std::io::Error),
    #[error("no answer within {secs} s")]
    Timeout { secs: u64 },
    #[error("{}", closed_message(*got))]
    Closed { got: usize },
    #[error("not an HTTP response: {0:?}")]
    BadResponse(String),
}

/// With nothing received, the pod's side most likely refused the connection: the error
/// channel says so, but kube drops that message when the server closes the stream before kube
/// has sent the request (a race in every port-forward client that writes first).
fn closed_message(got: usize) -> String {
    if got == 0 {
        "the port-forward closed without any response (is anything listening on that port of the pod?)".to_owned()
    } else {
        format!("the connection closed before a whole HTTP response ({got} bytes)")
    }
}

fn forbidden_hint(cause: &ApiCause) -> &'static str {
    match cause.code() {
        Some(403) => "; netprof needs `create` and `get` on `pods/portforward` in the agents' namespace (deploy/rbac.yaml)",
        _ => "",
    }
}

/// Status and body of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl HttpReply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim().to_owned()
    }
}

/// One HTTP request to a pod's loopback port.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// A JSON body ("" for none).
    pub body: &'a str,
    /// The `Authorization` header's value.
    pub authorization: Option<&'a str>,
}

/// Sends `request` to `port` of `pod` and reads the response.
pub async fn request(
    pods: &Api<Pod>,
    pod: &str,
    port: u16,
    request: HttpRequest<'_>,
    limit: Duration,
) -> Result<HttpReply, ForwardError> {
    match tokio::time::timeout(limit, exchange(pods, pod, port, request)).await {
        Ok(result) => result,
        Err(_) => Err(ForwardError::Timeout {
            secs: limit.as_secs(),
        }),
    }
}

async fn exchange(
    pods: &Api<Pod>,
    pod: &str,
    port: u16,
    http: HttpRequest<'_>,
) -> Result<HttpReply, ForwardError> {
    let HttpRequest {
        method,
        path,
        body,
        authorization,
    } = http;
    // A WebSocket GET on pods/portforward; RBAC checks `create` (and `get` before 1.35).
    let mut forwarder = pods
        .portforward(pod, &[port])
        .await
        .map_err(|e| ForwardError::Open(e.into()))?;
    let mut stream = forwarder.take_stream(port).expect("the port was requested");
    let mut port_error = Box::pin(forwarder.take_error(port).expect("the port was requested"));
    let auth = authorization.map_or(String::new(), |value| format!("Authorization: {value}\r\n"));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(ForwardError::Io)?;
    let mut received = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut errors_open = true;
    let reply = loop {
        tokio::select! {
            read = stream.read(&mut chunk) => {
                let n = read.map_err(ForwardError::Io)?;
                if n == 0 {
                    // The error channel's message may arrive just before the close: prefer it.
                    if errors_open {
                        if let Ok(Some(message)) = tokio::time::timeout(Duration::from_millis(200), &mut port_error).await {
                            return Err(ForwardError::Refused(message.trim().to_owned()));
                        }
                    }
                    break parse(&received, true)?.ok_or(ForwardError::Closed { got: received.len() })?;
                }
                received.extend_from_slice(&chunk[..n]);
                if let Some(reply) = parse(&received, false)? {
                    break reply;
                }
            }
            message = &mut port_error, if errors_open => match message {
                Some(message) => return Err(ForwardError::Refused(message.trim().to_owned())),
                // The error sender is gone: the port has no error to report.
                None => errors_open = false,
            },
        }
    };
    // Closing our end makes kube close the WebSocket; wait a moment for that, then let go.
    drop(stream);
    let _ = tokio::time::timeout(Duration::from_secs(2), forwarder.join()).await;
    Ok(reply)
}

/// A whole response in `bytes`, `None` while incomplete. At end of stream a response without
/// `Content-Length` ends there.
fn parse(bytes: &[u8], at_end: bool) -> Result<Option<HttpReply>, ForwardError> {
    let Some(head_end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&bytes[..head_end]);
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| ForwardError::BadResponse(status_line.chars().take(80).collect()))?;
    let length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<usize>().ok());
    let body = &bytes[head_end + 4..];
    match length {
        Some(length) if body.len() >= length => Ok(Some(HttpReply {
            status,
            body: body[..length].to_vec(),
        })),
        None if at_end => Ok(Some(HttpReply {
            status,
            body: body.to_vec(),
        })),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_complete_by_content_length() {
        let full = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\nConnection: close\r\n\r\nready\n";
        assert_eq!(
            parse(full, false).unwrap(),
            Some(HttpReply {
                status: 200,
                body: b"ready\n".to_vec()
            })
        );
        assert_eq!(parse(&full[..full.len() - 2], false).unwrap(), None);
        assert_eq!(parse(&full[..10], false).unwrap(), None);
        let no_length = b"HTTP/1.0 503 Service Unavailable\r\n\r\nnot ready";
        assert_eq!(parse(no_length, false).unwrap(), None);
        assert_eq!(parse(no_length, true).unwrap().unwrap().status, 503);
        assert!(matches!(
            parse(b"SSH-2.0-OpenSSH\r\n\r\n", false),
            Err(ForwardError::BadResponse(_))
        ));
    }
}
