//! The WebSocket upgrade of exec and port-forward requests: the RFC 6455 handshake plus the
//! Kubernetes subprotocol negotiation (the server picks, in its own order of preference, one
//! of the protocols the client offers in one comma-separated `Sec-WebSocket-Protocol`).

use http::{header, Request, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use super::routes::{json_response, Body};
use super::status;

pub type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// An accepted upgrade: the 101 response (naming the chosen protocol) and the connection.
pub struct Accepted {
    pub response: Response<Body>,
    pub upgrade: OnUpgrade,
}

/// Accepts the upgrade if the client offers one of `supported` (in the server's order).
pub fn accept<B>(
    req: &mut Request<B>,
    supported: &[&'static str],
) -> Result<Accepted, Response<Body>> {
    let headers = req.headers();
    let is_upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
    else {
        return Err(json_response(
            StatusCode::BAD_REQUEST,
            status::bad_request("Upgrade request required"),
        ));
    };
    if !is_upgrade {
        return Err(json_response(
            StatusCode::BAD_REQUEST,
            status::bad_request("Upgrade request required"),
        ));
    }
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_owned()))
        .collect();
    let Some(protocol) = supported
        .iter()
        .copied()
        .find(|p| offered.iter().any(|o| o == p))
    else {
        let message = format!(
            "no supported WebSocket subprotocol among {offered:?} (supported: {supported:?})"
        );
        return Err(json_response(
            StatusCode::BAD_REQUEST,
            status::bad_request(&message),
        ));
    };
    let accept_key = derive_accept_key(key.as_bytes());
    let response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept_key)
        .header(header::SEC_WEBSOCKET_PROTOCOL, protocol)
        .body(super::routes::empty())
        .expect("a valid 101 response");
    Ok(Accepted {
        response,
        upgrade: hyper::upgrade::on(req),
    })
}

/// The WebSocket once hyper has handed over the connection.
pub async fn socket(upgrade: OnUpgrade) -> Option<Socket> {
    let upgraded = upgrade.await.ok()?;
    Some(WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await)
}
