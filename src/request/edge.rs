//! The client connection: a total deadline for each HTTP/1 request header.
//!
//! Pingora bounds each read of a request header (60 s), not the whole header, so a client that
//! sends one byte every 59 s holds a connection and a task forever (slowloris). Pingora has no
//! hook before the header is parsed, so the deadline lives in the transport: [`Edge`] wraps every
//! accepted HTTP/1 stream in a [`HeaderDeadline`] before Pingora's HTTP code sees it.
//!
//! The deadline starts at the first byte of a request and covers the rest of its header, like
//! nginx's `client_header_timeout`; the wait for that first byte is the keep-alive timeout's. The
//! proxy marks the end of the header when its first filter runs ([`header_received`]) and the
//! start of the next wait when the request is logged ([`request_finished`]).

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::{SslDigest, TlsRef};
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora_core::server::ShutdownWatch;
use prometheus::IntCounter;

use crate::request::proxy_protocol;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Waiting for the first byte of a request (the keep-alive timeout applies).
const IDLE: u8 = 0;
/// Reading a request header: the deadline runs.
const HEADER: u8 = 1;
/// The header was parsed; the body and the response follow (their own timeouts apply).
const BODY: u8 = 2;

/// A client stream whose request headers must arrive within `timeout` of their first byte.
pub struct HeaderDeadline {
    inner: Stream,
    /// Bytes already read from `inner` by Portico's HTTP/1 engine, read again first.
    prefix: Bytes,
    timeout: Duration,
    /// `IDLE`, `HEADER` or `BODY`; the proxy moves it across phases through a shared reference.
    phase: AtomicU8,
    /// When the current header must be complete (meaningful in `HEADER`).
    deadline: Instant,
    /// Armed only when a header read has to wait, so that a header arriving in one read (nearly
    /// all of them) costs no timer.
    timer: Option<Pin<Box<Sleep>>>,
    expired: IntCounter,
}

impl HeaderDeadline {
    pub fn new(inner: Stream, timeout: Duration, expired: IntCounter) -> Self {
        Self::with_prefix(inner, Bytes::new(), timeout, expired)
    }

    /// A stream whose reads return `prefix` first: how the HTTP/1 engine hands a connection to
    /// Pingora's proxy after reading a request that Pingora's engine serves.
    pub fn with_prefix(
        inner: Stream,
        prefix: Bytes,
        timeout: Duration,
        expired: IntCounter,
    ) -> Self {
        Self {
            inner,
            prefix,
            timeout,
            phase: AtomicU8::new(IDLE),
            deadline: Instant::now(),
            timer: None,
            expired,
        }
    }

    fn poll_read_header(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if Instant::now() >= self.deadline {
            return self.expire();
        }
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        if read.is_ready() {
            return read;
        }
        let deadline = self.deadline;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => self.expire(),
            Poll::Pending => Poll::Pending,
        }
    }

    fn expire(&self) -> Poll<io::Result<()>> {
        self.expired.inc();
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("request header not complete within {:?}", self.timeout),
        )))
    }
}

/// Marks the end of the current request header on `stream`, if it carries a deadline.
pub fn header_received(stream: &Stream) {
    set_phase(stream, BODY);
}

/// Marks the end of the current request on `stream`: the next byte starts a new header.
pub fn request_finished(stream: &Stream) {
    set_phase(stream, IDLE);
}

fn set_phase(stream: &Stream, phase: u8) {
    if let Some(d) = (**stream).as_any().downcast_ref::<HeaderDeadline>() {
        d.phase.store(phase, Ordering::Release);
    }
}

impl AsyncRead for HeaderDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.prefix.is_empty() {
            // The replayed bytes start a request: its header deadline runs from now.
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            if this.phase.load(Ordering::Acquire) == IDLE {
                this.deadline = Instant::now() + this.timeout;
                this.phase.store(HEADER, Ordering::Release);
            }
            return Poll::Ready(Ok(()));
        }
        let phase = this.phase.load(Ordering::Acquire);
        if phase == HEADER {
            return this.poll_read_header(cx, buf);
        }
        let filled = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if phase == IDLE && buf.filled().len() > filled {
            // The first bytes of a request: its header must be complete by the deadline.
            this.deadline = Instant::now() + this.timeout;
            let _ = this
                .phase
                .compare_exchange(IDLE, HEADER, Ordering::AcqRel, Ordering::Acquire);
        }
        read
    }
}

