//! Outgoing datagrams gathered while one packet fans out, sent with one `sendmmsg(2)`; and
//! incoming ones read with one `recvmmsg(2)`.
//!
//! A forwarded packet goes to every subscriber of its publication, each at its own address, so
//! UDP GSO (one destination per call) does not apply; `sendmmsg` sends the whole fan-out in one
//! system call. The well-kept wrappers do not fit: `quinn-udp` sends to one destination per
//! call (GSO), and `nix`'s `sendmmsg` reports how many datagrams went only through an iterator
//! that reads its own (for sends, never written) address buffers. So this calls `libc` directly,
//! with `socket2` for the address conversion; the unsafe part is one system call.

use crate::stats::ShardStats;
use socket2::SockAddr;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

/// Datagrams sent per system call (and gathered before a send is forced).
pub const BATCH: usize = 32;

/// Largest datagram a buffer is sized for (an MTU-sized packet and its SRTP tag).
const BUFFER_CAPACITY: usize = 1600;

/// Datagrams waiting to be sent, in buffers kept from one batch to the next.
pub struct Batch {
    buffers: Vec<Vec<u8>>,
    addrs: Vec<SockAddr>,
    len: usize,
}

impl Default for Batch {
    fn default() -> Self {
        Self {
            buffers: (0..BATCH)
                .map(|_| Vec::with_capacity(BUFFER_CAPACITY))
                .collect(),
            addrs: (0..BATCH)
                .map(|_| SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0))))
                .collect(),
            len: 0,
        }
    }
}

impl Batch {
    /// Whether no datagram is waiting.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the batch is full and must be sent before another datagram is added.
    pub fn is_full(&self) -> bool {
        self.len == BATCH
    }

    /// The buffer for the next datagram (empty); it joins the batch with [`Self::commit`].
    ///
    /// The batch must not be full.
    pub fn next_buffer(&mut self) -> &mut Vec<u8> {
        let buffer = &mut self.buffers[self.len.min(BATCH - 1)];
        buffer.clear();
        buffer
    }

    /// Adds the datagram written into [`Self::next_buffer`], to be sent to `to`.
    pub fn commit(&mut self, to: SocketAddr) {
        if self.len < BATCH {
            self.addrs[self.len] = SockAddr::from(to);
            self.len += 1;
        }
    }

    /// Sends every waiting datagram, counting what was sent and what failed; the batch is
    /// empty afterwards. A datagram the kernel refuses (a full socket buffer, an unreachable
    /// address) is dropped and counted, and the rest are still sent.
    pub fn send(&mut self, socket: &impl AsRawFd, stats: &ShardStats) {
        let mut start = 0;
        while start < self.len {
            let sent = self.send_from(socket, start);
            match sent {
                Ok(sent) => {
                    let bytes: usize = self.buffers[start..start + sent].iter().map(Vec::len).sum();
                    stats.count_sent_many(sent as u64, bytes as u64);
                    start += sent;
                    if start < self.len {
                        // `sendmmsg` stops before a datagram it cannot send: skip that one.
                        stats.count_send_error();
                        start += 1;
                    }
                }
                Err(err) => {
                    stats.count_send_error();
                    tracing::trace!(%err, "send failed");
                    start += 1;
                }
            }
        }
        self.len = 0;
    }
}

impl Batch {
    /// One `sendmmsg(2)` of the datagrams from `start` on; returns how many were sent.
    fn send_from(&mut self, socket: &impl AsRawFd, start: usize) -> std::io::Result<usize> {
        let count = self.len - start;
        let mut iovecs: [libc::iovec; BATCH] = std::array::from_fn(|_| libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        });
        // SAFETY: `mmsghdr` is a plain C struct for which all-zero is a valid value.
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..count {
            let buffer = &self.buffers[start + i];
            let addr = &self.addrs[start + i];
            iovecs[i] = libc::iovec {
                iov_base: buffer.as_ptr() as *mut libc::c_void,
                iov_len: buffer.len(),
            };
            let header = &mut headers[i].msg_hdr;
            header.msg_name = addr.as_ptr() as *mut libc::c_void;
            header.msg_namelen = addr.len();
            header.msg_iov = &mut iovecs[i];
            header.msg_iovlen = 1;
        }
        // SAFETY: the first `count` headers point at buffers and addresses owned by `self`
        // and at `iovecs`, all of which outlive the call; the kernel only reads them (and
        // writes `msg_len` into `headers`).
        let sent = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                headers.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(sent as usize)
    }
}

