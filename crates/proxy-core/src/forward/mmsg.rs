//! Batched UDP I/O on Linux: recvmmsg(2) and sendmmsg(2) move many datagrams per syscall.
//!
//! This module holds all of the crate's `unsafe` code for these calls; every block says why
//! it is sound. The message headers point into buffers owned by the batch and are rebuilt on
//! the stack for every call, so the batch itself holds no raw pointer and is `Send`.

use std::io;
use std::mem::{self, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams one call moves at most.
pub(crate) const BATCH: usize = 16;
/// Room for the largest UDP payload (65,507 bytes over IPv4, 65,527 over IPv6).
pub(crate) const SLOT: usize = 65_536;

/// Reusable receive buffers for up to [`BATCH`] datagrams.
///
/// The memory is allocated zeroed (fresh pages from the OS), so only the pages datagrams
/// actually touch become resident.
pub(crate) struct RecvBatch {
    storage: Vec<u8>,
    lens: [usize; BATCH],
    addrs: [libc::sockaddr_storage; BATCH],
}

impl RecvBatch {
    /// Empty buffers for a full batch of maximum-size datagrams.
    pub(crate) fn new() -> Self {
        RecvBatch {
            storage: vec![0; BATCH * SLOT],
            lens: [0; BATCH],
            // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
            addrs: unsafe { mem::zeroed() },
        }
    }

    /// Receives what is waiting on an *unconnected* socket, without blocking: the number of
    /// datagrams now in the batch (from slot 0). `WouldBlock` when nothing is.
    ///
    /// A short batch (fewer than [`BATCH`] datagrams) also clears the socket's read
    /// readiness, saving the receive that would only return `EAGAIN` before the next wait.
    /// A short batch means recvmmsg found the queue empty (it stops early otherwise only on
    /// an error, and an unconnected UDP socket is not sent ICMP errors). Every datagram
    /// queued after that wakes the socket's epoll entry again (edge-triggered epoll reports
    /// each arrival), and tokio clears readiness only if no event came in since it was
    /// read, before the call: no wake-up is lost.
    pub(crate) fn try_recv_unconnected(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        let mut received = 0;
        let result = socket.try_io(Interest::READABLE, || {
            let n = self.recv_into(socket.as_fd(), 0)?;
            received = n;
            if n < BATCH {
                // Clears the readiness read before this call; `received` carries the count.
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        match result {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && received > 0 => Ok(received),
            result => result,
        }
    }

    /// Receives what a plain non-blocking socket has waiting into slots `start..` of the
    /// batch: how many datagrams (at least one), `WouldBlock` when none, or the socket's
    /// pending error (an ICMP report on a connected socket). Nothing is registered with
    /// tokio; the caller knows readiness some other way.
    pub(crate) fn recv_at(&mut self, socket: BorrowedFd<'_>, start: usize) -> io::Result<usize> {
        self.recv_into(socket, start)
    }

    fn recv_into(&mut self, fd: BorrowedFd<'_>, start: usize) -> io::Result<usize> {
        let start = start.min(BATCH);
        let count = BATCH - start;
        if count == 0 {
            return Ok(0);
        }
        let mut iovecs: [MaybeUninit<libc::iovec>; BATCH] = [const { MaybeUninit::uninit() }; BATCH];
        // SAFETY: mmsghdr is plain old data; all-zero (null pointers, zero lengths) is valid.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
        let slots = self.storage.chunks_exact_mut(SLOT).skip(start);
        let names = self.addrs.iter_mut().skip(start);
        for (((slot, name), msg), iov) in slots.zip(names).zip(msgs.iter_mut()).zip(iovecs.iter_mut()) {
            let iov = iov.write(libc::iovec { iov_base: slot.as_mut_ptr().cast(), iov_len: SLOT });
            msg.msg_hdr.msg_iov = iov;
            msg.msg_hdr.msg_iovlen = 1;
            msg.msg_hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
            msg.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        }
        // SAFETY: `fd` is an open socket (borrowed for the call); the first `count` headers
        // each point at an iovec and a sockaddr_storage that live until the call returns,
        // each iovec at a distinct SLOT-byte chunk of `storage` (slots start..BATCH); the
        // kernel writes at most iov_len and namelen bytes there, and `count` ≤ BATCH headers
        // exist.
        let n = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = (n as usize).min(count);
        for (len, msg) in self.lens[start..].iter_mut().zip(&msgs).take(n) {
            *len = msg.msg_len as usize;
        }
        Ok(n)
    }

    /// The bytes of datagram `i` of the last receive.
    pub(crate) fn data(&self, i: usize) -> &[u8] {
        let start = i * SLOT;
        &self.storage[start..start + self.lens[i].min(SLOT)]
    }

    /// The sender of datagram `i` of the last receive (None for an unknown address family),
    /// or the address [`RecvBatch::set_peers`] put there since.
    pub(crate) fn peer(&self, i: usize) -> Option<SocketAddr> {
        to_socket_addr(self.addrs.get(i)?)
    }

    /// Replaces the address of datagrams `range` (one session's replies) with `addr`,
    /// converted once for them all: where [`try_send_to_peers`] sends them.
    pub(crate) fn set_peers(&mut self, range: Range<usize>, addr: SocketAddr) {
        let storage = from_socket_addr(addr);
        for slot in self.addrs.get_mut(range).into_iter().flatten() {
            *slot = storage;
        }
    }
}

fn to_socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in, which it is large
            // and aligned enough for.
            let sin = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                u32::from_be(sin6.sin6_flowinfo),
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn from_socket_addr(addr: SocketAddr) -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in.
            let sin = unsafe { &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr { s_addr: u32::from(*a.ip()).to_be() };
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo().to_be();
            sin6.sin6_addr = libc::in6_addr { s6_addr: a.ip().octets() };
            sin6.sin6_scope_id = a.scope_id();
        }
    }
    storage
}

/// The length of the address in `storage`, by its family (0 for an unknown one).
fn sockaddr_len(storage: &libc::sockaddr_storage) -> libc::socklen_t {
    let len = match storage.ss_family as libc::c_int {
        libc::AF_INET => mem::size_of::<libc::sockaddr_in>(),
        libc::AF_INET6 => mem::size_of::<libc::sockaddr_in6>(),
        _ => 0,
    };
    len as libc::socklen_t
}

/// Sends datagrams `range` of `batch` from the tokio socket `socket`, each to its own
/// address ([`RecvBatch::peer`]), without blocking: how many went out. `WouldBlock` when
/// none could (and the socket's write readiness is cleared for tokio); another error is
/// the first datagram's.
pub(crate) fn try_send_to_peers(socket: &UdpSocket, batch: &RecvBatch, range: Range<usize>) -> io::Result<usize> {
    socket.try_io(Interest::WRITABLE, || send(socket.as_fd(), batch, range.clone(), true))
}

/// Sends datagrams `range` of `batch` on a plain non-blocking *connected* socket, without
/// blocking: how many went out. `WouldBlock` when none could; another error is the first
/// datagram's (often the ICMP report of an earlier datagram).
pub(crate) fn send_connected(socket: BorrowedFd<'_>, batch: &RecvBatch, range: Range<usize>) -> io::Result<usize> {
    send(socket, batch, range, false)
}

/// sendmmsg(2) of datagrams `range` of `batch`, to their own addresses if `to_peers`.
fn send(fd: BorrowedFd<'_>, batch: &RecvBatch, range: Range<usize>, to_peers: bool) -> io::Result<usize> {
    let range = range.start.min(BATCH)..range.end.min(BATCH);
    let count = range.len();
    if count == 0 {
        return Ok(0);
    }
    let mut iovecs: [MaybeUninit<libc::iovec>; BATCH] = [const { MaybeUninit::uninit() }; BATCH];
    // SAFETY: mmsghdr is plain old data; all-zero is valid.
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
    for ((i, msg), iov) in range.clone().zip(msgs.iter_mut()).zip(iovecs.iter_mut()) {
        let data = batch.data(i);
        // The kernel only reads through iov_base and msg_name on send; the casts to *mut
        // are what the C structs' types demand.
        let iov = iov.write(libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() });
        msg.msg_hdr.msg_iov = iov;
        msg.msg_hdr.msg_iovlen = 1;
        if to_peers {
            let name = &batch.addrs[i];
            msg.msg_hdr.msg_name = (name as *const libc::sockaddr_storage).cast_mut().cast();
            msg.msg_hdr.msg_namelen = sockaddr_len(name);
        }
    }
    // SAFETY: `fd` is an open socket (borrowed for the call); the first `count` headers
    // point at iovecs over live slices of `batch` and at addresses inside `batch`, all
    // alive for the call; sendmmsg only reads them (and writes msg_len of the headers).
    let n = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), count as libc::c_uint, libc::MSG_DONTWAIT) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok((n as usize).min(count)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Receives what `socket` has into `batch` from slot `start`, waiting until something is.
    async fn recv_some(batch: &mut RecvBatch, socket: &UdpSocket, start: usize) -> usize {
        loop {
            socket.readable().await.unwrap();
            match batch.recv_at(socket.as_fd(), start) {
                Ok(n) => return n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Tell tokio, so that `readable` waits for the next datagram.
                    let _ = socket.try_io(Interest::READABLE, || Err::<(), _>(e));
                }
                Err(e) => panic!("recv: {e}"),
            }
        }
    }

    #[tokio::test]
    async fn a_batch_round_trips_v4_and_v6_addresses_and_sizes() {
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let sizes = [1usize, 1400, 65_507];
        for size in sizes {
            a.send_to(&vec![size as u8; size], b.local_addr().unwrap()).await.unwrap();
        }
        let mut batch = RecvBatch::new();
        let mut got = Vec::new();
        while got.len() < sizes.len() {
            b.readable().await.unwrap();
            if let Ok(n) = batch.try_recv_unconnected(&b) {
                for i in 0..n {
                    assert_eq!(batch.peer(i), Some(a.local_addr().unwrap()));
                    got.push(batch.data(i).to_vec());
                }
                // Echo the batch back in one call.
                assert_eq!(try_send_to_peers(&b, &batch, 0..n).unwrap(), n);
            }
        }
        for (data, size) in got.iter().zip(sizes) {
            assert_eq!(data.len(), size);
            assert!(data.iter().all(|&x| x == size as u8));
        }
        let mut buf = vec![0; 70_000];
        for size in sizes {
            let (n, _) = a.recv_from(&mut buf).await.unwrap();
            assert_eq!(n, size);
        }
        if let (Ok(c), Ok(d)) = (UdpSocket::bind("[::1]:0").await, UdpSocket::bind("[::1]:0").await) {
            c.send_to(b"v6", d.local_addr().unwrap()).await.unwrap();
            assert_eq!(recv_some(&mut batch, &d, 0).await, 1);
            assert_eq!(batch.data(0), b"v6");
            assert_eq!(batch.peer(0), Some(c.local_addr().unwrap()));
        }
    }

    #[tokio::test]
    async fn slots_filled_from_two_sockets_go_to_the_addresses_set_on_them() {
        let (x, y) = (UdpSocket::bind("127.0.0.1:0").await.unwrap(), UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let (to_x, to_y) =
            (UdpSocket::bind("127.0.0.1:0").await.unwrap(), UdpSocket::bind("127.0.0.1:0").await.unwrap());
        to_x.connect(x.local_addr().unwrap()).await.unwrap();
        to_y.connect(y.local_addr().unwrap()).await.unwrap();
        x.send_to(b"for x", to_x.local_addr().unwrap()).await.unwrap();
        y.send_to(b"for y", to_y.local_addr().unwrap()).await.unwrap();
        let mut batch = RecvBatch::new();
        let first = recv_some(&mut batch, &to_x, 0).await;
        assert_eq!(first, 1);
        let second = recv_some(&mut batch, &to_y, first).await;
        assert_eq!(second, 1);
        // Swap the destinations: x's datagram goes to y and y's to x, in one call.
        batch.set_peers(0..1, y.local_addr().unwrap());
        batch.set_peers(1..2, x.local_addr().unwrap());
        let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // Tokio only tries a send once it has seen the socket writable.
        sender.writable().await.unwrap();
        assert_eq!(try_send_to_peers(&sender, &batch, 0..2).unwrap(), 2);
        let mut buf = [0u8; 16];
        let n = y.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"for x");
        let n = x.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"for y");
        // And a connected send of both slots.
        assert_eq!(send_connected(to_x.as_fd(), &batch, 0..2).unwrap(), 2);
        for want in [&b"for x"[..], b"for y"] {
            let n = x.recv(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], want);
        }
    }
}
