//! A nested epoll instance on Linux: many plain sockets watched through one descriptor.
//!
//! The UDP forwarder registers every session's upstream socket here (level-triggered,
//! readable) with a session key as the event's data, and hands the epoll descriptor itself
//! to Tokio, which reports it readable whenever any registered socket is. A session thereby
//! costs one kernel `epitem` and no Tokio registration, task or waker.
//!
//! This module holds all of the crate's `unsafe` code for these calls and for registering
//! descriptors with Tokio (`AsyncFd`); every block says why it is sound. An event's data is
//! an opaque `u64` chosen by the caller, never a pointer, so a stale event (a session
//! removed after the kernel reported it) can at worst name a key that no longer matches
//! anything.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// An epoll instance, closed on drop (which also drops every registration in it).
#[derive(Debug)]
pub(crate) struct Epoll {
    /// The epoll descriptor.
    fd: OwnedFd,
}

impl Epoll {
    /// A new, empty instance, close-on-exec.
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 takes no pointer; it returns a new descriptor or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by epoll_create1: open, and owned by nothing else.
        Ok(Epoll { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Watches `socket` for readability (level-triggered; errors are always reported),
    /// reporting `key` when it is ready.
    pub(crate) fn add(&self, socket: BorrowedFd<'_>, key: u64) -> io::Result<()> {
        let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: key };
        // SAFETY: both descriptors are open for the call (one owned, one borrowed); `event`
        // is a valid epoll_event on the stack that the kernel only reads.
        let rc = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, socket.as_raw_fd(), &mut event) };
        if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Stops watching `socket`. Closing a socket that no other descriptor shares also
    /// removes it; this says so explicitly, before the close.
    pub(crate) fn delete(&self, socket: BorrowedFd<'_>) -> io::Result<()> {
        // A non-null event, for kernels before 2.6.9 that required one; it is not read.
        let mut event = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: both descriptors are open for the call; `event` is valid and unused by
        // EPOLL_CTL_DEL.
        let rc = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_DEL, socket.as_raw_fd(), &mut event) };
        if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Hands the instance to Tokio, which then reports it readable whenever one of its
    /// sockets is.
    pub(crate) fn register(self) -> io::Result<AsyncFd<Epoll>> {
        // SAFETY: `self` owns its descriptor and moves into the AsyncFd, so the descriptor
        // stays open, and is the one `as_raw_fd` returns, for the AsyncFd's whole life.
        unsafe { AsyncFd::register_with_interest(self, Interest::READABLE) }.map_err(io::Error::from)
    }

    /// Collects the keys of ready sockets into `events` without waiting: how many.
    pub(crate) fn wait(&self, events: &mut Events) -> io::Result<usize> {
        let max = libc::c_int::try_from(events.list.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: the epoll descriptor is open; `events.list` holds at least `max` writable
        // epoll_event slots that outlive the call; a zero timeout never blocks.
        let n = unsafe { libc::epoll_wait(self.fd.as_raw_fd(), events.list.as_mut_ptr(), max, 0) };
        if n < 0 {
            events.len = 0;
            return Err(io::Error::last_os_error());
        }
        events.len = usize::try_from(n).unwrap_or(0).min(events.list.len());
        Ok(events.len)
    }
}

impl AsRawFd for Epoll {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for Epoll {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Waits until `socket` (a plain non-blocking socket of ours) may be written to, through a
/// Tokio registration that lasts only for this wait.
pub(crate) async fn writable(socket: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: a BorrowedFd is open for its whole lifetime and always names the same
    // descriptor; the AsyncFd lives inside this future, which holds that borrow, so it is
    // dropped (or forgotten with it) before the descriptor can be closed.
    let fd = unsafe { AsyncFd::register_with_interest(socket, Interest::WRITABLE) }.map_err(io::Error::from)?;
    fd.writable().await.map(drop)
}

/// Room for the events of one [`Epoll::wait`], reused from call to call.
pub(crate) struct Events {
    /// The kernel's output buffer.
    list: Box<[libc::epoll_event]>,
    /// How many of `list` the last wait filled.
    len: usize,
}

impl Events {
    /// Room for `capacity` events (at least one).
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Events { list: vec![libc::epoll_event { events: 0, u64: 0 }; capacity.max(1)].into_boxed_slice(), len: 0 }
    }

    /// How many events one wait may return.
    pub(crate) fn capacity(&self) -> usize {
        self.list.len()
    }

    /// The key of event `i` of the last wait.
    pub(crate) fn key(&self, i: usize) -> Option<u64> {
        // A by-value copy: the struct is packed on x86-64, so no reference to the field.
        self.list[..self.len].get(i).map(|event| event.u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_readable_socket_reports_its_key_until_drained_and_none_after_delete() {
        let epoll = Epoll::new().expect("epoll");
        let a = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let b = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        b.set_nonblocking(true).expect("nonblocking");
        epoll.add(b.as_fd(), 42).expect("add");
        let mut events = Events::with_capacity(4);
        assert_eq!(epoll.wait(&mut events).expect("wait"), 0);

        a.send_to(b"x", b.local_addr().expect("addr")).expect("send");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while epoll.wait(&mut events).expect("wait") == 0 {
            assert!(std::time::Instant::now() < deadline, "never readable");
            std::thread::yield_now();
        }
        assert_eq!(events.key(0), Some(42));
        // Level-triggered: still reported while the datagram waits.
        assert_eq!(epoll.wait(&mut events).expect("wait"), 1);
        let mut buf = [0u8; 8];
        assert_eq!(b.recv(&mut buf).expect("recv"), 1);
        assert_eq!(epoll.wait(&mut events).expect("wait"), 0);

        epoll.delete(b.as_fd()).expect("delete");
        a.send_to(b"y", b.local_addr().expect("addr")).expect("send");
        assert_eq!(epoll.wait(&mut events).expect("wait"), 0);
        assert!(epoll.delete(b.as_fd()).is_err(), "not registered any more");
    }
}
