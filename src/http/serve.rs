//! The accept loop: each connection served by hyper with a timer, so a client that sends its request
//! headers slowly (or keeps an idle connection) is cut off after `server.header_read_timeout_ms` instead of
//! holding a socket and a task for as long as it likes. `axum::serve` sets no timer, which leaves hyper's
//! header timeout off.

use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tower::ServiceExt;

use super::{ClientAddr, CountingListener};

/// Serves `router` on every connection `listener` accepts until `shutdown` resolves, then lets the
/// requests in flight finish (MCP streams end through the router's own stop token).
pub async fn serve(
    mut listener: CountingListener,
    router: Router,
    header_read_timeout: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_read_timeout);
    builder.http2().timer(TokioTimer::new()).enable_connect_protocol();
    loop {
        let (io, address) = tokio::select! {
            accepted = axum::serve::Listener::accept(&mut listener) => accepted,
            _ = &mut shutdown => break,
        };
        let service = router.clone().map_request(move |mut request: axum::http::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(ClientAddr(address)));
            request
        });
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service));
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::trace!(%address, error = %err, "connection ended");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
