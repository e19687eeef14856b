//! A listener that counts open connections in the `active_connections` gauge.

use std::pin::Pin;
use std::task::{Context, Poll};

use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

pub struct CountingListener {
    pub inner: TcpListener,
    pub gauge: IntGauge,
    /// Connections closed on arrival because too many were open.
    pub refused: IntCounter,
}

/// A connection that decrements the gauge when closed.
pub struct CountedStream {
    stream: TcpStream,
    gauge: IntGauge,
}

impl Drop for CountedStream {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl axum::serve::Listener for CountingListener {
    type Io = CountedStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, address) = axum::serve::Listener::accept(&mut self.inner).await;
        let _ = stream.set_nodelay(true);
        self.gauge.inc();
        (CountedStream { stream, gauge: self.gauge.clone() }, address)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// File descriptors kept for everything but client connections (the stores' files: Qdrant segments,
/// SQLite and its WAL; backend connections; the model): at most this many, and at most a quarter of the
/// limit.
const RESERVED_FILES: u64 = 1024;
/// The fewest connections served whatever the limit says.
const MIN_CONNECTIONS: usize = 64;

/// Raises the process's open-file soft limit as far as `max_connections` needs and the hard limit allows,
/// and returns the connection cap that fits in it: a cap above the limit would never engage (accepting
/// would fail first, and so would the stores' own file opens). The raised limit is the whole process's
/// (child processes inherit it).
pub fn fit_open_files(max_connections: usize) -> usize {
    let wanted = (max_connections as u64).saturating_add(RESERVED_FILES);
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return max_connections;
    }
    if limit.rlim_cur < wanted && limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: wanted.min(limit.rlim_max), rlim_max: limit.rlim_max };
        // SAFETY: setrlimit only reads the struct passed; it changes this process's own limit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = raised.rlim_cur;
        } else {
            let error = std::io::Error::last_os_error();
            tracing::warn!(wanted = raised.rlim_cur, %error, "cannot raise the open-file limit");
        }
    }
    let soft = limit.rlim_cur;
    let fits = soft.saturating_sub(RESERVED_FILES.min(soft / 4));
    let fits = usize::try_from(fits).unwrap_or(usize::MAX).max(MIN_CONNECTIONS);
    if fits < max_connections {
        tracing::warn!(
            max_connections,
            open_files = soft,
            serving = fits,
            "the open-file limit is below server.max_connections; fewer connections are accepted"
        );
    }
    fits.min(max_connections)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_files() -> (u64, u64) {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: reads the process's own limit into the struct.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
        (limit.rlim_cur, limit.rlim_max)
    }

    #[test]
    fn the_open_file_limit_is_raised_to_fit_the_cap_or_the_cap_to_fit_the_limit() {
        let cap = fit_open_files(3000);
        let (soft, hard) = open_files();
        if hard >= 3000 + RESERVED_FILES {
            assert_eq!(cap, 3000);
            assert!(soft >= 3000 + RESERVED_FILES, "soft limit {soft}");
        } else {
            let fits = soft.saturating_sub(RESERVED_FILES.min(soft / 4)).max(MIN_CONNECTIONS as u64);
            assert_eq!(cap as u64, fits.min(3000));
        }
        // A cap the limit already fits leaves both as they are.
        assert_eq!(fit_open_files(10), 10);
        assert_eq!(open_files(), (soft, hard));
    }
}
