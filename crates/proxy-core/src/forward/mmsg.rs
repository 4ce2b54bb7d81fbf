//! Batched UDP I/O on Linux: recvmmsg(2) and sendmmsg(2) move many datagrams per syscall.
//!
//! This module holds all of the crate's `unsafe` code for these calls; every block says why
//! it is sound. The message headers point into buffers owned by the batch and are rebuilt on
//! the stack for every call, so the batch itself holds no raw pointer and is `Send`.

use std::io;
use std::mem::{self, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

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

    /// Receives what is waiting, without blocking: the number of datagrams now in the batch.
    /// `WouldBlock` when nothing is (and the socket's readiness is cleared for tokio).
    pub(crate) fn try_recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.recv(socket, false)
    }

    /// As [`RecvBatch::try_recv`], but a short batch (fewer than [`BATCH`] datagrams) also
    /// clears the socket's read readiness, saving the receive that would only return
    /// `EAGAIN` before the next wait.
    ///
    /// Only for an *unconnected* socket. A short batch means recvmmsg found the queue empty
    /// (it stops early otherwise only on an error, and an unconnected UDP socket is not sent
    /// ICMP errors). Every datagram queued after that wakes the socket's epoll entry again
    /// (edge-triggered epoll reports each arrival), and tokio clears readiness only if no
    /// event came in since it was read, before the call: no wake-up is lost.
    pub(crate) fn try_recv_unconnected(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.recv(socket, true)
    }

    fn recv(&mut self, socket: &UdpSocket, short_is_drained: bool) -> io::Result<usize> {
        let fd = socket.as_raw_fd();
        let mut received = 0;
        let result = socket.try_io(Interest::READABLE, || {
            let mut iovecs: [MaybeUninit<libc::iovec>; BATCH] = [const { MaybeUninit::uninit() }; BATCH];
            // SAFETY: mmsghdr is plain old data; all-zero (null pointers, zero lengths) is valid.
            let mut msgs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
            for (i, (slot, msg)) in self.storage.chunks_exact_mut(SLOT).zip(msgs.iter_mut()).enumerate() {
                let iov = iovecs[i].write(libc::iovec { iov_base: slot.as_mut_ptr().cast(), iov_len: SLOT });
                msg.msg_hdr.msg_iov = iov;
                msg.msg_hdr.msg_iovlen = 1;
                msg.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
                msg.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            }
            // SAFETY: `fd` is an open socket borrowed from `socket`; every header points at an
            // iovec and a sockaddr_storage that live until the call returns, each iovec at a
            // distinct SLOT-byte chunk of `storage`; the kernel writes at most iov_len bytes
            // and namelen bytes there, and BATCH headers exist.
            let n = unsafe {
                libc::recvmmsg(fd, msgs.as_mut_ptr(), BATCH as libc::c_uint, libc::MSG_DONTWAIT, std::ptr::null_mut())
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let n = n as usize;
            for (len, msg) in self.lens.iter_mut().zip(&msgs).take(n) {
                *len = msg.msg_len as usize;
            }
            received = n;
            if short_is_drained && n < BATCH {
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

    /// The bytes of datagram `i` of the last receive.
    pub(crate) fn data(&self, i: usize) -> &[u8] {
        let start = i * SLOT;
        &self.storage[start..start + self.lens[i].min(SLOT)]
    }

    /// The sender of datagram `i` of the last receive (None for an unknown address family).
    pub(crate) fn peer(&self, i: usize) -> Option<SocketAddr> {
        to_socket_addr(&self.addrs[i])
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

fn from_socket_addr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in.
            let sin = unsafe { &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr { s_addr: u32::from(*a.ip()).to_be() };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo().to_be();
            sin6.sin6_addr = libc::in6_addr { s6_addr: a.ip().octets() };
            sin6.sin6_scope_id = a.scope_id();
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Sends datagrams `range` of `batch` to `dest` (or, with `None`, on a connected socket)
/// without blocking: how many went out. `WouldBlock` when none could; another error is the
/// first datagram's.
pub(crate) fn try_send(
    socket: &UdpSocket,
    batch: &RecvBatch,
    range: std::ops::Range<usize>,
    dest: Option<SocketAddr>,
) -> io::Result<usize> {
    let range = range.start.min(BATCH)..range.end.min(BATCH);
    let count = range.len();
    if count == 0 {
        return Ok(0);
    }
    let fd = socket.as_raw_fd();
    let mut name = dest.map(from_socket_addr);
    socket.try_io(Interest::WRITABLE, || {
        let mut iovecs: [MaybeUninit<libc::iovec>; BATCH] = [const { MaybeUninit::uninit() }; BATCH];
        // SAFETY: mmsghdr is plain old data; all-zero is valid.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
        for (i, msg) in msgs.iter_mut().enumerate().take(count) {
            let data = batch.data(range.start + i);
            // The kernel only reads through iov_base on send; the cast to *mut is what the
            // C struct's type demands.
            let iov =
                iovecs[i].write(libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() });
            msg.msg_hdr.msg_iov = iov;
            msg.msg_hdr.msg_iovlen = 1;
            if let Some((storage, len)) = name.as_mut() {
                msg.msg_hdr.msg_name = (storage as *mut libc::sockaddr_storage).cast();
                msg.msg_hdr.msg_namelen = *len;
            }
        }
        // SAFETY: `fd` is an open socket borrowed from `socket`; the first `count` headers
        // point at iovecs over live slices of `batch` and at `name`, all alive for the call;
        // sendmmsg only reads them (and writes msg_len).
        let n = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), count as libc::c_uint, libc::MSG_DONTWAIT) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
            if let Ok(n) = batch.try_recv(&b) {
                for i in 0..n {
                    assert_eq!(batch.peer(i), Some(a.local_addr().unwrap()));
                    got.push(batch.data(i).to_vec());
                }
                // Echo the batch back in one call.
                assert_eq!(try_send(&b, &batch, 0..n, Some(a.local_addr().unwrap())).unwrap(), n);
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
            d.readable().await.unwrap();
            let n = loop {
                match batch.try_recv(&d) {
                    Ok(n) => break n,
                    Err(_) => d.readable().await.unwrap(),
                }
            };
            assert_eq!(n, 1);
            assert_eq!(batch.data(0), b"v6");
            assert_eq!(batch.peer(0), Some(c.local_addr().unwrap()));
        }
    }
}
