//! Port-forward over WebSocket, the server side of what kube's `Api::portforward` speaks (the
//! kubelet's `v4.channel.k8s.io` framing): port i has data channel 2i and error channel 2i+1;
//! the server opens both with a frame holding the port number (u16, little endian); then data
//! frames carry the channel byte and the bytes. A connection the pod refuses is reported on the
//! error channel, and the stream closes.

use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use http::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use super::routes::Body;
use super::websocket::{self, Socket};
use super::{Backend, PodInfo};

const DATA: u8 = 0;
const ERROR: u8 = 1;

pub fn serve<B>(
    req: &mut Request<B>,
    backend: Arc<dyn Backend>,
    pod: PodInfo,
    port: u16,
) -> Response<Body> {
    let accepted = match websocket::accept(req, &["v4.channel.k8s.io"]) {
        Ok(accepted) => accepted,
        Err(response) => return response,
    };
    tokio::spawn(async move {
        if let Some(socket) = websocket::socket(accepted.upgrade).await {
            run(socket, backend, pod, port).await;
        }
    });
    accepted.response
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut bytes = vec![channel];
    bytes.extend_from_slice(data);
    Message::binary(bytes)
}

async fn run(socket: Socket, backend: Arc<dyn Backend>, pod: PodInfo, port: u16) {
    let (mut sink, mut stream) = socket.split();
    for channel in [DATA, ERROR] {
        if sink
            .send(frame(channel, &port.to_le_bytes()))
            .await
            .is_err()
        {
            return;
        }
    }
    let mut target = match backend.port_forward(&pod, port).await {
        Ok(target) => target,
        Err(err) => {
            // The kubelet's wording, with the pod's name where it has the sandbox id.
            let message = format!(
                "error forwarding port {port} to pod {}, uid : failed to connect to localhost:{port} inside namespace of pod {}: {err}",
                pod.name, pod.name
            );
            let _ = sink.send(frame(ERROR, message.as_bytes())).await;
            let _ = sink.send(Message::Close(None)).await;
            return;
        }
    };
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            message = stream.next() => match message {
                Some(Ok(Message::Binary(bytes))) if bytes.len() > 1 && bytes[0] == DATA => {
                    if target.write_all(&bytes[1..]).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            read = target.read(&mut buffer) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink.send(frame(DATA, &buffer[..n])).await.is_err() {
                        break;
                    }
                }
            },
        }
    }
    let _ = target.shutdown().await;
    let _ = sink.send(Message::Close(None)).await;
}
