//! The accept loop: each connection served by hyper with a timer, the client address attached to each
//! request, and two bounds on what a client can hold without doing anything:
//!
//! - a connection on which the server has nothing to do for `server.header_read_timeout_ms` is closed.
//!   Nothing to do: no request is being handled and no answer body is waiting for its next frame; every
//!   request is either done or has an answer the client is not taking (an HTTP/2 window left at zero).
//!   hyper's own HTTP/1 header timeout covers a request whose headers trickle in; this covers a connection
//!   that never sends a byte (the HTTP version is read from the first bytes, before any HTTP/1 timer runs),
//!   an HTTP/2 connection kept up by pings with no stream, and a stream whose answer is never read. A long
//!   request (an analyst query) or an event stream waiting for its next event keeps its connection. The
//!   price: hyper takes an answer's frames before it has written them, so a client must read each frame
//!   (a whole JSON answer is one, up to 16 MiB for `query_graph`) within the timeout, i.e. at 0.5 MB/s or
//!   more at the default 30 s.
//! - at most `server.max_connections` are open at once; past that a new connection is closed as soon as it
//!   is accepted, and counted in `connections_refused_total`.
//!
//! `axum::serve` sets neither (nor any timer, which leaves hyper's header timeout off).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::time::Instant;
use tower::ServiceExt;

use super::{ClientAddr, CountingListener};

/// How long a connection may sit with nothing to do, how many may be open, and how long shutdown waits
/// for the requests in flight.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
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
                    Ok::<_, std::convert::Infallible>(response.map(|body| Body::new(Tracked::new(body, serving))))
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
    // A client that never takes its answer must not hold shutdown up.
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after the shutdown grace are left to end with the process");
    }
}

/// What a connection's server side is doing: requests being handled or streaming, and answers waiting for
/// the client to take their next frame.
struct Activity {
    state: Mutex<ActivityState>,
}

struct ActivityState {
    /// Requests started and not yet done (their answer body not dropped).
    in_flight: usize,
    /// Of those, the ones whose answer waits for hyper to take a frame (hyper waits for the client).
    waiting: usize,
    /// When any of the above last changed, or an answer was polled.
    changed: Instant,
}

impl Activity {
    fn new() -> Self {
        Self { state: Mutex::new(ActivityState { in_flight: 0, waiting: 0, changed: Instant::now() }) }
    }

    fn update(&self, change: impl FnOnce(&mut ActivityState)) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut state);
        state.changed = Instant::now();
    }

    /// Resolves once the server has had nothing to do on the connection for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let (idle, changed) = {
                let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                (state.waiting == state.in_flight, state.changed)
            };
            if idle && changed.elapsed() >= timeout {
                return;
            }
            let next = if idle { changed + timeout } else { Instant::now() + timeout / 4 };
            tokio::time::sleep_until(next).await;
        }
    }
}

/// One request on a connection, from the call of the service until its answer body is dropped.
struct Serving {
    activity: Arc<Activity>,
    /// Whether its answer waits for hyper to take the next frame.
    waiting: bool,
}

impl Serving {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.update(|state| state.in_flight += 1);
        Self { activity: activity.clone(), waiting: false }
    }

    /// Records a poll of the answer (progress, whatever it returned) and whether it now waits.
    fn set_waiting(&mut self, waiting: bool) {
        let was = std::mem::replace(&mut self.waiting, waiting);
        self.activity.update(|state| {
            state.waiting += usize::from(waiting);
            state.waiting -= usize::from(was);
        });
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let waiting = self.waiting;
        self.activity.update(|state| {
            state.in_flight -= 1;
            state.waiting -= usize::from(waiting);
        });
    }
}

/// An answer body that tells its connection's `Activity` when it waits for the client, forwarding the
/// body's own length so `Content-Length` is still sent.
struct Tracked {
    body: Body,
    serving: Serving,
}

impl Tracked {
    fn new(body: Body, mut serving: Serving) -> Self {
        serving.set_waiting(true);
        Self { body, serving }
    }
}

impl hyper::body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        // A frame handed over waits for the client until hyper asks for the next one.
        this.serving.set_waiting(matches!(polled, Poll::Ready(Some(Ok(_)))));
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}
