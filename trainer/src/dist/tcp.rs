//! The CPU collective backend: a ring of TCP connections (each rank sends to
//! `rank + 1` and receives from `rank - 1`), set up through the rendezvous store.
//!
//! All-reduce is the bandwidth-optimal ring (reduce-scatter, then all-gather):
//! each rank sends and receives `2·(W−1)/W` of the buffer. The reduction order
//! of every element is fixed by the world size, and the all-gather copies the
//! reduced chunks, so every rank ends with bitwise-identical results.

use super::store::{connect_with_retry, StoreClient};
use super::{Collective, DistError};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Receive granularity: received data is reduced segment by segment while the
/// rest is still arriving.
const SEGMENT_BYTES: usize = 1 << 20;
/// Messages this small are written before reading (the kernel buffers them), saving a thread.
const INLINE_SEND_BYTES: usize = 32 << 10;
const HANDSHAKE_MAGIC: u32 = 0x5249_4445; // "RIDE"

struct Ring {
    to_next: TcpStream,
    from_prev: TcpStream,
}

/// The TCP ring backend.
pub struct TcpCollective {
    rank: usize,
    world: usize,
    ring: Option<Mutex<Ring>>,
    scratch: Mutex<Vec<f32>>,
}

impl TcpCollective {
    /// Join the ring: publish this rank's listening address in the store, connect
    /// to the next rank, accept the previous one. `advertise` is the host peers
    /// should use to reach this process.
    pub fn connect(
        store: &StoreClient,
        rank: usize,
        world: usize,
        advertise: &str,
        timeout: Duration,
        op_timeout: Duration,
    ) -> Result<Self, DistError> {
        if world <= 1 {
            return Ok(Self {
                rank,
                world,
                ring: None,
                scratch: Mutex::new(Vec::new()),
            });
        }
        let listener = TcpListener::bind(("0.0.0.0", 0))?;
        let port = listener.local_addr()?.port();
        store.set(
            &format!("tcp/ring/{rank}"),
            format!("{advertise}:{port}").as_bytes(),
        )?;
        let next = (rank + 1) % world;
        let prev = (rank + world - 1) % world;
        let next_addr =
            String::from_utf8_lossy(&store.get(&format!("tcp/ring/{next}"), timeout)?).into_owned();
        let mut to_next =
            connect_with_retry(&next_addr, timeout).map_err(|last| DistError::Unreachable {
                what: format!("rank {next}"),
                addr: next_addr.clone(),
                waited: timeout,
                last,
            })?;
        let mut hello = HANDSHAKE_MAGIC.to_le_bytes().to_vec();
        hello.extend_from_slice(&(rank as u32).to_le_bytes());
        to_next.write_all(&hello)?;
        let from_prev = accept_rank(&listener, prev, timeout)?;
        for s in [&to_next, &from_prev] {
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(op_timeout))?;
            s.set_write_timeout(Some(op_timeout))?;
        }
        Ok(Self {
            rank,
            world,
            ring: Some(Mutex::new(Ring { to_next, from_prev })),
            scratch: Mutex::new(Vec::new()),
        })
    }

    fn prev(&self) -> usize {
        (self.rank + self.world - 1) % self.world
    }

    fn next(&self) -> usize {
        (self.rank + 1) % self.world
    }

    fn peer_err(&self, e: std::io::Error, sending: bool) -> DistError {
        let peer = if sending { self.next() } else { self.prev() };
        DistError::Peer {
            rank: self.rank,
            peer,
            message: e.to_string(),
        }
    }

    fn ring(&self) -> Option<std::sync::MutexGuard<'_, Ring>> {
        self.ring
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

