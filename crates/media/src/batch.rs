//! Outgoing datagrams gathered while packets fan out, sent with one `sendmmsg(2)`; and
//! incoming ones read with one `recvmmsg(2)`.
//!
//! A forwarded packet goes to every subscriber of its publication, each at its own address:
//! `sendmmsg` sends the whole fan-out in one system call. The datagrams gathered from one
//! receive (a video frame's packets arrive together) go to each subscriber one after the
//! other, mostly of one size: those to one address are joined into one message with UDP
//! generic segmentation offload (`UDP_SEGMENT`, udp(7)), which the kernel carries through its
//! send path once and cuts into datagrams at the end (measured in the README, "Performance",
//! "UDP GSO"). The well-kept wrappers do not fit: `quinn-udp` sends to
//! one destination per call, and `nix`'s `sendmmsg` reports how many datagrams went only
//! through an iterator that reads its own (for sends, never written) address buffers. So this
//! calls `libc` directly, with `socket2` for the address conversion; the unsafe part is one
//! system call.

use crate::stats::ShardStats;
use rustc_hash::FxHashMap;
use socket2::SockAddr;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Datagrams read per `recvmmsg(2)`.
pub const BATCH: usize = 32;

/// Messages gathered before a send is forced (each one datagram, or several to one address).
pub const MESSAGES: usize = 128;

/// Most datagrams joined into one message. The kernel takes 64 (`UDP_MAX_SEGMENTS` before
/// Linux 6.2) or 128; past a few the saving per datagram hardly grows.
const MAX_SEGMENTS: usize = 16;

/// Most bytes in one joined message (a UDP datagram's limit, less headers).
const MAX_MESSAGE_BYTES: usize = 60_000;

/// Largest datagram a buffer is sized for (an MTU-sized packet and its SRTP tag).
const BUFFER_CAPACITY: usize = 1600;

/// `UDP_SEGMENT` (linux/udp.h): the control message carrying the segment size.
const UDP_SEGMENT: libc::c_int = 103;

/// One message of a batch: a datagram, or several of one size (the last may be shorter) to
/// the same address.
struct Message {
    buffer: Vec<u8>,
    addr: SockAddr,
    /// The size of each datagram but the last.
    segment: usize,
    segments: usize,
}

/// Datagrams waiting to be sent, in buffers kept from one batch to the next.
pub struct Batch {
    /// Where the next datagram is written before [`Self::commit`] places it.
    next: Vec<u8>,
    messages: Vec<Message>,
    len: usize,
    /// The message to each address that can still take a datagram.
    open: FxHashMap<SocketAddr, usize>,
    /// Whether datagrams to one address are joined (the kernel has `UDP_SEGMENT` and sending
    /// with it has not failed).
    segmentation: bool,
}

impl Default for Batch {
    /// A batch without segmentation offload: one message per datagram.
    fn default() -> Self {
        Self::new(false)
    }
}

