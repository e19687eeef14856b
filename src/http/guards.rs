//! Request guards outside authentication: Host and Origin checks and the JSON content type (so no web page can
//! drive the tool endpoint, even with authentication off), the per-request time limit with the stable error
//! body, and the limit on failed authentication per client address.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use super::HttpState;
use super::routes::error_response;
use crate::error::ErrorCode;
use crate::tools::ToolError;

/// The client's address, as the listener saw it (`ConnectInfo`).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// The client address of a request, when the server was started with connect info.
pub fn client_ip(request: &Request) -> Option<IpAddr> {
    request.extensions().get::<axum::extract::ConnectInfo<ClientAddr>>().map(|info| info.0.0.ip())
}

/// Failed authentications per client address (IPv6 by /64, the block one host usually holds): past the
/// quota, the address is turned away with 429 before the credentials it sends are checked, until the quota
/// refills. Credentials that authenticated recently are still checked, so a client sharing an address (a
/// NAT, a proxy) with a noisy one keeps working.
pub struct FailedAuthLimiter {
    quota: governor::DefaultKeyedRateLimiter<IpAddr>,
    blocked: moka::sync::Cache<IpAddr, Instant>,
    /// sha256 of credentials that authenticated in the last `KNOWN_GOOD_TTL`.
    known_good: moka::sync::Cache<Vec<u8>, ()>,
    failures: std::sync::atomic::AtomicU64,
}

/// How long a credential that authenticated is let past a block on its address.
const KNOWN_GOOD_TTL: Duration = Duration::from_secs(600);

/// The address a failure counts against: IPv6 addresses by their /64.
fn limited_address(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let segments = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(segments[0], segments[1], segments[2], segments[3], 0, 0, 0, 0))
        }
        IpAddr::V6(v6) => IpAddr::V4(v6.to_ipv4_mapped().expect("checked")),
        v4 => v4,
    }
}

fn digest(credential: &str) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(credential.trim().as_bytes()).to_vec()
}

impl FailedAuthLimiter {
    pub fn new(per_second: u32, burst: u32) -> Self {
        let per_second = NonZeroU32::new(per_second.max(1)).expect("at least one");
        let burst = NonZeroU32::new(burst.max(1)).expect("at least one");
        Self {
            quota: governor::RateLimiter::keyed(governor::Quota::per_second(per_second).allow_burst(burst)),
            blocked: moka::sync::Cache::builder().max_capacity(100_000).time_to_live(Duration::from_secs(60)).build(),
            known_good: moka::sync::Cache::builder().max_capacity(100_000).time_to_live(KNOWN_GOOD_TTL).build(),
            failures: Default::default(),
        }
    }

    /// How long the address must wait before it may present `credential`, if it is turned away now.
    pub fn blocked_for(&self, ip: IpAddr, credential: Option<&str>) -> Option<Duration> {
        let until = self.blocked.get(&limited_address(ip))?;
        let wait = until.checked_duration_since(Instant::now())?;
        let known = credential.is_some_and(|c| self.known_good.contains_key(&digest(c)));
        (!known).then_some(wait)
    }

    /// Records a credential that authenticated.
    pub fn succeeded(&self, credential: &str) {
        self.known_good.insert(digest(credential), ());
    }

    /// Records a failed attempt; returns how long the address is now turned away, if it ran out of quota.
    pub fn failed(&self, ip: IpAddr) -> Option<Duration> {
        let address = limited_address(ip);
        // The quota keeps a cell per address it saw: drop the idle ones now and then.
        if self.failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 4096 == 4095 {
            self.quota.retain_recent();
            self.quota.shrink_to_fit();
        }
        let not_until = self.quota.check_key(&address).err()?;
        let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
        self.blocked.insert(address, Instant::now() + wait);
        Some(wait)
    }
}