/// Datagrams received with one `recvmmsg(2)`, in buffers kept from one call to the next.
pub struct Received {
    buffers: Vec<Vec<u8>>,
    lens: Vec<usize>,
    addrs: Vec<Option<SocketAddr>>,
    storages: Vec<socket2::SockAddrStorage>,
    count: usize,
}

impl Received {
    /// Room for [`BATCH`] datagrams of up to `max_datagram` bytes each (longer ones are cut).
    pub fn new(max_datagram: usize) -> Self {
        Self {
            buffers: (0..BATCH).map(|_| vec![0u8; max_datagram]).collect(),
            lens: vec![0; BATCH],
            addrs: vec![None; BATCH],
            storages: (0..BATCH)
                .map(|_| socket2::SockAddrStorage::zeroed())
                .collect(),
            count: 0,
        }
    }

    /// Receives what is waiting, up to [`BATCH`] datagrams, without blocking; returns how
    /// many arrived.
    ///
    /// # Errors
    ///
    /// `WouldBlock` when nothing is waiting, or the socket's error.
    pub fn receive(&mut self, socket: &impl AsRawFd) -> std::io::Result<usize> {
        self.count = 0;
        let mut iovecs: [libc::iovec; BATCH] = std::array::from_fn(|_| libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        });
        // SAFETY: `mmsghdr` is a plain C struct for which all-zero is a valid value.
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..BATCH {
            let buffer = &mut self.buffers[i];
            iovecs[i] = libc::iovec {
                iov_base: buffer.as_mut_ptr() as *mut libc::c_void,
                iov_len: buffer.len(),
            };
            let storage = &mut self.storages[i];
            let header = &mut headers[i].msg_hdr;
            header.msg_namelen = storage.size_of();
            header.msg_name = storage as *mut socket2::SockAddrStorage as *mut libc::c_void;
            header.msg_iov = &mut iovecs[i];
            header.msg_iovlen = 1;
        }
        // SAFETY: every header points at a buffer, an address storage (a `sockaddr_storage`:
        // `SockAddrStorage` is `repr(transparent)` over it) and an iovec owned here that outlive
        // the call; the kernel writes at most their stated lengths.
        let received = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if received < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let count = (received as usize).min(BATCH);
        for (i, header) in headers.iter().enumerate().take(count) {
            let len = header.msg_hdr.msg_namelen;
            self.lens[i] = (header.msg_len as usize).min(self.buffers[i].len());
            let storage =
                std::mem::replace(&mut self.storages[i], socket2::SockAddrStorage::zeroed());
            // SAFETY: the kernel initialised `len` bytes of the storage with the sender's
            // address.
            let addr = unsafe { socket2::SockAddr::new(storage, len) };
            self.addrs[i] = addr.as_socket();
        }
        self.count = count;
        Ok(count)
    }

    /// The `index`th datagram of the last [`Self::receive`]: its sender and bytes.
    pub fn datagram(&self, index: usize) -> Option<(SocketAddr, &[u8])> {
        if index >= self.count {
            return None;
        }
        let from = self.addrs[index]?;
        Some((from, &self.buffers[index][..self.lens[index]]))
    }
}

