//! Exec over WebSocket, the server side of what kube's `Api::exec` speaks: every frame is binary,
//! its first byte the channel (1 stdout, 2 stderr, 3 the exit `Status`). Each output channel is
//! announced with an empty frame when the stream opens; v5 clients may send a close-channel
//! frame (255, then the channel) for stdin, which is ignored.

use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use http::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

use super::routes::Body;
use super::websocket::{self, Socket};
use super::{status, Backend, ExecOutcome, PodInfo};

const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
/// Output goes out in frames of at most this many bytes, as a real server streams it.
const FRAME: usize = 32 * 1024;

pub fn serve<B>(
    req: &mut Request<B>,
    backend: Arc<dyn Backend>,
    pod: PodInfo,
    container: String,
    command: Vec<String>,
) -> Response<Body> {
    let accepted = match websocket::accept(req, &["v5.channel.k8s.io", "v4.channel.k8s.io"]) {
        Ok(accepted) => accepted,
        Err(response) => return response,
    };
    tokio::spawn(async move {
        if let Some(socket) = websocket::socket(accepted.upgrade).await {
            run(socket, backend, pod, container, command).await;
        }
    });
    accepted.response
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut bytes = Vec::with_capacity(data.len() + 1);
    bytes.push(channel);
    bytes.extend_from_slice(data);
    Message::binary(bytes)
}

async fn run(
    socket: Socket,
    backend: Arc<dyn Backend>,
    pod: PodInfo,
    container: String,
    command: Vec<String>,
) {
    let (mut sink, mut stream) = socket.split();
    for channel in [STDOUT, STDERR, STATUS] {
        if sink.send(frame(channel, &[])).await.is_err() {
            return;
        }
    }
    // The command runs until it ends or the client goes away (then its future, and with it the
    // process, is dropped).
    let client_gone = async {
        while let Some(message) = stream.next().await {
            match message {
                Ok(Message::Close(_)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let outcome = tokio::select! {
        outcome = backend.exec(&pod, &container, command.clone()) => outcome,
        _ = client_gone => return,
    };
    let document = match &outcome {
        ExecOutcome::Exited {
            stdout,
            stderr,
            code,
        } => {
            for (channel, data) in [(STDOUT, stdout), (STDERR, stderr)] {
                for chunk in data.chunks(FRAME) {
                    if sink.send(frame(channel, chunk)).await.is_err() {
                        return;
                    }
                }
            }
            if *code == 0 {
                status::exec_success()
            } else {
                status::exec_exit(&command, *code)
            }
        }
        ExecOutcome::NotRun(message) => status::exec_not_run(message),
    };
    let _ = sink
        .send(frame(STATUS, document.to_string().as_bytes()))
        .await;
    let _ = sink.send(Message::Close(None)).await;
}