/// 429 with `Retry-After` for an address that failed authentication too often.
pub fn too_many_failures(wait: Duration) -> Response {
    let error = ToolError {
        code: ErrorCode::ResourceExhausted,
        message: "too many failed authentication attempts from this address; retry later".into(),
    };
    let mut response = error_response(StatusCode::TOO_MANY_REQUESTS, &error);
    if let Ok(value) = header::HeaderValue::from_str(&(wait.as_secs() + 1).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// Splits `host[:port]` (IPv6 in brackets) into the host and an optional port; hosts compare without case.
fn split_authority(authority: &str) -> Option<(&str, Option<u16>)> {
    let authority = authority.trim();
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            // More than one colon without brackets: a bare IPv6 address.
            Some((host, port)) if !host.contains(':') => (host, Some(port)),
            _ => (authority, None),
        }
    };
    let port = match port {
        Some(text) => Some(text.parse::<u16>().ok()?),
        None => None,
    };
    (!host.is_empty()).then_some((host, port))
}

/// Whether the Host header names this server: an entry without a port allows any port.
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let Some((host, port)) = split_authority(host) else { return false };
    allowed
        .iter()
        .filter_map(|entry| split_authority(entry))
        .any(|(name, wanted)| name.eq_ignore_ascii_case(host) && wanted.is_none_or(|wanted| Some(wanted) == port))
}

/// A page this server served under a Host it answers to (the console) calls back to that same origin. Only
/// when `allowed_hosts` is set: then the Host was checked, so a rebound name cannot pass as "same origin".
/// The server itself speaks plain HTTP, so only `http://` counts: behind a TLS proxy the Host is the same
/// for ports 80 and 443, and a page on the plain port must not pass for the TLS one (list the public
/// origin in `server.allowed_origins` there).
fn same_origin(origin: &str, host: &str, allowed_hosts: &[String]) -> bool {
    !allowed_hosts.is_empty()
        && origin.strip_prefix("http://").is_some_and(|authority| authority.eq_ignore_ascii_case(host))
}

/// Whether an Origin (`scheme://host[:port]`) is allowed: entries take the same form, `:*` for any port.
fn origin_allowed(origin: &str, allowed: &[String]) -> bool {
    let parse = |text: &str| -> Option<(String, String)> {
        let (scheme, authority) = text.trim().split_once("://")?;
        Some((scheme.to_ascii_lowercase(), authority.trim_end_matches('/').to_string()))
    };
    let Some((scheme, authority)) = parse(origin) else { return false };
    let Some((host, port)) = split_authority(&authority) else { return false };
    let default_port = match scheme.as_str() {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    };
    allowed.iter().any(|entry| {
        let Some((wanted_scheme, wanted_authority)) = parse(entry) else { return false };
        if wanted_scheme != scheme {
            return false;
        }
        if let Some(wanted_host) = wanted_authority.strip_suffix(":*") {
            return split_authority(wanted_host).is_some_and(|(name, _)| name.eq_ignore_ascii_case(host));
        }
        split_authority(&wanted_authority).is_some_and(|(name, wanted_port)| {
            name.eq_ignore_ascii_case(host) && wanted_port.or(default_port) == port.or(default_port)
        })
    })
}

fn forbidden(message: &str) -> Response {
    error_response(StatusCode::FORBIDDEN, &ToolError { code: ErrorCode::PermissionDenied, message: message.into() })
}

/// The DNS-rebinding and cross-origin checks `/mcp` gets from rmcp, for every other route: the Host must be
/// one of `server.allowed_hosts`, and an Origin, when sent, one of `server.allowed_origins`.
pub async fn check_host_and_origin(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    match refused_host_or_origin(request.headers(), &state) {
        Some(message) => forbidden(message),
        None => next.run(request).await,
    }
}

/// Why the Host or Origin of a request is refused, if it is.
fn refused_host_or_origin(headers: &HeaderMap, state: &HttpState) -> Option<&'static str> {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !host_allowed(host, &state.allowed_hosts) {
        return Some("the Host header names no address this server answers to (server.allowed_hosts)");
    }
    let origin = headers.get(header::ORIGIN)?;
    let allowed = origin.to_str().is_ok_and(|origin| {
        origin_allowed(origin, &state.allowed_origins) || same_origin(origin, host, &state.allowed_hosts)
    });
    (!allowed).then_some("requests from this Origin are not allowed (server.allowed_origins)")
}