impl AsyncWrite for HeaderDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for HeaderDeadline {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for HeaderDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeaderDeadline {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeaderDeadline {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeaderDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for HeaderDeadline {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for HeaderDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

impl fmt::Debug for HeaderDeadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeaderDeadline")
            .field("inner", &self.inner)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The listeners' application. HTTP/2 connections go to Pingora's proxy unchanged: their framing
/// has its own limits, and one connection carries many requests. HTTP/1 connections go to
/// Portico's engine when it is on (it keeps its own header deadline, and hands Pingora what it
/// does not take); otherwise to Pingora's proxy inside a [`HeaderDeadline`].
pub struct Edge<A> {
    pub app: Arc<A>,
    pub h1: Option<Arc<crate::request::h1::Engine>>,
    pub header_timeout: Duration,
    pub expired: IntCounter,
    /// The snapshot holder, for the PROXY protocol setting of each new connection.
    pub shared: Arc<crate::dataplane::Shared>,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Edge<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if stream.selected_alpn_proto() == Some(ALPN::H2) {
            return self.app.process_new(stream, shutdown).await;
        }
        if self.h1.is_some() {
            // The connection gets a task of its own, sized for Portico's engine, and Pingora's
            // accept task ends here: that task is sized for the largest state of Pingora's
            // accept future (a TLS handshake), and would hold that size for the connection's
            // whole life.
            tokio::spawn(self.clone().connection(stream, shutdown.clone()));
            return None;
        }
        let (stream, prefix) = self.proxy_header(stream).await?;
        let stream = Box::new(HeaderDeadline::with_prefix(
            stream,
            prefix.freeze(),
            self.header_timeout,
            self.expired.clone(),
        ));
        self.app.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.app.cleanup().await
    }
}

impl<A: ServerApp + Send + Sync + 'static> Edge<A> {
    /// The task of an HTTP/1 connection in Portico's engine: what it holds while the connection
    /// is idle is the size of this future (see the test below) and the stream.
    async fn connection(self: Arc<Self>, stream: Stream, shutdown: ShutdownWatch) {
        let mut next = self.serve_h1(stream, &shutdown).await;
        // As Pingora's accept task does with a connection handed back.
        while let Some(stream) = next {
            next = self.process_new(stream, &shutdown).await;
        }
    }

    async fn serve_h1(&self, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let (stream, prefix) = self.proxy_header(stream).await?;
        let h1 = self.h1.as_ref()?;
        h1.serve_with(stream, prefix, shutdown).await
    }

    /// Reads a plain-text connection's PROXY protocol header, when PROXY protocol is on; returns
    /// the stream and the bytes read past the header. `None` when the header was refused.
    async fn proxy_header(&self, stream: Stream) -> Option<(Stream, bytes::BytesMut)> {
        let mut stream = stream;
        let mut prefix = bytes::BytesMut::new();
        // A TLS connection's PROXY header was read before its handshake.
        if stream.get_ssl().is_none() {
            if let Some(limit) = proxy_protocol::wanted(&self.shared) {
                match proxy_protocol::read_header(&mut stream, limit).await {
                    Ok((addr, rest)) => {
                        if let Some(addr) = addr {
                            proxy_protocol::set_peer(&mut *stream, addr);
                        }
                        prefix = rest;
                    }
                    Err(e) => {
                        proxy_protocol::refused(&self.shared, e);
                        return None;
                    }
                }
            }
        }
        Some((stream, prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::pingora::PingoraApp;

    /// The size of what `f` returns, without calling it: for a future, the size of its state,
    /// which its task holds whatever state it is in.
    fn returned_size<A, R>(_: impl FnOnce(A) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// An idle HTTP/1 connection holds its task (this future and tokio's task header), the
    /// stream and the engine's two timers: issue 11's budget is 4 KiB for all of it. The future
    /// was 1,096 bytes (the task of Pingora's accept loop, which held connections before: 8,832).
    /// Checked in the test profile too (the same size there).
    #[test]
    fn connection_task_is_small() {
        type App = pingora_proxy::HttpProxy<PingoraApp>;
        let task = returned_size(|(e, s, sh): (Arc<Edge<App>>, Stream, ShutdownWatch)| {
            e.connection(s, sh)
        });
        assert!(task <= 1152, "the connection task's future is {task} bytes");
    }
}
