//! The accept loop: each connection served by hyper with a timer, the client address attached to each
//! request, and two bounds on what a client that sends nothing can hold:
//!
//! - a connection with no request in flight for `server.header_read_timeout_ms` (since it opened, or since
//!   its last answer ended) is closed. hyper's own HTTP/1 header timeout covers a request whose headers
//!   trickle in; this covers a connection that never sends a byte (the HTTP version is read from the first
//!   bytes, before any HTTP/1 timer runs) and an HTTP/2 connection kept open by pings with no stream. A
//!   request being served (a long analyst query, an event stream) keeps its connection however long it runs.
//! - at most `server.max_connections` are open at once; past that a new connection is closed as soon as it
//!   is accepted, and counted in `connections_refused_total`.
//!
//! `axum::serve` sets neither (nor any timer, which leaves hyper's header timeout off).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::time::Instant;
use tower::ServiceExt;

use super::{ClientAddr, CountingListener};

/// How long a connection may sit without a request, and how many may be open.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `router` on every connection `listener` accepts until `shutdown` resolves, then lets the
/// requests in flight finish (MCP streams end through the router's own stop token).
pub async fn serve(
    mut listener: CountingListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.idle_timeout);
    builder.http2().timer(TokioTimer::new()).enable_connect_protocol();
    loop {
        let (io, address) = tokio::select! {
            accepted = axum::serve::Listener::accept(&mut listener) => accepted,
            _ = &mut shutdown => break,
        };
        // The new connection is counted already.
        if listener.gauge.get() > i64::try_from(limits.max_connections).unwrap_or(i64::MAX) {
            listener.refused.inc();
            tracing::debug!(%address, "connection refused: server.max_connections are open");
            continue;
        }
        let activity = Arc::new(Activity::new());
        let service = {
            let (router, activity) = (router.clone(), activity.clone());
            tower::service_fn(move |mut request: axum::http::Request<Incoming>| {
                let (router, serving) = (router.clone(), Serving::start(&activity));
                request.extensions_mut().insert(ConnectInfo(ClientAddr(address)));
                async move {
                    let response = router.oneshot(request).await?;
                    // The request counts as in flight until its answer's body is done (or dropped).
                    Ok::<_, std::convert::Infallible>(response.map(|body| {
                        Body::new(body.map_frame(move |frame| {
                            let _ = &serving;
                            frame
                        }))
                    }))
                }
            })
        };
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service));
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(async move {
            tokio::select! {
                ended = connection => if let Err(err) = ended {
                    tracing::trace!(%address, error = %err, "connection ended");
                },
                () = activity.idle_for(limits.idle_timeout) => tracing::trace!(%address, "idle connection closed"),
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Requests a connection is serving, and when it last had none.
struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds from `opened` to the end of the last request (0 before the first ends).
    idle_since_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self { opened: Instant::now(), in_flight: AtomicUsize::new(0), idle_since_ms: AtomicU64::new(0) }
    }

    /// Resolves once the connection has had no request in flight for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let idle_since = self.opened + Duration::from_millis(self.idle_since_ms.load(Ordering::SeqCst));
            if self.in_flight.load(Ordering::SeqCst) == 0 && idle_since.elapsed() >= timeout {
                return;
            }
            // A request in flight is looked at again a timeout later: it may have ended by then.
            tokio::time::sleep_until((idle_since + timeout).max(Instant::now() + timeout / 8)).await;
        }
    }
}

/// One request in flight on a connection, for as long as it lives.
struct Serving(Arc<Activity>);

impl Serving {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::SeqCst);
        Self(activity.clone())
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        // The idle time is set before the count drops, so a watcher that sees no request in flight also
        // sees when the last one ended.
        let ms = u64::try_from(self.0.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.idle_since_ms.store(ms, Ordering::SeqCst);
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}
