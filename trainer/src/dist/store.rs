//! The rendezvous store: a small key-value server that rank 0 hosts over TCP
//! and every rank (rank 0 included) uses to publish and wait for values.
//!
//! Wire format, one request at a time per connection: `op: u8`, `key_len: u32`,
//! `key`, then for SET `len: u64` + value, for GET `timeout_ms: u64`, for ADD
//! `delta: i64`. Replies: SET → `0u8`; GET → `status: u8` (0 found, 1 timed out)
//! + `len: u64` + value; ADD → the new `i64`.

use super::DistError;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const OP_SET: u8 = 1;
const OP_GET: u8 = 2;
const OP_ADD: u8 = 3;

#[derive(Default)]
struct Shared {
    map: Mutex<HashMap<String, Vec<u8>>>,
    changed: Condvar,
}

/// Rank 0's store server; runs on background threads for the life of the process.
pub struct StoreServer {
    port: u16,
}

impl StoreServer {
    /// Serve on `listener` (bound by the caller so the port is known before peers connect).
    pub fn start(listener: TcpListener) -> Result<Self, DistError> {
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared::default());
        std::thread::Builder::new()
            .name("ride-store".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { continue };
                    let shared = shared.clone();
                    let _ = std::thread::Builder::new()
                        .name("ride-store-conn".into())
                        .spawn(move || {
                            // A peer that goes away just ends its connection.
                            let _ = serve_connection(conn, &shared);
                        });
                }
            })?;
        Ok(Self { port })
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }
}

fn serve_connection(mut conn: TcpStream, shared: &Shared) -> std::io::Result<()> {
    conn.set_nodelay(true)?;
    loop {
        let mut op = [0u8; 1];
        if conn.read(&mut op)? == 0 {
            return Ok(());
        }
        let key = read_string(&mut conn)?;
        match op[0] {
            OP_SET => {
                let value = read_blob(&mut conn)?;
                let mut map = shared.map.lock().unwrap_or_else(|e| e.into_inner());
                map.insert(key, value);
                shared.changed.notify_all();
                drop(map);
                conn.write_all(&[0])?;
            }
            OP_GET => {
                let timeout = Duration::from_millis(read_u64(&mut conn)?);
                let deadline = Instant::now() + timeout;
                let mut map = shared.map.lock().unwrap_or_else(|e| e.into_inner());
                let found = loop {
                    if let Some(v) = map.get(&key) {
                        break Some(v.clone());
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        break None;
                    }
                    map = shared
                        .changed
                        .wait_timeout(map, deadline - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                };
                drop(map);
                let mut reply = Vec::new();
                match found {
                    Some(v) => {
                        reply.push(0);
                        reply.extend_from_slice(&(v.len() as u64).to_le_bytes());
                        reply.extend_from_slice(&v);
                    }
                    None => {
                        reply.push(1);
                        reply.extend_from_slice(&0u64.to_le_bytes());
                    }
                }
                conn.write_all(&reply)?;
            }
            OP_ADD => {
                let delta = read_u64(&mut conn)? as i64;
                let mut map = shared.map.lock().unwrap_or_else(|e| e.into_inner());
                let current = map
                    .get(&key)
                    .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                    .map(i64::from_le_bytes)
                    .unwrap_or(0);
                let new = current + delta;
                map.insert(key, new.to_le_bytes().to_vec());
                shared.changed.notify_all();
                drop(map);
                conn.write_all(&new.to_le_bytes())?;
            }
            other => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("unknown store op {other}"),
                ))
            }
        }
    }
}

/// A connection to the store.
pub struct StoreClient {
    conn: Mutex<TcpStream>,
    addr: String,
}

impl StoreClient {
    /// Connect to `host:port`, retrying while the name does not resolve or
    /// nothing accepts yet (pods come up in any order), for at most `timeout`.
    pub fn connect(host: &str, port: u16, timeout: Duration) -> Result<Self, DistError> {
        let addr = format!("{host}:{port}");
        let conn = connect_with_retry(&addr, timeout).map_err(|last| DistError::Unreachable {
            what: "rank 0's rendezvous store".into(),
            addr: addr.clone(),
            waited: timeout,
            last,
        })?;
        Ok(Self {
            conn: Mutex::new(conn),
            addr,
        })
    }

    /// The local address of the connection: the interface that reaches rank 0,
    /// which is the address peers can reach this process at.
    pub fn local_ip(&self) -> Result<std::net::IpAddr, DistError> {
        Ok(self.lock().local_addr()?.ip())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TcpStream> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn io_err(&self, e: std::io::Error) -> DistError {
        DistError::Store {
            addr: self.addr.clone(),
            message: e.to_string(),
        }
    }

    /// Set `key` to `value`.
    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), DistError> {
        let mut req = header(OP_SET, key);
        req.extend_from_slice(&(value.len() as u64).to_le_bytes());
        req.extend_from_slice(value);
        let mut conn = self.lock();
        let mut ack = [0u8; 1];
        conn.write_all(&req)
            .and_then(|_| conn.read_exact(&mut ack))
            .map_err(|e| self.io_err(e))
    }