fn accept_rank(
    listener: &TcpListener,
    want: usize,
    timeout: Duration,
) -> Result<TcpStream, DistError> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                let mut hello = [0u8; 8];
                if s.read_exact(&mut hello).is_ok()
                    && u32::from_le_bytes([hello[0], hello[1], hello[2], hello[3]])
                        == HANDSHAKE_MAGIC
                    && u32::from_le_bytes([hello[4], hello[5], hello[6], hello[7]]) as usize == want
                {
                    return Ok(s);
                }
                // Not our predecessor (a stray or stale connection): keep waiting.
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(DistError::Timeout {
                        what: format!("rank {want} to connect"),
                        waited: timeout,
                    });
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Send `out` to the next rank while `receive` reads from the previous one.
fn exchange<R>(
    ring: &mut Ring,
    out: &[&[u8]],
    receive: impl FnOnce(&mut TcpStream) -> std::io::Result<R>,
) -> (std::io::Result<()>, std::io::Result<R>) {
    let total: usize = out.iter().map(|b| b.len()).sum();
    let Ring { to_next, from_prev } = ring;
    if total <= INLINE_SEND_BYTES {
        let sent = out.iter().try_for_each(|b| to_next.write_all(b));
        if sent.is_err() {
            return (sent, Err(std::io::Error::other("send failed")));
        }
        return (sent, receive(from_prev));
    }
    std::thread::scope(|s| {
        let sender = s.spawn(|| out.iter().try_for_each(|b| to_next.write_all(b)));
        let received = receive(from_prev);
        let sent = sender
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("sender thread panicked")));
        (sent, received)
    })
}

fn chunk_range(n: usize, world: usize, i: usize) -> std::ops::Range<usize> {
    (n * i / world)..(n * (i + 1) / world)
}

/// Borrow chunk `a` immutably and chunk `b` mutably from one buffer (disjoint ranges).
fn split_two(
    data: &mut [f32],
    a: std::ops::Range<usize>,
    b: std::ops::Range<usize>,
) -> (&[f32], &mut [f32]) {
    if a.end <= b.start {
        let (lo, hi) = data.split_at_mut(b.start);
        (&lo[a], &mut hi[..b.len()])
    } else {
        let (lo, hi) = data.split_at_mut(a.start);
        (&hi[..a.len()], &mut lo[b])
    }
}