impl Batch {
    /// An empty batch; `segmentation` joins datagrams to one address (see [`gso_supported`]).
    pub fn new(segmentation: bool) -> Self {
        Self {
            next: Vec::with_capacity(BUFFER_CAPACITY),
            messages: (0..MESSAGES)
                .map(|_| Message {
                    buffer: Vec::with_capacity(BUFFER_CAPACITY),
                    addr: SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0))),
                    segment: 0,
                    segments: 0,
                })
                .collect(),
            len: 0,
            open: FxHashMap::default(),
            segmentation,
        }
    }

    /// Whether no datagram is waiting.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the batch is full and must be sent before another datagram is added.
    pub fn is_full(&self) -> bool {
        self.len == MESSAGES
    }

    /// The buffer for the next datagram (empty); it joins the batch with [`Self::commit`].
    pub fn next_buffer(&mut self) -> &mut Vec<u8> {
        self.next.clear();
        &mut self.next
    }

    /// Adds the datagram written into [`Self::next_buffer`], to be sent to `to`: appended to
    /// the open message to `to` when it has that message's size (or is shorter, and then
    /// ends the message), else a message of its own. Ignored when the batch is full.
    pub fn commit(&mut self, to: SocketAddr) {
        let len = self.next.len();
        if let Some(&index) = self.open.get(&to) {
            let message = &mut self.messages[index];
            if len <= message.segment
                && len > 0
                && message.segments < MAX_SEGMENTS
                && message.buffer.len() + len <= MAX_MESSAGE_BYTES
            {
                message.buffer.extend_from_slice(&self.next);
                message.segments += 1;
                if len < message.segment || message.segments == MAX_SEGMENTS {
                    self.open.remove(&to);
                }
                return;
            }
        }
        if self.len == MESSAGES {
            return;
        }
        let message = &mut self.messages[self.len];
        std::mem::swap(&mut message.buffer, &mut self.next);
        message.addr = SockAddr::from(to);
        message.segment = len;
        message.segments = 1;
        if self.segmentation {
            self.open.insert(to, self.len);
        }
        self.len += 1;
    }

    /// Sends every waiting datagram, counting what was sent and what failed; the batch is
    /// empty afterwards. A message the kernel refuses (a full socket buffer, an unreachable
    /// address) is dropped and counted — a joined message with all its datagrams — and the
    /// rest are still sent. A joined message the kernel cannot segment (`EIO`: a device
    /// without checksum offload; `EINVAL`: a segment above the route's MTU) is sent again
    /// datagram by datagram, and from then on datagrams are no longer joined (so that no
    /// later batch pays for a refused send first).
    pub fn send(&mut self, socket: &impl AsRawFd, stats: &ShardStats) {
        let mut start = 0;
        while start < self.len {
            match self.send_from(socket, start) {
                Ok(0) => {
                    // No message sent and no error: count the first as lost and go on.
                    self.count_lost(start, stats);
                    start += 1;
                }
                Ok(sent) => {
                    let (datagrams, bytes, joined) = self.messages[start..start + sent]
                        .iter()
                        .fold((0, 0, 0), |(d, b, j), m| {
                            let joined = if m.segments > 1 { m.segments } else { 0 };
                            (d + m.segments, b + m.buffer.len(), j + joined)
                        });
                    stats.count_sent_many(datagrams as u64, bytes as u64);
                    stats.count_segmented(joined as u64);
                    // Short of all: the next call starts at the message the kernel stopped
                    // before, and reports why.
                    start += sent;
                }
                Err(err) => {
                    let errno = err.raw_os_error();
                    let segmented = self.messages[start].segments > 1;
                    if segmented && matches!(errno, Some(libc::EIO) | Some(libc::EINVAL)) {
                        if self.segmentation {
                            tracing::info!(
                                %err,
                                "UDP segmentation offload refused: sending datagrams one by one"
                            );
                            self.segmentation = false;
                        }
                        send_one_by_one(socket, &self.messages[start], stats);
                    } else {
                        tracing::trace!(%err, "send failed");
                        self.count_lost(start, stats);
                    }
                    start += 1;
                }
            }
        }
        self.len = 0;
        self.open.clear();
    }

    fn count_lost(&self, index: usize, stats: &ShardStats) {
        for _ in 0..self.messages[index].segments {
            stats.count_send_error();
        }
    }

    /// One `sendmmsg(2)` of the messages from `start` on; returns how many were sent.
    fn send_from(&mut self, socket: &impl AsRawFd, start: usize) -> std::io::Result<usize> {
        let count = self.len - start;
        let mut iovecs: [libc::iovec; MESSAGES] = std::array::from_fn(|_| libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        });
        // Room for one `cmsghdr` with a `u16`, aligned as the kernel reads it.
        let mut controls = [[0u64; 3]; MESSAGES];
        // SAFETY: `mmsghdr` is a plain C struct for which all-zero is a valid value.
        let mut headers: [libc::mmsghdr; MESSAGES] = unsafe { std::mem::zeroed() };
        for i in 0..count {
            let message = &self.messages[start + i];
            iovecs[i] = libc::iovec {
                iov_base: message.buffer.as_ptr() as *mut libc::c_void,
                iov_len: message.buffer.len(),
            };
            let header = &mut headers[i].msg_hdr;
            header.msg_name = message.addr.as_ptr() as *mut libc::c_void;
            header.msg_namelen = message.addr.len();
            header.msg_iov = &mut iovecs[i];
            header.msg_iovlen = 1;
            if message.segments > 1 {
                let control = &mut controls[i];
                header.msg_control = control.as_mut_ptr().cast();
                // SAFETY: `CMSG_SPACE` is arithmetic on its argument.
                header.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as _;
                // SAFETY: the header's control buffer is `controls[i]` (24 bytes, 8-aligned),
                // which holds `CMSG_SPACE(2)` (at most 24) bytes, so the first `cmsghdr` and
                // its 2 data bytes are inside it.
                unsafe {
                    let cmsg = libc::CMSG_FIRSTHDR(header);
                    (*cmsg).cmsg_level = libc::SOL_UDP;
                    (*cmsg).cmsg_type = UDP_SEGMENT;
                    (*cmsg).cmsg_len = libc::CMSG_LEN(2) as _;
                    let size = message.segment as u16;
                    std::ptr::copy_nonoverlapping(
                        size.to_ne_bytes().as_ptr(),
                        libc::CMSG_DATA(cmsg),
                        2,
                    );
                }
            }
        }
        // SAFETY: the first `count` headers point at buffers and addresses owned by `self`
        // and at `iovecs` and `controls`, all of which outlive the call; the kernel only reads
        // them (and writes `msg_len` into `headers`).
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

