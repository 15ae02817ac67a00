//! The UDP socket of a link this focus placed (issue 11).
//!
//! Every call on an event loop shares the loop's socket, and everything but a STUN request is
//! demultiplexed by the remote address alone. Two links between the same two foci (two
//! conferences) would share both ends' addresses and be told apart by nothing. So a link this
//! focus places gets a socket of its own, on an ephemeral port of the loop's address: what
//! arrives on it is that link's, and the other focus sees each link come from its own
//! address. The callee side needs nothing new: its links are told apart by those addresses.
//!
//! The focus calls the other focus from that port as a device calls a focus: the other focus
//! is ICE-lite and answers the checks, so the port needs no inbound firewall rule of its own
//! beyond what a stateful firewall lets back in.

use crate::socket::MediaSocket;
use std::net::{IpAddr, SocketAddr};
use std::task::{Context, Poll};

/// A placed link's own socket and its bound address.
pub struct LinkSocket {
    /// The socket, non-blocking, registered with the loop's runtime.
    pub socket: MediaSocket,
    /// Its bound address (the local address of every datagram read from it).
    pub local_addr: SocketAddr,
}

impl LinkSocket {
    /// Binds a socket on an ephemeral port of `ip` (the loop's bound address) with the
    /// buffers of [`crate::batch::enlarge_buffers`].
    ///
    /// Must run inside a Tokio runtime. Errors: the bind's, or registering with the runtime.
    pub fn bind(ip: IpAddr) -> std::io::Result<Self> {
        let socket = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))?;
        crate::batch::enlarge_buffers(&socket);
        crate::batch::stamp_arrivals(&socket);
        let socket = MediaSocket::new(socket)?;
        let local_addr = socket.local_addr()?;
        Ok(Self { socket, local_addr })
    }
}

/// Which of `sockets` (with an id each) has datagrams waiting: the first id found ready, or
/// `Pending` with the task's waker registered on every one. Allocates nothing.
pub fn poll_readable<'a, I>(sockets: I, cx: &mut Context<'_>) -> Poll<u64>
where
    I: Iterator<Item = (u64, &'a LinkSocket)>,
{
    for (id, link) in sockets {
        if link.socket.poll_readable(cx).is_ready() {
            return Poll::Ready(id);
        }
    }
    Poll::Pending
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[tokio::test]
    async fn the_socket_with_a_datagram_waiting_is_the_one_found_ready() -> std::io::Result<()> {
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let links = [LinkSocket::bind(loopback)?, LinkSocket::bind(loopback)?];
        assert_ne!(links[0].local_addr.port(), links[1].local_addr.port());
        let ids = || links.iter().enumerate().map(|(i, l)| (i as u64 + 10, l));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert_eq!(poll_readable(ids(), &mut cx), Poll::Pending);
        let sender = std::net::UdpSocket::bind((loopback, 0))?;
        sender.send_to(b"x", links[1].local_addr)?;
        let found = std::future::poll_fn(|cx| poll_readable(ids(), cx)).await;
        assert_eq!(found, 11);
        Ok(())
    }
}
