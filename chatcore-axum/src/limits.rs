//! Per-client-address limits on logins and registrations, and finding a request's client
//! address.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ConnectInfo;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::request::Parts;

use crate::error::ApiError;
use crate::openapi::ErrorBody;

/// 429 of the routes these limits guard (register, login), in the API description.
#[derive(utoipa::IntoResponses)]
#[response(
    status = 429,
    description = "Too many attempts from this client address (an IPv6 /64 counts as one)",
    headers(("Retry-After" = u64, description = "Seconds to wait")),
    example = json!({"error": "too many requests, slow down"})
)]
#[allow(dead_code)] // only described: `ApiError::too_many_requests` renders it
pub(crate) struct TooManyAttempts(ErrorBody);

/// Which attempt is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    Login,
    Registration,
}

/// The limits of one authenticator (shared by every router built from it).
pub(crate) struct AddressLimits {
    login: Option<DefaultKeyedRateLimiter<IpAddr>>,
    registration: Option<DefaultKeyedRateLimiter<IpAddr>>,
    behind_proxy: bool,
    /// Checks since the limiters last forgot idle addresses.
    checks: AtomicU64,
}

/// The limiters forget addresses whose allowance is whole again every this many checks, so
/// their memory follows the addresses active lately, not every address ever seen.
const FORGET_EVERY: u64 = 4096;

impl AddressLimits {
    /// `logins_per_minute` and `registrations_per_hour` per address, 0 = off. Each allows
    /// that many at once, then one more every minute (hour) divided by that number.
    pub(crate) fn new(logins_per_minute: u32, registrations_per_hour: u32, behind_proxy: bool) -> Self {
        Self {
            login: NonZeroU32::new(logins_per_minute).map(|n| RateLimiter::keyed(Quota::per_minute(n))),
            registration: NonZeroU32::new(registrations_per_hour)
                .map(|n| RateLimiter::keyed(Quota::per_hour(n))),
            behind_proxy,
            checks: AtomicU64::new(0),
        }
    }

    /// Counts one `attempt` from the request's client: 429 with `Retry-After` past the limit,
    /// 500 (logged, naming the fix) when the limit is on and no client address can be found.
    pub(crate) fn check(&self, attempt: Attempt, parts: &Parts) -> Result<(), ApiError> {
        let limiter = match attempt {
            Attempt::Login => &self.login,
            Attempt::Registration => &self.registration,
        };
        let Some(limiter) = limiter else {
            return Ok(());
        };
        let address = client_address(parts, self.behind_proxy).map_err(|why| {
            tracing::error!(
                ?attempt,
                "{why}; the per-address limits on logins and registrations cannot be applied"
            );
            ApiError::new(http::StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        })?;
        if self.checks.fetch_add(1, Ordering::Relaxed) % FORGET_EVERY == FORGET_EVERY - 1 {
            for limiter in [&self.login, &self.registration].into_iter().flatten() {
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
        }
        limiter.check_key(&limit_key(address)).map_err(|not_until| {
            let wait = not_until.wait_time_from(limiter.clock().now());
            ApiError::too_many_requests(wait.max(Duration::from_secs(1)))
        })
    }
}

/// The client's address: the last `X-Forwarded-For` entry behind a proxy (the one the proxy
/// itself added: earlier entries are whatever the client claimed), else the TCP peer from
/// axum's `ConnectInfo<SocketAddr>`.
pub(crate) fn client_address(parts: &Parts, behind_proxy: bool) -> Result<IpAddr, &'static str> {
    if behind_proxy {
        let last = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .next_back()
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.rsplit(',').next())
            .map(str::trim);
        return last.and_then(parse_forwarded).ok_or(
            "behind_proxy is set but the request has no valid X-Forwarded-For entry: have the \
             proxy append the client's address to X-Forwarded-For, or turn behind_proxy off",
        );
    }
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip())
        .ok_or(
            "the request carries no client address: serve the router with \
             `into_make_service_with_connect_info::<SocketAddr>()` (chatcore_axum::serve does), \
             set SessionConfig::behind_proxy behind a proxy that sets X-Forwarded-For, or turn \
             the limits off (logins_per_minute, registrations_per_hour = 0)",
        )
}

/// An `X-Forwarded-For` entry: an IP address, maybe with a port (`[v6]:port`, `v4:port`).
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| entry.trim_start_matches('[').trim_end_matches(']').parse().ok())
}

/// What is counted: an IPv4 address, or an IPv6 address's /64 (one host usually holds a
/// whole /64, so counting single v6 addresses would count nothing).
fn limit_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(peer: Option<&str>, forwarded: &[&str]) -> Parts {
        let mut builder = http::Request::builder().uri("/api/v1/auth/login");
        for value in forwarded {
            builder = builder.header("x-forwarded-for", *value);
        }
        let mut parts = builder.body(()).unwrap().into_parts().0;
        if let Some(peer) = peer {
            parts
                .extensions
                .insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
        }
        parts
    }

    #[test]
    fn client_addresses() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            client_address(&parts(Some("10.0.0.1:5"), &[]), false),
            Ok(ip("10.0.0.1"))
        );
        // Without the proxy setting, a forwarded header is the client's claim: ignored.
        let claimed = parts(Some("10.0.0.1:5"), &["1.2.3.4"]);
        assert_eq!(client_address(&claimed, false), Ok(ip("10.0.0.1")));
        // Behind a proxy: the last entry of the last header.
        let chain = parts(Some("10.0.0.1:5"), &["6.6.6.6, 1.2.3.4", "5.6.7.8 , 9.9.9.9"]);
        assert_eq!(client_address(&chain, true), Ok(ip("9.9.9.9")));
        let v6 = parts(None, &["[2001:db8::1]:443"]);
        assert_eq!(client_address(&v6, true), Ok(ip("2001:db8::1")));
        assert!(client_address(&parts(Some("10.0.0.1:5"), &[]), true).is_err());
        assert!(client_address(&parts(None, &["not-an-ip"]), true).is_err());
        assert!(client_address(&parts(None, &[]), false).is_err());
        assert_eq!(limit_key(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
        assert_eq!(limit_key(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
    }

    #[test]
    fn limits_per_address() {
        let limits = AddressLimits::new(3, 0, false);
        let from = |peer: &str| parts(Some(peer), &[]);
        for _ in 0..3 {
            assert!(limits.check(Attempt::Login, &from("10.0.0.1:1")).is_ok());
        }
        let refused = limits.check(Attempt::Login, &from("10.0.0.1:2")).unwrap_err();
        assert_eq!(refused.status(), 429);
        assert!(limits.check(Attempt::Login, &from("10.0.0.2:1")).is_ok());
        // Registrations are off; no address at all is a 500 while the limit is on.
        assert!(limits.check(Attempt::Registration, &parts(None, &[])).is_ok());
        assert_eq!(
            limits
                .check(Attempt::Login, &parts(None, &[]))
                .unwrap_err()
                .status(),
            500
        );
    }
}