/// Sends a joined message's datagrams one `sendto(2)` each.
fn send_one_by_one(socket: &impl AsRawFd, message: &Message, stats: &ShardStats) {
    for datagram in message.buffer.chunks(message.segment.max(1)) {
        // SAFETY: the datagram and the address are valid for the stated lengths during the
        // call.
        let sent = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                datagram.as_ptr().cast(),
                datagram.len(),
                libc::MSG_DONTWAIT,
                message.addr.as_ptr().cast(),
                message.addr.len(),
            )
        };
        if sent < 0 {
            stats.count_send_error();
        } else {
            stats.count_sent(datagram.len());
        }
    }
}

/// Whether the kernel has UDP generic segmentation offload for `socket` (Linux 4.18 and
/// later): asking for no default segment size succeeds only where `UDP_SEGMENT` exists.
pub fn gso_supported(socket: &impl AsRawFd) -> bool {
    let none: libc::c_int = 0;
    // SAFETY: a valid descriptor, and a pointer to an `int` that outlives the call, with its
    // size.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            UDP_SEGMENT,
            (&raw const none).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    result == 0
}

/// Datagrams received with one `recvmmsg(2)`, in buffers kept from one call to the next.
pub struct Received {
    buffers: Vec<Vec<u8>>,
    lens: Vec<usize>,
    addrs: Vec<Option<SocketAddr>>,
    storages: Vec<socket2::SockAddrStorage>,
    /// Room for each datagram's control messages (its kernel receive time), 8-byte aligned.
    controls: Vec<[u64; 8]>,
    /// Each datagram's kernel receive time (`SCM_TIMESTAMPNS`), where the socket gives one.
    stamps: Vec<Option<libc::timespec>>,
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
            controls: vec![[0; 8]; BATCH],
            stamps: vec![None; BATCH],
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
            let control = &mut self.controls[i];
            header.msg_control = control.as_mut_ptr().cast();
            header.msg_controllen = std::mem::size_of_val(control) as _;
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
            self.stamps[i] = receive_time(&header.msg_hdr);
        }
        self.count = count;
        Ok(count)
    }

    /// When the `index`th datagram of the last [`Self::receive`] arrived: the kernel's receive
    /// time where the socket stamps arrivals (see [`stamp_arrivals`]), placed on the monotonic
    /// clock through `now` and `wall_now` (read together after the receive) and never later than
    /// `now` nor more than a second before it; else `now`. Datagrams read in one batch thus keep
    /// the spacing they arrived with, which transport-cc feedback reports to their sender
    /// (a burst read late would otherwise look like packets that arrived all at once).
    pub fn arrival(&self, index: usize, now: Instant, wall_now: SystemTime) -> Instant {
        let Some(stamp) = self.stamps.get(index).copied().flatten() else {
            return now;
        };
        let (Ok(secs), Ok(nanos)) = (u64::try_from(stamp.tv_sec), u32::try_from(stamp.tv_nsec))
        else {
            return now;
        };
        let stamped = UNIX_EPOCH + Duration::new(secs, nanos);
        let age = wall_now
            .duration_since(stamped)
            .unwrap_or(Duration::ZERO)
            .min(Duration::from_secs(1));
        now.checked_sub(age).unwrap_or(now)
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

/// The kernel receive time among a received message's control messages, if it has one.
fn receive_time(header: &libc::msghdr) -> Option<libc::timespec> {
    // SAFETY: `header` is a message the kernel filled in, whose control buffer (owned by the
    // `Received` it came from, still alive) holds `msg_controllen` bytes of control messages;
    // the CMSG macros walk them within that length.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(header);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
            {
                return Some(std::ptr::read_unaligned(
                    libc::CMSG_DATA(cmsg).cast::<libc::timespec>(),
                ));
            }
            cmsg = libc::CMSG_NXTHDR(header, cmsg);
        }
    }
    None
}