    /// Wait up to `timeout` for `key` and return its value.
    pub fn get(&self, key: &str, timeout: Duration) -> Result<Vec<u8>, DistError> {
        let mut req = header(OP_GET, key);
        req.extend_from_slice(&(timeout.as_millis() as u64).to_le_bytes());
        let mut conn = self.lock();
        let result = (|| {
            conn.write_all(&req)?;
            let mut status = [0u8; 1];
            conn.read_exact(&mut status)?;
            let value = read_blob(&mut *conn)?;
            Ok::<_, std::io::Error>((status[0], value))
        })();
        match result.map_err(|e| self.io_err(e))? {
            (0, v) => Ok(v),
            _ => Err(DistError::Timeout {
                what: format!("key '{key}' in the rendezvous store"),
                waited: timeout,
            }),
        }
    }

    /// Add `delta` to the integer at `key` (0 when absent); returns the new value.
    pub fn add(&self, key: &str, delta: i64) -> Result<i64, DistError> {
        let mut req = header(OP_ADD, key);
        req.extend_from_slice(&delta.to_le_bytes());
        let mut conn = self.lock();
        let mut out = [0u8; 8];
        conn.write_all(&req)
            .and_then(|_| conn.read_exact(&mut out))
            .map_err(|e| self.io_err(e))?;
        Ok(i64::from_le_bytes(out))
    }
}

/// Connect to `addr`, retrying resolution and connection failures until `timeout`;
/// on failure returns the last error seen.
pub fn connect_with_retry(addr: &str, timeout: Duration) -> Result<TcpStream, String> {
    let deadline = Instant::now() + timeout;
    let mut backoff = Duration::from_millis(50);
    loop {
        let attempt = addr
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve: {e}"))
            .and_then(|addrs| {
                let mut last = String::from("no addresses");
                for a in addrs {
                    match TcpStream::connect_timeout(&a, Duration::from_secs(5)) {
                        Ok(s) => return Ok(s),
                        Err(e) => last = format!("{a}: {e}"),
                    }
                }
                Err(last)
            });
        match attempt {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) if Instant::now() + backoff >= deadline => return Err(e),
            Err(_) => {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

fn header(op: u8, key: &str) -> Vec<u8> {
    let mut v = vec![op];
    v.extend_from_slice(&(key.len() as u32).to_le_bytes());
    v.extend_from_slice(key.as_bytes());
    v
}

fn read_u64(r: &mut impl Read) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn read_string(r: &mut impl Read) -> std::io::Result<String> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    let mut s = vec![0u8; u32::from_le_bytes(b) as usize];
    r.read_exact(&mut s)?;
    String::from_utf8(s).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

fn read_blob(r: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let len = read_u64(r)? as usize;
    let mut v = vec![0u8; len];
    r.read_exact(&mut v)?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> StoreServer {
        StoreServer::start(TcpListener::bind("127.0.0.1:0").unwrap()).unwrap()
    }

    #[test]
    fn set_get_add_across_clients() {
        let s = server();
        let a = StoreClient::connect("127.0.0.1", s.port(), Duration::from_secs(5)).unwrap();
        let b = StoreClient::connect("127.0.0.1", s.port(), Duration::from_secs(5)).unwrap();
        let waiter = std::thread::spawn(move || b.get("k", Duration::from_secs(10)).unwrap());
        std::thread::sleep(Duration::from_millis(50));
        a.set("k", b"value").unwrap();
        assert_eq!(waiter.join().unwrap(), b"value");
        assert_eq!(a.add("n", 2).unwrap(), 2);
        assert_eq!(a.add("n", 3).unwrap(), 5);
    }

    #[test]
    fn get_times_out_with_the_key_named() {
        let s = server();
        let a = StoreClient::connect("127.0.0.1", s.port(), Duration::from_secs(5)).unwrap();
        let e = a.get("missing", Duration::from_millis(100)).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }

    #[test]
    fn clients_wait_for_a_late_server() {
        // Reserve a port, release it, and start the server only after the client began retrying.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            StoreServer::start(TcpListener::bind(("127.0.0.1", port)).unwrap()).unwrap()
        });
        let c = StoreClient::connect("127.0.0.1", port, Duration::from_secs(10)).unwrap();
        let _server = late.join().unwrap();
        c.set("x", b"1").unwrap();
        assert_eq!(c.get("x", Duration::from_secs(1)).unwrap(), b"1");
    }

    #[test]
    fn unreachable_store_fails_with_a_clear_message() {
        let e = StoreClient::connect("no-such-host.invalid", 1, Duration::from_millis(300))
            .err()
            .unwrap();
        let msg = e.to_string();
        assert!(msg.contains("no-such-host.invalid:1"), "{msg}");
        assert!(msg.contains("MASTER_ADDR"), "{msg}");
    }
}