/// Whether a request declares a JSON body. A POST body must: a web page cannot send `application/json`
/// across origins without a preflight, so this keeps form posts and `text/plain` beacons out. An empty body
/// (a tool whose arguments are all optional) needs no content type; browsers send an Origin with every
/// cross-origin POST, which the Origin check refuses.
pub fn declares_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// Whether the request declares a JSON body (`declares_json`), read without copying the headers.
pub struct DeclaredJson(pub bool);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for DeclaredJson {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(declares_json(&parts.headers)))
    }
}

/// 415 for a body that is not declared JSON.
pub fn not_json() -> Response {
    let error = ToolError {
        code: ErrorCode::InvalidArgument,
        message: "send the body as JSON with Content-Type: application/json".into(),
    };
    error_response(StatusCode::UNSUPPORTED_MEDIA_TYPE, &error)
}

/// The per-request time limit: past it the request is dropped (which stops what it started, e.g. an analyst
/// query; a write already under way runs to completion) and the caller gets 503 with the stable error body
/// and `Retry-After`.
pub async fn time_limit(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(state.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            let error = ToolError {
                code: ErrorCode::Unavailable,
                message: format!(
                    "the request took longer than {} ms; a write it started still completes, so read before \
                     retrying a write (or pass expected_version)",
                    state.request_timeout.as_millis()
                ),
            };
            error_response(StatusCode::SERVICE_UNAVAILABLE, &error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn hosts_match_by_name_and_optional_port() {
        let allowed = list(&["localhost", "127.0.0.1", "::1", "example.com:8443"]);
        assert!(host_allowed("localhost:8080", &allowed));
        assert!(host_allowed("127.0.0.1", &allowed));
        assert!(host_allowed("[::1]:8080", &allowed));
        assert!(host_allowed("EXAMPLE.com:8443", &allowed));
        assert!(!host_allowed("example.com:80", &allowed));
        assert!(!host_allowed("evil.example:8080", &allowed));
        assert!(!host_allowed("", &allowed));
        assert!(host_allowed("anything", &[]), "an empty list allows every host");
    }

    #[test]
    fn origins_match_scheme_host_and_port() {
        let allowed = list(&["http://localhost:*", "http://127.0.0.1:*", "https://app.example.com"]);
        assert!(origin_allowed("http://localhost:3000", &allowed));
        assert!(origin_allowed("http://127.0.0.1", &allowed));
        assert!(origin_allowed("https://app.example.com", &allowed));
        assert!(origin_allowed("https://app.example.com:443", &allowed));
        assert!(!origin_allowed("https://app.example.com:8443", &allowed));
        assert!(!origin_allowed("https://localhost:3000", &allowed), "the scheme counts");
        assert!(!origin_allowed("http://evil.example", &allowed));
        assert!(!origin_allowed("null", &allowed));
        assert!(!origin_allowed("http://localhost.evil.example:80", &allowed));
    }

    #[test]
    fn a_page_calls_back_to_its_own_checked_origin_only() {
        let hosts = list(&["ctx.internal:8080"]);
        assert!(same_origin("http://ctx.internal:8080", "ctx.internal:8080", &hosts));
        assert!(same_origin("http://CTX.internal:8080", "ctx.internal:8080", &hosts));
        assert!(!same_origin("https://ctx.internal", "ctx.internal", &hosts), "the server's own scheme only");
        assert!(!same_origin("http://ctx.internal:9090", "ctx.internal:8080", &hosts), "another port");
        assert!(!same_origin("null", "ctx.internal:8080", &hosts));
        assert!(!same_origin("file://ctx.internal:8080", "ctx.internal:8080", &hosts));
        assert!(!same_origin("http://evil.example", "evil.example", &[]), "no Host check, no same-origin pass");
    }
}
