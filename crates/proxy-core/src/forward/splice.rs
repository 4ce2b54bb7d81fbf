//! TCP forwarding on Linux: short exchanges are copied through a small buffer, bulk transfers
//! are spliced (splice(2) from one socket into a pipe and from the pipe into the other
//! socket, so payload bytes never enter user space).
//!
//! Each direction starts by copying, as HAProxy's `splice-auto` does: a read that fills
//! [`SMALL`] bytes marks the direction as bulk and later reads splice. A request/response
//! of a few bytes therefore costs one `read` and one `write` per message, with no pipe
//! taken from the pool and no speculative read that ends in EAGAIN; a stream of bulk data
//! costs no copy after its first [`SMALL`] bytes.
//!
//! This module holds all of the crate's `unsafe` code for splice; every block says why it
//! is sound. Pipes come from a small process-wide pool and are borrowed only while bytes are
//! in flight: an idle connection holds no pipe, no buffer, and no extra descriptors. A
//! direction whose reader stops reading while bytes sit in its pipe keeps that pipe (two
//! descriptors) until the bytes leave or the connection ends: bytes in a pipe cannot be
//! handed back to a socket, and draining them into memory would tax every bulk transfer
//! that outruns its reader for a moment.
//!
//! Where the kernel refuses splice on a socket (EINVAL, ENOSYS, EOPNOTSUPP), that direction
//! keeps copying.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;

use route_spec::Direction;

/// How many bytes one splice call may move: the default pipe capacity (16 pages).
const CHUNK: usize = 64 * 1024;
/// Idle pipes kept for reuse; more are closed when returned.
const POOL_MAX: usize = 256;
/// The copy buffer of a direction that has not yet shown bulk traffic: a read that fills it
/// switches the direction to splice (HAProxy's `splice-auto` switches when its 16 KiB buffer
/// fills). On the stack of the poll, so an idle connection holds none.
pub(crate) const SMALL: usize = 16 * 1024;

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

/// How a direction reads.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Through a [`SMALL`] buffer until a read fills it.
    #[default]
    Copy,
    /// Bulk seen: splice through a pooled pipe.
    Splice,
    /// Splice is off (`DOCKWARD_SPLICE=off`) or the kernel refused it: copy for good.
    CopyOnly,
}

/// Bytes a direction read in copy mode that the other socket did not take at once; boxed
/// so that a direction without any costs one pointer.
struct Pending {
    bytes: Box<[u8]>,
    /// How many of `bytes` went out already.
    sent: usize,
}

/// One direction of a relayed connection. Kept small: an idle connection holds two.
#[derive(Default)]
struct Half {
    /// Borrowed from the pool while bytes sit in it, or read readiness is being used up.
    pipe: Option<Pipe>,
    /// Bytes in the pipe not yet written out (at most [`CHUNK`]).
    in_pipe: u32,
    /// Copied bytes waiting for the other socket to take them.
    pending: Option<Box<Pending>>,
    mode: Mode,
    /// The source sent FIN; once every byte read got out the half-close is forwarded.
    eof: bool,
    /// FIN forwarded: this direction is finished.
    done: bool,
}

/// Both directions of one connection, copied or spliced, as one small hand-written future.
///
/// It waits with `poll_read_ready`/`poll_write_ready`, which keep the waker in the socket's
/// own slot, so the future itself is a few words per direction: an idle connection costs
/// its task and its two socket registrations, no buffer, no pipe.
///
/// When `from` sends FIN, writing toward the other side is shut down once every byte got
/// there (the half-close is forwarded) and the other direction keeps flowing. When the other
/// direction is already finished, the future resolves instead and the caller's `close` of
/// both sockets sends that FIN: the socket has nothing left to read (its peer's FIN was read),
/// so closing it is an orderly release, and `shutdown` first would be one more system call for
/// the same segment. Resolves when both directions are finished, or with the first error (a
/// reset ends both); the caller must then close both sockets.
pub(crate) struct Relay<'a, F> {
    client: &'a TcpStream,
    upstream: &'a TcpStream,
    /// `[client → upstream, upstream → client]`.
    halves: [Half; 2],
    on_bytes: F,
}

impl<'a, F: FnMut(Direction, usize) + Unpin> Relay<'a, F> {
    /// Relays `client` ⇄ `upstream`; `on_bytes` is told each count that reached its side.
    /// With `splice` false both directions only copy.
    pub(crate) fn new(client: &'a TcpStream, upstream: &'a TcpStream, splice: bool, on_bytes: F) -> Self {
        let mut halves: [Half; 2] = Default::default();
        if !splice {
            halves.iter_mut().for_each(|h| h.mode = Mode::CopyOnly);
        }
        Relay { client, upstream, halves, on_bytes }
    }
}

