//! The check before the first collective: does rank 0's address resolve?
//! A missing Service or a mistyped host would otherwise cost the whole
//! rendezvous timeout and end in "could not reach"; a name that never
//! resolves is reported on its own, naming the host and port, and the
//! process exits with [`ride_contract::PREFLIGHT_EXIT_CODE`]. A name that
//! resolves but does not answer yet is left to the rendezvous, which waits
//! for rank 0 to start listening.

use super::DistError;
use std::net::ToSocketAddrs;
use std::time::{Duration, Instant};

/// Wait up to `timeout` for `host` to resolve, saying every 15 s that it
/// waits (pods come up in any order, so rank 0's DNS record may lag).
pub fn resolve(host: &str, port: u16, timeout: Duration) -> Result<(), DistError> {
    let started = Instant::now();
    let mut said = Duration::ZERO;
    let mut backoff = Duration::from_millis(50);
    loop {
        let last = match (host, port).to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(_)) => return Ok(()),
            Ok(None) => "no addresses".to_string(),
            Err(e) => e.to_string(),
        };
        let waited = started.elapsed();
        if waited >= timeout {
            return Err(DistError::Preflight {
                host: host.into(),
                port,
                waited,
                last,
            });
        }
        if waited >= said + Duration::from_secs(15) {
            said = waited;
            tracing::warn!(
                "preflight: MASTER_ADDR {host} does not resolve yet ({last}); waiting up to {:.0} s more",
                (timeout - waited).as_secs_f64()
            );
        }
        std::thread::sleep(backoff.min(timeout.saturating_sub(waited)));
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_that_resolves_passes_and_one_that_never_does_is_named() {
        resolve("127.0.0.1", 29500, Duration::from_secs(1)).unwrap();
        resolve("localhost", 29500, Duration::from_secs(1)).unwrap();
        // `.invalid` never resolves (RFC 2606).
        let e = resolve(
            "rank0.no-such-service.invalid",
            29511,
            Duration::from_millis(300),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("MASTER_ADDR rank0.no-such-service.invalid (port 29511) does not resolve"),
            "{e}"
        );
        assert!(e.contains("headless Service"), "{e}");
    }
}
