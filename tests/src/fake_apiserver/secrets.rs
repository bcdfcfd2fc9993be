//! The agents' token Secret, the one Secret the orchestrator reads.

use http::{Response, StatusCode};
use serde_json::json;

use super::routes::{failure, json_response, Body};
use super::{status, Shared};

/// The agents' token Secret, if the fake has one.
pub(super) fn get_secret(shared: &Shared, namespace: Option<&str>, name: &str) -> Response<Body> {
    use base64_lite::encode;
    let ours = namespace == Some(shared.config.agent_namespace())
        && name == netprof::k8s::rbac::AGENT_TOKEN_SECRET;
    match (&shared.config.agent_token, ours) {
        (Some(token), true) => json_response(
            StatusCode::OK,
            json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": name, "namespace": namespace, "resourceVersion": "1"},
                "data": {netprof::k8s::rbac::AGENT_TOKEN_KEY: encode(format!("{token}\n").as_bytes())}}),
        ),
        _ => failure(status::not_found("secrets", name)),
    }
}

/// Base64 for the Secret's data (the tests crate has no base64 dependency).
mod base64_lite {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}
