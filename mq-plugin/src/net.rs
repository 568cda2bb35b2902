//! A non-blocking TCP stream on the worker's event loop, implementing the
//! `futures` crate's `AsyncRead` and `AsyncWrite` (through `futures-io`),
//! so sans-io codecs and runtime-agnostic client crates plug in.
//!
//! Readiness comes from `MQ_ioWatch` of the context whose hook future polls
//! the stream: use it inside hook futures and `spawn_local` tasks.

use crate::io::{ready, Ready};
use crate::Interest;
use futures_io::{AsyncRead, AsyncWrite};
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

/// A TCP connection whose reads and writes wait on the worker's loop.
///
/// ```no_run
/// # async fn f() -> std::io::Result<()> {
/// use futures_io::AsyncWrite;
/// let mut stream = mq_plugin::net::TcpStream::connect("127.0.0.1:6379".parse().unwrap()).await?;
/// # let _ = &mut stream; Ok(()) }
/// ```
pub struct TcpStream {
    inner: std::net::TcpStream,
    read_ready: Option<Ready>,
    write_ready: Option<Ready>,
}

impl std::fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpStream")
            .field("fd", &self.inner.as_raw_fd())
            .finish()
    }
}

impl TcpStream {
    /// Connects without blocking the loop.
    pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
        let family = if addr.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: plain socket creation; the descriptor is owned below.
        let fd = unsafe {
            libc::socket(
                family,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own; closed when `inner` drops.
        let inner = unsafe { std::net::TcpStream::from_raw_fd(fd) };
        let (storage, len) = sockaddr(&addr);
        // SAFETY: `storage` holds a valid sockaddr of `len` bytes.
        let rc =
            unsafe { libc::connect(fd, (&storage as *const libc::sockaddr_storage).cast(), len) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(err);
            }
            ready(fd, Interest::WRITE).await?;
            if let Some(err) = inner.take_error()? {
                return Err(err);
            }
        }
        inner.set_nodelay(true)?;
        Ok(TcpStream {
            inner,
            read_ready: None,
            write_ready: None,
        })
    }

    /// Wraps a connected std stream (switched to non-blocking).
    pub fn from_std(stream: std::net::TcpStream) -> io::Result<TcpStream> {
        stream.set_nonblocking(true)?;
        Ok(TcpStream {
            inner: stream,
            read_ready: None,
            write_ready: None,
        })
    }

    /// The remote address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

/// Retries `op` until it does not block, waiting on `slot` readiness.
fn poll_io<T>(
    fd: RawFd,
    interest: Interest,
    slot: &mut Option<Ready>,
    cx: &mut TaskContext<'_>,
    mut op: impl FnMut() -> io::Result<T>,
) -> Poll<io::Result<T>> {
    loop {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => {
                *slot = None;
                return Poll::Ready(other);
            }
        }
        let waiting = slot.get_or_insert_with(|| ready(fd, interest));
        match Pin::new(waiting).poll(cx) {
            Poll::Pending => return Poll::Pending,
            // Ready: try the operation again with a fresh watch next time.
            Poll::Ready(Ok(_)) => *slot = None,
            Poll::Ready(Err(e)) => {
                *slot = None;
                return Poll::Ready(Err(e));
            }
        }
    }
}

impl AsyncRead for TcpStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let fd = this.fd();
        let inner = &mut this.inner;
        poll_io(fd, Interest::READ, &mut this.read_ready, cx, || {
            inner.read(buf)
        })
    }
}

impl AsyncWrite for TcpStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let fd = this.fd();
        let inner = &mut this.inner;
        poll_io(fd, Interest::WRITE, &mut this.write_ready, cx, || {
            inner.write(buf)
        })
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        // Writes go straight to the socket; nothing is buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(match self.inner.shutdown(Shutdown::Write) {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            other => other,
        })
    }
}

fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            unsafe {
                (&mut storage as *mut libc::sockaddr_storage)
                    .cast::<libc::sockaddr_in>()
                    .write(sin)
            };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
            unsafe {
                (&mut storage as *mut libc::sockaddr_storage)
                    .cast::<libc::sockaddr_in6>()
                    .write(sin6)
            };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}
