//! The connection loop: HTTP/1.1 through hyper's own connection, with
//! graceful shutdown.
//!
//! Held long polls are most of a big fleet's open connections, so each
//! connection is kept small: HTTP/1.1 only (no protocol sniffing, no HTTP/2
//! state), and a connection that is waiting for its handler's answer does
//! not read from the socket meanwhile (half-close), which would reserve a
//! second read buffer while the first still holds the request's head. A
//! client that goes away during a held poll is noticed when the poll
//! answers (at most its `wait`) instead of at once.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tower::Service;

use crate::PeerAddr;

/// Longest a connection may take to send a request's head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest shutdown waits for connections to finish their requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Serves `app` on `listener` until `shutdown` resolves; then accepts no
/// more connections, lets each finish the request it is on (up to
/// [`SHUTDOWN_GRACE`]), and returns.
pub async fn serve<L>(
    mut listener: L,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
    L::Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (closing, closing_rx) = watch::channel(false);
    // each connection holds a sender: all are gone when the receiver ends
    let (open, mut all_closed) = mpsc::channel::<Infallible>(1);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.half_close(true);
    // a request's head must arrive within HEADER_TIMEOUT of the connection
    // waiting for it: slow or silent clients (and idle keep-alive
    // connections) are closed
    builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
    tokio::pin!(shutdown);
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let app = app.clone();
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(PeerAddr(peer)));
            app.clone().call(req)
        });
        let conn = builder.serve_connection(TokioIo::new(io), svc);
        let mut closing = closing_rx.clone();
        let open = open.clone();
        tokio::spawn(async move {
            tokio::pin!(conn);
            let done = tokio::select! {
                r = conn.as_mut() => Some(r),
                _ = closing.wait_for(|c| *c) => None,
            };
            let r = match done {
                Some(r) => r,
                None => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(open);
        });
    }
    drop(listener);
    closing.send_replace(true);
    drop(open);
    if tokio::time::timeout(SHUTDOWN_GRACE, all_closed.recv()).await.is_err() {
        tracing::warn!(
            "connections still busy {} s after shutdown began (a download or a slow client): closing them",
            SHUTDOWN_GRACE.as_secs()
        );
    }
    Ok(())
}