/// Socket buffer size asked for, in bytes. The kernel's default (about 208 KiB) holds only
/// about 90 small datagrams, as each is charged with its bookkeeping: an event loop busy for a
/// few milliseconds with a renegotiation while hundreds of packets per second arrive lost
/// some. The kernel caps what it grants at `net.core.rmem_max` / `wmem_max` (the README's
/// Operations section says how to raise them).
pub const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// Asks for [`SOCKET_BUFFER_BYTES`] of receive and send buffer on `socket`; returns the sizes
/// the kernel granted (0 where it could not be read). A refusal is not an error: the socket
/// works with what it has.
pub fn enlarge_buffers(socket: &impl std::os::fd::AsFd) -> (usize, usize) {
    let socket = socket2::SockRef::from(socket);
    if let Err(err) = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES) {
        tracing::warn!(%err, "cannot enlarge the UDP receive buffer");
    }
    if let Err(err) = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES) {
        tracing::warn!(%err, "cannot enlarge the UDP send buffer");
    }
    (
        socket.recv_buffer_size().unwrap_or(0),
        socket.send_buffer_size().unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn every_datagram_reaches_its_own_address_and_a_bad_one_is_skipped() {
        let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let sinks: Vec<UdpSocket> = (0..3)
            .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind"))
            .collect();
        let stats = ShardStats::default();
        let mut batch = Batch::default();
        for round in 0..2u8 {
            for (i, sink) in sinks.iter().enumerate() {
                let buffer = batch.next_buffer();
                buffer.extend_from_slice(&[round, i as u8, 7]);
                batch.commit(sink.local_addr().expect("addr"));
                if i == 0 {
                    // An IPv6 destination from an IPv4 socket: refused by the kernel.
                    batch.next_buffer().push(0);
                    batch.commit("[::1]:9".parse().expect("addr"));
                }
            }
        }
        assert!(!batch.is_empty());
        batch.send(&sender, &stats);
        assert!(batch.is_empty());
        for (i, sink) in sinks.iter().enumerate() {
            let mut buf = [0u8; 16];
            for round in 0..2u8 {
                let (len, from) = sink.recv_from(&mut buf).expect("a datagram");
                assert_eq!(from, sender.local_addr().expect("addr"));
                assert_eq!(&buf[..len], &[round, i as u8, 7]);
            }
        }
        use std::sync::atomic::Ordering::Relaxed;
        assert_eq!(stats.datagrams_out.load(Relaxed), 6);
        assert_eq!(stats.send_errors.load(Relaxed), 2);
    }

    #[test]
    fn a_burst_is_received_in_one_call_with_each_sender() {
        let receiver = UdpSocket::bind("127.0.0.1:0").expect("bind");
        receiver.set_nonblocking(true).expect("nonblocking");
        let to = receiver.local_addr().expect("addr");
        let senders: Vec<UdpSocket> = (0..3)
            .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind"))
            .collect();
        let mut received = Received::new(8);
        let nothing = received.receive(&receiver);
        assert!(
            nothing.is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
            "nothing waiting yet"
        );
        for (i, sender) in senders.iter().enumerate() {
            sender.send_to(&[i as u8; 3], to).expect("send");
        }
        // A datagram longer than the buffer is cut to it.
        senders[0].send_to(&[9u8; 20], to).expect("send");
        let count = received.receive(&receiver).expect("datagrams");
        assert_eq!(count, 4);
        for (i, sender) in senders.iter().enumerate() {
            let (from, bytes) = received.datagram(i).expect("a datagram");
            assert_eq!(from, sender.local_addr().expect("addr"));
            assert_eq!(bytes, &[i as u8; 3]);
        }
        assert_eq!(received.datagram(3).map(|(_, b)| b.len()), Some(8));
        assert!(received.datagram(4).is_none());
    }

    #[test]
    fn a_full_batch_takes_no_more() {
        let mut batch = Batch::default();
        for _ in 0..BATCH {
            assert!(!batch.is_full());
            batch.next_buffer().push(1);
            batch.commit("127.0.0.1:9".parse().expect("addr"));
        }
        assert!(batch.is_full());
    }
}
