//! Idle upstream connections of the HTTP/1 engine: a small stack per worker thread.
//!
//! Connections are made by Pingora's `TransportConnector` (L4, socket options, timeouts); only
//! keeping them idle is done here. Pingora's pool wraps each idle connection in an
//! `Arc<Mutex<_>>`, puts it in a sharded map and an LRU, and spawns a task per release to watch
//! it: measured with callgrind, about 8k instructions per request, a third of nginx's whole
//! request. nginx keeps idle upstream connections in a per-worker queue; this does the same. A
//! worker thread only touches its own stack, so there is no lock; a task that moved to another
//! thread uses that thread's stack.
//!
//! Nothing watches an idle connection. One the backend closed, or that has unexpected bytes, is
//! found when it is taken (a non-blocking read that must find nothing: tokio answers it from the
//! readiness state, without a system call, when no event arrived) and dropped. Connections idle
//! past their timeout are dropped when found, and by a sweep at most once a second per thread.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::FutureExt;
use pingora_core::protocols::Stream;
use tokio::io::AsyncReadExt;

/// How often a thread's stack is swept for expired and closed connections.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

struct Idle {
    addr: SocketAddr,
    stream: Stream,
    /// When its idle timeout ends.
    expires: Instant,
}

struct Stack {
    idle: Vec<Idle>,
    swept: Instant,
}

thread_local! {
    static STACK: RefCell<Stack> = RefCell::new(Stack {
        idle: Vec::new(),
        swept: Instant::now(),
    });
}

/// Whether an idle connection may carry a request: nothing to read, no EOF, no error.
fn usable(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    tokio::task::unconstrained(stream.read(&mut byte))
        .now_or_never()
        .is_none()
}

/// Takes an idle connection to `addr`, most recently used first; `now` is the caller's clock
/// reading. Must be called from within the runtime (the readiness check polls the socket).
pub fn take(addr: SocketAddr, now: Instant) -> Option<Stream> {
    STACK.with(|s| {
        let mut s = s.borrow_mut();
        while let Some(i) = s.idle.iter().rposition(|c| c.addr == addr) {
            let mut c = s.idle.remove(i);
            if now < c.expires && usable(&mut c.stream) {
                return Some(c.stream);
            }
        }
        None
    })
}

/// Keeps a connection whose last response was complete, with nothing read past it, for reuse
/// within `timeout` of `now` (the caller's last clock reading, at most a request old). Beyond
/// `capacity` idle connections on this thread, the oldest is closed.
pub fn put(addr: SocketAddr, stream: Stream, now: Instant, timeout: Duration, capacity: usize) {
    STACK.with(|s| {
        let mut s = s.borrow_mut();
        if now.duration_since(s.swept) >= SWEEP_EVERY {
            s.swept = now;
            s.idle
                .retain_mut(|c| now < c.expires && usable(&mut c.stream));
        }
        if s.idle.len() >= capacity.max(1) {
            s.idle.remove(0);
        }
        s.idle.push(Idle {
            addr,
            stream,
            expires: now + timeout,
        });
    });
}
