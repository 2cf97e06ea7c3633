//! A running training's progress, from its rank 0: the trainer's JSON
//! report (`ride_contract::Progress`) on its metrics port at
//! `http://<pod IP>:9400/progress`, fetched with a short timeout. When the
//! run ends, the same report arrives as rank 0's termination message in pod
//! status (see `observe.rs`).
//!
//! The operator never opens the tenant's checkpoint storage: it holds no
//! user credentials and takes no user-supplied client settings, so a
//! RideTraining cannot make the operator's process call an address of the
//! tenant's choosing with the operator's identity. The only request it
//! makes on a training's behalf is this unauthenticated GET of a fixed path
//! and port on the IP the kubelet reported for the pod it created, with a
//! bounded response.

use ride_contract::{Progress, PROGRESS_PATH};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest response accepted (a report is well under 1 KiB).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Why the report could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ProgressError {
    /// No answer within the timeout.
    #[error("no answer from {0} within {1:?}")]
    Timeout(SocketAddr, Duration),
    /// Connecting, writing or reading failed.
    #[error("{0}: {1}")]
    Io(SocketAddr, std::io::Error),
    /// Not an HTTP 200 with a body.
    #[error("{0}: unexpected response: {1}")]
    Http(SocketAddr, String),
    /// The body is not a progress report.
    #[error("{0}: not a progress report: {1}")]
    Report(SocketAddr, serde_json::Error),
}

/// GET the progress report of the trainer at `ip:port`.
pub async fn fetch(ip: IpAddr, port: u16, timeout: Duration) -> Result<Progress, ProgressError> {
    let addr = SocketAddr::new(ip, port);
    match tokio::time::timeout(timeout, get(addr)).await {
        Ok(r) => r,
        Err(_) => Err(ProgressError::Timeout(addr, timeout)),
    }
}

async fn get(addr: SocketAddr) -> Result<Progress, ProgressError> {
    let io = |e| ProgressError::Io(addr, e);
    let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(io)?;
    let request =
        format!("GET {PROGRESS_PATH} HTTP/1.0\r\nHost: {addr}\r\nAccept: application/json\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut buf = Vec::new();
    (&mut stream)
        .take(MAX_RESPONSE_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .await
        .map_err(io)?;
    if buf.len() > MAX_RESPONSE_BYTES {
        return Err(ProgressError::Http(
            addr,
            format!("more than {MAX_RESPONSE_BYTES} bytes"),
        ));
    }
    parse_response(&buf).map_err(|e| match e {
        ResponseError::Http(m) => ProgressError::Http(addr, m),
        ResponseError::Json(e) => ProgressError::Report(addr, e),
    })
}

enum ResponseError {
    Http(String),
    Json(serde_json::Error),
}

/// The report in an HTTP/1.x response.
fn parse_response(buf: &[u8]) -> Result<Progress, ResponseError> {
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| ResponseError::Http("no header end".into()))?;
    let head = String::from_utf8_lossy(&buf[..split]);
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(ResponseError::Http(status.chars().take(100).collect()));
    }
    Progress::parse(&buf[split + 4..]).map_err(ResponseError::Json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_parsed_or_refused() {
        let ok =
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"step\":7,\"epoch\":1}";
        let p = parse_response(ok).ok().unwrap();
        assert_eq!((p.step, p.epoch), (7, 1));
        assert!(matches!(
            parse_response(b"HTTP/1.1 404 Not Found\r\n\r\nnope"),
            Err(ResponseError::Http(m)) if m.contains("404")
        ));
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\n\r\n<html>"),
            Err(ResponseError::Json(_))
        ));
        assert!(matches!(
            parse_response(b"garbage"),
            Err(ResponseError::Http(_))
        ));
    }

    #[tokio::test]
    async fn a_silent_peer_times_out_and_a_huge_answer_is_refused() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let t = Duration::from_millis(200);
        let hold = tokio::spawn(async move {
            let (_s, _) = silent.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        assert!(matches!(
            fetch(addr.ip(), addr.port(), t).await,
            Err(ProgressError::Timeout(..))
        ));
        hold.abort();

        let huge = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = huge.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = huge.accept().await.unwrap();
            let mut req = [0u8; 256];
            let _ = s.read(&mut req).await;
            let body = vec![b' '; MAX_RESPONSE_BYTES * 2];
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\n").await;
            let _ = s.write_all(&body).await;
        });
        assert!(matches!(
            fetch(addr.ip(), addr.port(), Duration::from_secs(5)).await,
            Err(ProgressError::Http(_, m)) if m.contains("more than")
        ));
    }
}
