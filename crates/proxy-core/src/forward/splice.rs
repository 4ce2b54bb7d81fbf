//! Zero-copy TCP forwarding on Linux: splice(2) from one socket into a pipe and from the
//! pipe into the other socket, so payload bytes never enter user space.
//!
//! This module holds all of the crate's `unsafe` code for splice; every block says why it
//! is sound. Pipes come from a small process-wide pool and are borrowed only while bytes are
//! in flight: an idle connection holds no pipe, no buffer, and no extra descriptors.
//!
//! [`copy`] reports [`Spliced::Unsupported`] when the kernel refuses splice on these sockets
//! before any byte moved (EINVAL, ENOSYS), so the caller can fall back to a buffered copy.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use tokio::io::Interest;
use tokio::net::TcpStream;

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

/// Copies `from` → `to` through a pooled pipe until `from` sends FIN; `on_bytes` is called
/// with each count that reached `to`. The caller forwards the half-close.
pub(crate) async fn copy(from: &TcpStream, to: &TcpStream, mut on_bytes: impl FnMut(usize)) -> io::Result<Spliced> {
    let mut moved_any = false;
    loop {
        from.readable().await?;
        // Borrow a pipe only now that bytes are waiting.
        let pipe = Pipe::take()?;
        let mut in_pipe = 0usize;
        let result = async {
            loop {
                let n =
                    match from.try_io(Interest::READABLE, || splice(from.as_raw_fd(), pipe.write.as_raw_fd(), CHUNK)) {
                        Ok(0) => return Ok(true),
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                        Err(e) => return Err(e),
                    };
                in_pipe += n;
                moved_any = true;
                while in_pipe > 0 {
                    match to.try_io(Interest::WRITABLE, || splice(pipe.read.as_raw_fd(), to.as_raw_fd(), in_pipe)) {
                        Ok(sent) => {
                            in_pipe -= sent;
                            on_bytes(sent);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
                        Err(e) => return Err(e),
                    }
                }
                // Readiness waits do not spend the task's budget; without this a busy
                // direction could starve its sibling, the idle timer and route removal.
                tokio::task::coop::consume_budget().await;
            }
        }
        .await;
        pipe.give_back(in_pipe == 0);
        match result {
            Ok(true) => return Ok(Spliced::Eof),
            Ok(false) => continue,
            Err(e) if !moved_any && unsupported(&e) => return Ok(Spliced::Unsupported),
            Err(e) => return Err(e),
        }
    }
}