impl Collective for TcpCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn backend(&self) -> &'static str {
        "tcp"
    }

    fn all_reduce_sum_f32(&self, data: &mut [f32]) -> Result<(), DistError> {
        let Some(mut ring) = self.ring() else {
            return Ok(());
        };
        let (w, r, n) = (self.world, self.rank, data.len());
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let seg = SEGMENT_BYTES / 4;
        if scratch.len() < seg {
            scratch.resize(seg, 0.0);
        }
        // Reduce-scatter: after W-1 steps rank r holds the full sum of chunk r+1.
        for s in 0..w - 1 {
            let send = chunk_range(n, w, (r + w - s) % w);
            let recv = chunk_range(n, w, (r + 2 * w - s - 1) % w);
            let (out, acc) = split_two(data, send, recv);
            let out = bytemuck::cast_slice::<f32, u8>(out);
            let tmp = &mut scratch[..];
            let (sent, got) = exchange(&mut ring, &[out], |from| {
                for part in acc.chunks_mut(seg) {
                    let buf = &mut tmp[..part.len()];
                    from.read_exact(bytemuck::cast_slice_mut(buf))?;
                    for (a, b) in part.iter_mut().zip(buf.iter()) {
                        *a += *b;
                    }
                }
                Ok(())
            });
            sent.map_err(|e| self.peer_err(e, true))?;
            got.map_err(|e| self.peer_err(e, false))?;
        }
        // All-gather the reduced chunks.
        for s in 0..w - 1 {
            let send = chunk_range(n, w, (r + 1 + w - s) % w);
            let recv = chunk_range(n, w, (r + w - s) % w);
            let (out, into) = split_two(data, send, recv);
            let out = bytemuck::cast_slice::<f32, u8>(out);
            let (sent, got) = exchange(&mut ring, &[out], |from| {
                from.read_exact(bytemuck::cast_slice_mut(into))
            });
            sent.map_err(|e| self.peer_err(e, true))?;
            got.map_err(|e| self.peer_err(e, false))?;
        }
        Ok(())
    }

    fn broadcast_bytes(&self, data: &mut Vec<u8>, root: usize) -> Result<(), DistError> {
        let Some(mut ring) = self.ring() else {
            return Ok(());
        };
        let forward = self.next() != root;
        let Ring { to_next, from_prev } = &mut *ring;
        if self.rank == root {
            to_next
                .write_all(&(data.len() as u64).to_le_bytes())
                .and_then(|_| to_next.write_all(data))
                .map_err(|e| self.peer_err(e, true))?;
            return Ok(());
        }
        let mut len = [0u8; 8];
        from_prev
            .read_exact(&mut len)
            .map_err(|e| self.peer_err(e, false))?;
        if forward {
            to_next
                .write_all(&len)
                .map_err(|e| self.peer_err(e, true))?;
        }
        let len = u64::from_le_bytes(len) as usize;
        data.clear();
        data.resize(len, 0);
        // Forward segment by segment so the ring streams rather than hops.
        for part in data.chunks_mut(SEGMENT_BYTES) {
            from_prev
                .read_exact(part)
                .map_err(|e| self.peer_err(e, false))?;
            if forward {
                to_next
                    .write_all(part)
                    .map_err(|e| self.peer_err(e, true))?;
            }
        }
        Ok(())
    }

    fn all_gather_bytes(&self, data: &[u8]) -> Result<Vec<Vec<u8>>, DistError> {
        let mut pieces = vec![Vec::new(); self.world];
        pieces[self.rank] = data.to_vec();
        let Some(mut ring) = self.ring() else {
            return Ok(pieces);
        };
        let (w, r) = (self.world, self.rank);
        for s in 0..w - 1 {
            let send = (r + w - s) % w;
            let recv = (r + 2 * w - s - 1) % w;
            let len = (pieces[send].len() as u64).to_le_bytes();
            let (sent, got) = exchange(&mut ring, &[&len, &pieces[send]], |from| {
                let mut l = [0u8; 8];
                from.read_exact(&mut l)?;
                let mut v = vec![0u8; u64::from_le_bytes(l) as usize];
                from.read_exact(&mut v)?;
                Ok(v)
            });
            sent.map_err(|e| self.peer_err(e, true))?;
            pieces[recv] = got.map_err(|e| self.peer_err(e, false))?;
        }
        Ok(pieces)
    }

    fn barrier(&self) -> Result<(), DistError> {
        self.all_gather_bytes(&[]).map(|_| ())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::store::StoreServer;
    use super::*;
    use std::sync::Arc;

    /// Run `f(collective)` on `world` ranks (threads) joined through a real store.
    pub(crate) fn on_ranks<T: Send + 'static>(
        world: usize,
        f: impl Fn(TcpCollective) -> T + Send + Sync + 'static,
    ) -> Vec<T> {
        let server = StoreServer::start(TcpListener::bind("127.0.0.1:0").unwrap()).unwrap();
        let port = server.port();
        let f = Arc::new(f);
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                let f = f.clone();
                std::thread::spawn(move || {
                    let t = Duration::from_secs(20);
                    let store = StoreClient::connect("127.0.0.1", port, t).unwrap();
                    let c = TcpCollective::connect(&store, rank, world, "127.0.0.1", t, t).unwrap();
                    f(c)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn all_reduce_sums_exactly_for_many_sizes_and_worlds() {
        for world in [2, 3, 4] {
            for n in [0usize, 1, 5, 1000, 300_001] {
                let out = on_ranks(world, move |c| {
                    let r = c.rank() as f32;
                    let mut v: Vec<f32> = (0..n).map(|i| (i % 97) as f32 + r).collect();
                    c.all_reduce_sum_f32(&mut v).unwrap();
                    v
                });
                let offset: f32 = (0..world).map(|r| r as f32).sum();
                for v in &out {
                    assert_eq!(v.len(), n);
                    for (i, x) in v.iter().enumerate() {
                        assert_eq!(
                            *x,
                            (i % 97) as f32 * world as f32 + offset,
                            "world {world} n {n} i {i}"
                        );
                    }
                }
                // Every rank holds the same bits.
                assert!(out.iter().all(|v| v == &out[0]));
            }
        }
    }

    #[test]
    fn broadcast_and_all_gather_move_bytes() {
        let out = on_ranks(3, |c| {
            let mut b = if c.rank() == 1 {
                vec![7u8; 3 << 20]
            } else {
                vec![1, 2, 3]
            };
            c.broadcast_bytes(&mut b, 1).unwrap();
            let g = c.all_gather_bytes(&[c.rank() as u8; 2]).unwrap();
            c.barrier().unwrap();
            (b, g)
        });
        for (b, g) in out {
            assert_eq!(b, vec![7u8; 3 << 20]);
            assert_eq!(g, vec![vec![0u8, 0], vec![1, 1], vec![2, 2]]);
        }
    }

    #[test]
    fn a_dead_peer_is_an_error_naming_it() {
        let out = on_ranks(2, |c| {
            if c.rank() == 1 {
                drop(c);
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
            let mut v = vec![1.0f32; 100_000];
            Some(c.all_reduce_sum_f32(&mut v).unwrap_err().to_string())
        });
        let msg = out[0].clone().unwrap();
        assert!(msg.contains("rank 1"), "{msg}");
    }
}
