//! The listening side of the control API: a loopback-only socket, one task per connection
//! (at most [`MAX_CONNECTIONS`] at once), each answering one request, and a shutdown that
//! detaches whatever is attached.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::JoinSet,
};

use super::http::{self, Response};
use super::{Control, DEFAULT_LISTEN};

/// Connections served at once; more wait in the kernel's accept queue.
const MAX_CONNECTIONS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "refusing to listen on {addr}: the control API listens on loopback only (e.g. {DEFAULT_LISTEN}); \
         reach it through `kubectl port-forward` or the port-forward API, which RBAC governs"
    )]
    NotLoopback { addr: SocketAddr },
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Binds `addr`, which must be a loopback address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ApiError> {
    if !addr.ip().is_loopback() {
        return Err(ApiError::NotLoopback { addr });
    }
    TcpListener::bind(addr)
        .await
        .map_err(|source| ApiError::Bind { addr, source })
}

/// Serves one connection: one request, one response.
async fn connection(mut stream: TcpStream, control: Arc<Control>) {
    let response =
        match tokio::time::timeout(http::READ_TIMEOUT, http::read_request(&mut stream)).await {
            Err(_) => Response::error(
                408,
                format!(
                    "the request was not complete within {} s",
                    http::READ_TIMEOUT.as_secs()
                ),
            ),
            Ok(Err(http::ReadError::Closed)) => return,
            Ok(Err(http::ReadError::Reject(response))) => response,
            Ok(Ok(request)) => {
                let response = control.handle(request.clone()).await;
                log::info!("{} {} -> {}", request.method, request.path, response.status);
                response
            }
        };
    http::respond(&mut stream, &response).await;
}

/// Serves the control API on `listener` until `shutdown` resolves, then detaches the agent if
/// one is attached. Returns what `shutdown` resolved to.
pub async fn serve<S: Future<Output = &'static str>>(
    listener: TcpListener,
    control: Arc<Control>,
    shutdown: S,
) -> &'static str {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    let reason = loop {
        tokio::select! {
            reason = &mut shutdown => break reason,
            accepted = accept(&listener, &permits) => {
                if let Some((stream, permit)) = accepted {
                    let control = Arc::clone(&control);
                    connections.spawn(async move {
                        connection(stream, control).await;
                        drop(permit);
                    });
                }
            }
            // Reap finished connections; a panicking handler costs only its connection.
            Some(result) = connections.join_next(), if !connections.is_empty() => {
                if let Err(err) = result {
                    if err.is_panic() {
                        log::error!("a request handler panicked: {err}");
                    }
                }
            }
        }
    };
    drop(listener);
    // A request in progress (an attach, say) finishes first: shutdown waits for the lock.
    control.shutdown().await;
    connections.shutdown().await;
    reason
}

async fn accept(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
) -> Option<(TcpStream, tokio::sync::OwnedSemaphorePermit)> {
    let permit = Arc::clone(permits).acquire_owned().await.ok()?;
    match listener.accept().await {
        Ok((stream, _)) => Some((stream, permit)),
        Err(err) => {
            // EMFILE and the like: back off instead of spinning.
            log::warn!("accept failed: {err}");
            tokio::time::sleep(Duration::from_millis(100)).await;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_loopback_is_served() {
        let err = bind("0.0.0.0:9476".parse().unwrap()).await.unwrap_err();
        assert!(err.to_string().contains("loopback only"), "{err}");
        assert!(bind("198.18.0.1:9476".parse().unwrap()).await.is_err());
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        assert!(listener.local_addr().unwrap().ip().is_loopback());
    }
}