/// Has the kernel stamp each datagram `socket` receives with its arrival time
/// (`SO_TIMESTAMPNS`, socket(7)), which [`Received::arrival`] reads; best effort. Linux turns
/// receive stamps on in deferred work when the first socket of the system asks, so the
/// datagrams of the first moments may be stamped when read instead, as without stamps.
pub fn stamp_arrivals(socket: &impl AsRawFd) {
    let on: libc::c_int = 1;
    // SAFETY: a valid descriptor, and a pointer to an `int` that outlives the call, with its
    // size.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result != 0 {
        tracing::debug!(err = %std::io::Error::last_os_error(), "SO_TIMESTAMPNS not set");
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

    /// Returns once the kernel stamps `receiver`'s datagrams when they arrive, not when they are
    /// read. Linux turns receive timestamps on for the whole system in deferred work after the
    /// first socket asks (`net_enable_timestamp`); until that work has run, a datagram is
    /// stamped when it is read, so two datagrams sent 20 ms apart and read together looked 0 ns
    /// apart (the first one read even looked later than the second). A probe left waiting for
    /// 5 ms and read with an age of at least 4 ms was stamped on arrival.
    fn wait_until_arrivals_are_stamped(
        receiver: &UdpSocket,
        sender: &UdpSocket,
        received: &mut Received,
    ) {
        let to = receiver.local_addr().expect("addr");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            sender.send_to(b"probe", to).expect("send");
            std::thread::sleep(Duration::from_millis(5));
            assert_eq!(received.receive(receiver).expect("the probe"), 1);
            let (now, wall_now) = (Instant::now(), SystemTime::now());
            if now.duration_since(received.arrival(0, now, wall_now)) >= Duration::from_millis(4) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the kernel still stamps datagrams when they are read, 10 s after SO_TIMESTAMPNS"
            );
        }
    }

    #[test]
    fn datagrams_read_in_one_batch_keep_the_spacing_they_arrived_with() {
        let receiver = UdpSocket::bind("127.0.0.1:0").expect("bind");
        receiver.set_nonblocking(true).expect("nonblocking");
        stamp_arrivals(&receiver);
        let to = receiver.local_addr().expect("addr");
        let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut received = Received::new(64);
        wait_until_arrivals_are_stamped(&receiver, &sender, &mut received);
        sender.send_to(b"first", to).expect("send");
        std::thread::sleep(Duration::from_millis(20));
        sender.send_to(b"second", to).expect("send");
        assert_eq!(received.receive(&receiver).expect("datagrams"), 2);
        let (now, wall_now) = (Instant::now(), SystemTime::now());
        let (first, second) = (
            received.arrival(0, now, wall_now),
            received.arrival(1, now, wall_now),
        );
        assert!(second <= now, "never later than the read");
        assert!(
            second.duration_since(first) >= Duration::from_millis(15),
            "read together, they arrived {:?} apart",
            second.duration_since(first)
        );
        // A socket that does not stamp arrivals gives the read's time.
        let plain = UdpSocket::bind("127.0.0.1:0").expect("bind");
        plain.set_nonblocking(true).expect("nonblocking");
        sender
            .send_to(b"x", plain.local_addr().expect("addr"))
            .expect("send");
        // On loopback the datagram is queued at the receiver before `send_to` returns.
        assert_eq!(received.receive(&plain).expect("a datagram"), 1);
        assert_eq!(received.arrival(0, now, wall_now), now);
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
        for _ in 0..MESSAGES {
            assert!(!batch.is_full());
            batch.next_buffer().push(1);
            batch.commit("127.0.0.1:9".parse().expect("addr"));
        }
        assert!(batch.is_full());
    }

    /// Receives what `sink` has, each datagram with its sender.
    fn drain(sink: &UdpSocket) -> Vec<Vec<u8>> {
        sink.set_nonblocking(true).expect("nonblocking");
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok(len) = sink.recv(&mut buf) {
            got.push(buf[..len].to_vec());
        }
        got
    }

    #[test]
    fn datagrams_to_one_address_are_joined_and_arrive_one_by_one_in_order() {
        let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
        assert!(gso_supported(&sender), "this kernel has UDP_SEGMENT");
        let (a, b) = (
            UdpSocket::bind("127.0.0.1:0").expect("bind"),
            UdpSocket::bind("127.0.0.1:0").expect("bind"),
        );
        let (to_a, to_b) = (a.local_addr().expect("addr"), b.local_addr().expect("addr"));
        let stats = ShardStats::default();
        let mut batch = Batch::new(true);
        // A frame's packets to two subscribers, interleaved as the fan-out writes them: to
        // `a` three of 100 bytes and a shorter last one (which ends the message), then one
        // more (a message of its own); to `b` two of 100 and a longer one (its own message).
        let sends: [(SocketAddr, u8, usize); 9] = [
            (to_a, 1, 100),
            (to_b, 1, 100),
            (to_a, 2, 100),
            (to_b, 2, 100),
            (to_a, 3, 100),
            (to_b, 3, 120),
            (to_a, 4, 60),
            (to_a, 5, 100),
            (to_b, 4, 120),
        ];
        for (to, tag, len) in sends {
            batch.next_buffer().extend(std::iter::repeat_n(tag, len));
            batch.commit(to);
        }
        // a: [1,2,3,4] and [5]; b: [1,2] and [3,4].
        assert_eq!(batch.len, 4);
        batch.send(&sender, &stats);
        let expect = |to: SocketAddr| -> Vec<Vec<u8>> {
            sends
                .iter()
                .filter(|(t, _, _)| *t == to)
                .map(|(_, tag, len)| vec![*tag; *len])
                .collect()
        };
        assert_eq!(drain(&a), expect(to_a));
        assert_eq!(drain(&b), expect(to_b));
        use std::sync::atomic::Ordering::Relaxed;
        assert_eq!(stats.datagrams_out.load(Relaxed), 9);
        assert_eq!(stats.segmented_datagrams_out.load(Relaxed), 8);
        assert_eq!(stats.send_errors.load(Relaxed), 0);
    }

    #[test]
    fn a_joined_message_takes_at_most_max_segments() {
        let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let sink = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = sink.local_addr().expect("addr");
        let stats = ShardStats::default();
        let mut batch = Batch::new(gso_supported(&sender));
        for i in 0..MAX_SEGMENTS + 3 {
            batch.next_buffer().extend_from_slice(&[i as u8; 50]);
            batch.commit(to);
        }
        assert_eq!(batch.len, 2);
        batch.send(&sender, &stats);
        let got = drain(&sink);
        assert_eq!(got.len(), MAX_SEGMENTS + 3);
        for (i, datagram) in got.iter().enumerate() {
            assert_eq!(datagram, &vec![i as u8; 50]);
        }
    }

    #[test]
    fn without_segmentation_every_datagram_is_its_own_message() {
        let mut batch = Batch::new(false);
        for _ in 0..3 {
            batch.next_buffer().extend_from_slice(&[1; 10]);
            batch.commit("127.0.0.1:9".parse().expect("addr"));
        }
        assert_eq!(batch.len, 3);
    }

    #[test]
    fn a_message_sent_one_by_one_is_cut_at_its_segment_size() {
        let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let sink = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut buffer = vec![1u8; 30];
        buffer.extend_from_slice(&[2; 30]);
        buffer.extend_from_slice(&[3; 10]);
        let message = Message {
            buffer,
            addr: SockAddr::from(sink.local_addr().expect("addr")),
            segment: 30,
            segments: 3,
        };
        let stats = ShardStats::default();
        send_one_by_one(&sender, &message, &stats);
        assert_eq!(drain(&sink), vec![vec![1; 30], vec![2; 30], vec![3; 10]]);
    }
}