impl<F: FnMut(Direction, usize) + Unpin> Future for Relay<'_, F> {
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        for (i, direction) in [Direction::ClientToTarget, Direction::TargetToClient].into_iter().enumerate() {
            let (from, to) = match direction {
                Direction::ClientToTarget => (this.client, this.upstream),
                Direction::TargetToClient => (this.upstream, this.client),
            };
            let other_done = this.halves[1 - i].done;
            let on_bytes = &mut this.on_bytes;
            if let Err(e) = poll_half(&mut this.halves[i], from, to, other_done, cx, |n| on_bytes(direction, n)) {
                return Poll::Ready(Err(e));
            }
        }
        if this.halves.iter().all(|h| h.done) { Poll::Ready(Ok(())) } else { Poll::Pending }
    }
}

/// Moves what one direction can move now; returns once it must wait (a waker is then
/// registered by the `poll_*_ready` call that said so) or is finished. Tokio's budget is
/// spent by those calls, so a busy direction yields to the rest of the runtime in time.
fn poll_half(
    half: &mut Half,
    from: &TcpStream,
    to: &TcpStream,
    other_done: bool,
    cx: &mut Context<'_>,
    mut on_bytes: impl FnMut(usize),
) -> io::Result<()> {
    loop {
        if half.done {
            return Ok(());
        }
        // 1. What was read goes out first: from the pipe, or copied bytes left over.
        if half.in_pipe > 0 {
            let Some(pipe) = &half.pipe else { return Err(io::Error::other("bytes in flight without a pipe")) };
            if to.poll_write_ready(cx)?.is_pending() {
                return Ok(());
            }
            let len = half.in_pipe as usize;
            match to.try_io(Interest::WRITABLE, || splice(pipe.read.as_raw_fd(), to.as_raw_fd(), len)) {
                Ok(sent) => {
                    half.in_pipe -= sent as u32;
                    on_bytes(sent);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            continue;
        }
        if let Some(pending) = &mut half.pending {
            if to.poll_write_ready(cx)?.is_pending() {
                return Ok(());
            }
            match to.try_write(&pending.bytes[pending.sent..]) {
                Ok(sent) => {
                    pending.sent += sent;
                    on_bytes(sent);
                    if pending.sent == pending.bytes.len() {
                        half.pending = None;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            continue;
        }
        // 2. Everything before FIN got there: forward the half-close (unless the other way
        // is finished too: then the caller's close sends the FIN).
        if half.eof {
            if !other_done {
                let _ = SockRef::from(to).shutdown(std::net::Shutdown::Write);
            }
            half.done = true;
            if let Some(pipe) = half.pipe.take() {
                pipe.give_back(true);
            }
            return Ok(());
        }
        // 3. Read more; an idle direction gives its pipe back.
        if from.poll_read_ready(cx)?.is_pending() {
            if let Some(pipe) = half.pipe.take() {
                pipe.give_back(true);
            }
            return Ok(());
        }
        if half.mode == Mode::Splice {
            let pipe = match &half.pipe {
                Some(pipe) => pipe,
                None => match Pipe::take() {
                    Ok(pipe) => half.pipe.insert(pipe),
                    // No descriptor left for a pipe: copy this read instead.
                    Err(_) => {
                        copy_once(half, from, to, &mut on_bytes)?;
                        continue;
                    }
                },
            };
            match from.try_io(Interest::READABLE, || splice(from.as_raw_fd(), pipe.write.as_raw_fd(), CHUNK)) {
                Ok(0) => half.eof = true,
                Ok(n) => half.in_pipe = n as u32,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // Nothing moved by this call: the direction copies from now on.
                Err(e) if unsupported(&e) => {
                    half.mode = Mode::CopyOnly;
                    if let Some(pipe) = half.pipe.take() {
                        pipe.give_back(true);
                    }
                }
                Err(e) => return Err(e),
            }
            continue;
        }
        copy_once(half, from, to, &mut on_bytes)?;
    }
}

/// One read through a [`SMALL`] buffer on the stack and its write to `to`; what `to` does
/// not take is kept in [`Half::pending`].
fn copy_once(half: &mut Half, from: &TcpStream, to: &TcpStream, on_bytes: &mut impl FnMut(usize)) -> io::Result<()> {
    let mut buf = [MaybeUninit::<u8>::uninit(); SMALL];
    let mut short = 0;
    // A read shorter than the buffer emptied the socket (as Tokio assumes for its own reads on
    // epoll): it is reported as WouldBlock so that the read readiness is cleared and the next
    // poll waits for the next edge, instead of one more read that ends in EAGAIN.
    let read = from.try_io(Interest::READABLE, || {
        let got = SockRef::from(from).recv(&mut buf)?;
        if got > 0 && got < SMALL {
            short = got;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(got)
    });
    let n = match read {
        Ok(0) => {
            half.eof = true;
            return Ok(());
        }
        Ok(n) => {
            // The buffer filled: bulk. Splice from the next read on.
            if half.mode == Mode::Copy {
                half.mode = Mode::Splice;
            }
            n
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && short > 0 => short,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
        Err(e) => return Err(e),
    };
    // SAFETY: recv initialised the first `n` bytes of `buf` (`n` is its count).
    let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
    let sent = match to.try_write(bytes) {
        Ok(sent) => sent,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    if sent > 0 {
        on_bytes(sent);
    }
    if sent < n {
        half.pending = Some(Box::new(Pending { bytes: bytes[sent..].into(), sent: 0 }));
    }
    Ok(())
}
