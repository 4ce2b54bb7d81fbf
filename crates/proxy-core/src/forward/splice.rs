//! Zero-copy TCP forwarding on Linux: splice(2) from one socket into a pipe and from the
//! pipe into the other socket, so payload bytes never enter user space.
//!
//! This module holds all of the crate's `unsafe` code for splice; every block says why it
//! is sound. Pipes come from a small process-wide pool and are borrowed only while bytes are
//! in flight: an idle connection holds no pipe, no buffer, and no extra descriptors.
//!
//! [`SpliceBoth`] reports [`Spliced::Unsupported`] when the kernel refuses splice on these sockets
//! before any byte moved (EINVAL, ENOSYS), so the caller can fall back to a buffered copy.

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::hooks::Direction;

/// How many bytes one splice call may move: the default pipe capacity (16 pages).
const CHUNK: usize = 64 * 1024;
/// Idle pipes kept for reuse; more are closed when returned.
const POOL_MAX: usize = 256;

static POOL: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());

/// Whether splice is used: yes, unless the environment says `DOCKWARD_SPLICE=off` (for
/// comparing against the buffered copy, or working around a kernel that misbehaves).
pub(crate) fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var_os("DOCKWARD_SPLICE").is_none_or(|v| v != "off"))
}

/// The two ends of a kernel pipe.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds: [RawFd; 2] = [-1, -1];
        // SAFETY: `fds` is a valid, writable array of two descriptors, as pipe2 requires.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Pipe { read, write })
    }

    fn take() -> io::Result<Pipe> {
        let pooled = POOL.lock().ok().and_then(|mut pool| pool.pop());
        match pooled {
            Some(pipe) => Ok(pipe),
            None => Pipe::new(),
        }
    }

    /// Returns an empty pipe to the pool (a pipe still holding bytes is closed instead).
    fn give_back(self, empty: bool) {
        if !empty {
            return;
        }
        if let Ok(mut pool) = POOL.lock()
            && pool.len() < POOL_MAX
        {
            pool.push(self);
        }
    }
}

/// How a spliced copy ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Spliced {
    /// `from` sent FIN and every byte reached `to`.
    Eof,
    /// The kernel refused splice before any byte moved; copy another way.
    Unsupported,
}

/// One splice call; returns the byte count, 0 at end of input.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are open for the duration of the call (borrowed from live
    // sockets and pipe ends), null offsets are required for sockets and pipes, and splice
    // touches no user memory.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}

fn unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP))
}

/// One direction of a spliced connection.
#[derive(Default)]
struct Half {
    /// Borrowed from the pool while bytes sit in it, or read readiness is being used up.
    pipe: Option<Pipe>,
    /// Bytes in the pipe not yet written out.
    in_pipe: usize,
    /// The source sent FIN; once the pipe is empty the half-close is forwarded.
    eof: bool,
    /// FIN forwarded: this direction is finished.
    done: bool,
}

/// Both directions of one connection, spliced, as one small hand-written future.
///
/// It waits with `poll_read_ready`/`poll_write_ready`, which keep the waker in the socket's
/// own slot, so the future itself is a few words per direction: an idle connection costs
/// its task and its two socket registrations, no buffer, no pipe.
///
/// When `from` sends FIN, writing toward the other side is shut down once every byte got
/// there (the half-close is forwarded) and the other direction keeps flowing. Resolves when
/// both directions are finished, or with the first error (a reset ends both).
pub(crate) struct SpliceBoth<'a, F> {
    client: &'a TcpStream,
    upstream: &'a TcpStream,
    /// `[client → upstream, upstream → client]`.
    halves: [Half; 2],
    moved_any: bool,
    on_bytes: F,
}

impl<'a, F: FnMut(Direction, usize) + Unpin> SpliceBoth<'a, F> {
    /// Splices `client` ⇄ `upstream`; `on_bytes` is told each count that reached its side.
    pub(crate) fn new(client: &'a TcpStream, upstream: &'a TcpStream, on_bytes: F) -> Self {
        SpliceBoth { client, upstream, halves: Default::default(), moved_any: false, on_bytes }
    }
}

/// What a direction's poll ended on.
enum Step {
    /// Waiting for readiness (a waker is registered) or finished.
    Parked,
    /// The kernel refused splice on these sockets.
    Unsupported,
}

impl<F: FnMut(Direction, usize) + Unpin> Future for SpliceBoth<'_, F> {
    type Output = io::Result<Spliced>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        for (i, direction) in [Direction::ClientToTarget, Direction::TargetToClient].into_iter().enumerate() {
            let (from, to) = match direction {
                Direction::ClientToTarget => (this.client, this.upstream),
                Direction::TargetToClient => (this.upstream, this.client),
            };
            match poll_half(&mut this.halves[i], from, to, cx, &mut this.moved_any, |n| (this.on_bytes)(direction, n)) {
                Ok(Step::Parked) => {}
                Ok(Step::Unsupported) if !this.moved_any => return Poll::Ready(Ok(Spliced::Unsupported)),
                Ok(Step::Unsupported) => {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::Unsupported, "splice refused mid-stream")));
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        if this.halves.iter().all(|h| h.done) { Poll::Ready(Ok(Spliced::Eof)) } else { Poll::Pending }
    }
}

/// Moves what one direction can move now; returns once it must wait (a waker is then
/// registered by the `poll_*_ready` call that said so) or is finished. Tokio's budget is
/// spent by those calls, so a busy direction yields to the rest of the runtime in time.
fn poll_half(
    half: &mut Half,
    from: &TcpStream,
    to: &TcpStream,
    cx: &mut Context<'_>,
    moved_any: &mut bool,
    mut on_bytes: impl FnMut(usize),
) -> io::Result<Step> {
    loop {
        if half.done {
            return Ok(Step::Parked);
        }
        // 1. What is in the pipe goes out first.
        if half.in_pipe > 0 {
            let Some(pipe) = &half.pipe else { return Err(io::Error::other("bytes in flight without a pipe")) };
            match to.poll_write_ready(cx) {
                Poll::Pending => return Ok(Step::Parked),
                Poll::Ready(r) => r?,
            }
            match to.try_io(Interest::WRITABLE, || splice(pipe.read.as_raw_fd(), to.as_raw_fd(), half.in_pipe)) {
                Ok(sent) => {
                    half.in_pipe -= sent;
                    on_bytes(sent);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            continue;
        }
        // 2. Everything before FIN got there: forward the half-close.
        if half.eof {
            let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
            half.done = true;
            if let Some(pipe) = half.pipe.take() {
                pipe.give_back(true);
            }
            return Ok(Step::Parked);
        }
        // 3. Read more into the (empty) pipe; an idle direction gives its pipe back.
        match from.poll_read_ready(cx) {
            Poll::Pending => {
                if let Some(pipe) = half.pipe.take() {
                    pipe.give_back(true);
                }
                return Ok(Step::Parked);
            }
            Poll::Ready(r) => r?,
        }
        let pipe = match &half.pipe {
            Some(pipe) => pipe,
            None => half.pipe.insert(Pipe::take()?),
        };
        match from.try_io(Interest::READABLE, || splice(from.as_raw_fd(), pipe.write.as_raw_fd(), CHUNK)) {
            Ok(0) => half.eof = true,
            Ok(n) => {
                half.in_pipe = n;
                *moved_any = true;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if !*moved_any && unsupported(&e) => return Ok(Step::Unsupported),
            Err(e) => return Err(e),
        }
    }
}
