//! A UDP socket of an event loop, registered with the loop's runtime for readability only.
//!
//! The loop only ever waits for datagrams to arrive; it sends without waiting (a send the
//! kernel refuses is counted and dropped). A socket registered for writability too (as Tokio's
//! `UdpSocket` always is) gets a writable edge after every send that frees buffer space, and
//! each such edge woke the loop's runtime once more for nothing: two `epoll_wait` per
//! received packet instead of one (`strace` of the media thread in `README.md`, "Growth").

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::task::{Context, Poll};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// A non-blocking UDP socket the loop's runtime reports readable.
pub struct MediaSocket {
    fd: AsyncFd<std::net::UdpSocket>,
}

impl MediaSocket {
    /// Registers `socket` (made non-blocking) with the current Tokio runtime for readability.
    ///
    /// Must run inside a Tokio runtime. Errors: setting non-blocking mode, or registering.
    pub fn new(socket: std::net::UdpSocket) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        if socket.local_addr()?.is_ipv4() {
            never_fragment(&socket);
        }
        // SAFETY: the `AsyncFd` owns the socket, so its descriptor stays open and the same
        // until the `AsyncFd` is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }?;
        Ok(Self { fd })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.fd.get_ref().local_addr()
    }

    /// Waits until the runtime reports the socket readable (its readiness is kept until a
    /// [`try_read`](Self::try_read) says it would block).
    pub async fn readable(&self) -> io::Result<()> {
        self.fd.readable().await.map(|_| ())
    }

    /// Whether the socket is readable; registers the task's waker when not.
    pub fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.fd.poll_read_ready(cx).map(|ready| ready.map(|_| ()))
    }

    /// Runs the receive `f` if the socket is readable; an error of kind `WouldBlock` from `f`
    /// clears the readiness until the runtime sees the next datagram arrive.
    pub fn try_read<R>(&self, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        self.fd.try_io(Interest::READABLE, |_| f())
    }

    /// Sends one datagram without waiting; errors are the kernel's (`WouldBlock` when the send
    /// buffer is full).
    pub fn try_send_to(&self, datagram: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.fd.get_ref().send_to(datagram, to)
    }
}

/// Sets an IPv4 socket's datagrams to leave with Don't Fragment and never be fragmented here
/// (`IP_PMTUDISC_PROBE`, ip(7)); best effort.
///
/// The default (`IP_PMTUDISC_WANT`) sets DF on the wire too, but keeps the right to fragment,
/// so the kernel draws every datagram a fresh IP identification from a hashed, shared table
/// (`__ip_select_ident`: 3.8 % of the focus's CPU in a `video-1x100` profile). With
/// fragmentation ruled out it writes 0 (RFC 6864 §4.1: the ID field of atomic datagrams has no
/// meaning). Datagrams are never larger than a device's MTU here: WebRTC stacks keep RTP,
/// DTLS and SCTP under about 1,200 bytes.
fn never_fragment(socket: &std::net::UdpSocket) {
    let value: libc::c_int = libc::IP_PMTUDISC_PROBE;
    // SAFETY: a valid descriptor, and a pointer to an `int` that outlives the call, with its
    // size.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result != 0 {
        tracing::debug!(err = %io::Error::last_os_error(), "IP_MTU_DISCOVER not set");
    }
}

impl AsRawFd for MediaSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    #[tokio::test]
    async fn receives_after_readable_and_sends_without_waiting() -> io::Result<()> {
        let loopback = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        let socket = MediaSocket::new(std::net::UdpSocket::bind(loopback)?)?;
        let peer = std::net::UdpSocket::bind(loopback)?;
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(socket.poll_readable(&mut cx).is_pending());
        peer.send_to(b"ping", socket.local_addr()?)?;
        socket.readable().await?;
        let mut buf = [0u8; 16];
        let (len, from) = socket.try_read(|| socket.fd.get_ref().recv_from(&mut buf))?;
        assert_eq!((&buf[..len], from), (&b"ping"[..], peer.local_addr()?));
        // Nothing left: the readiness is cleared, and sending needs no readiness.
        let empty = socket.try_read(|| socket.fd.get_ref().recv_from(&mut buf));
        assert_eq!(
            empty.map(|_| ()).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        assert!(socket.poll_readable(&mut cx).is_pending());
        assert_eq!(socket.try_send_to(b"pong", peer.local_addr()?)?, 4);
        let len = peer.recv(&mut buf)?;
        assert_eq!(&buf[..len], b"pong");
        Ok(())
    }
}
