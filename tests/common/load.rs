//! Load that proves nothing is lost: checksummed TCP streams and sequence-numbered UDP
//! datagrams, sent through a forwarder to echo targets and checked on the way back.
//!
//! - **TCP** ([`tcp_transfer`]): each connection writes a stream in which every 8-byte word
//!   is a function of the stream's seed and the word's offset, then half-closes. The target
//!   echoes; the client checks every byte it reads against its offset, so a lost,
//!   duplicated, reordered or flipped byte is found and named by offset, and checks that
//!   exactly as many bytes came back as went out before the target's FIN.
//! - **UDP** ([`udp_transfer`]): each session (one client socket) sends datagrams numbered
//!   0, 1, 2...; the size and every byte of datagram `n` follow from the session and `n`
//!   (sizes 1 to 65,507 bytes, the largest a UDP/IPv4 datagram can carry; datagrams of 8
//!   bytes or more start with their number). The target ([`UdpEcho`]) echoes each one and
//!   checks the numbers per sender on the way in; the client checks every echo against the
//!   datagram it expects next, and counts what is lost, reordered, duplicated or corrupted.
//!   Sending is paced by a token bucket (a byte rate) and by a window (bytes sent and not
//!   yet echoed), so no socket buffer on the path, each at least the kernel's 208 KiB, can
//!   overflow however the threads are scheduled.
//! - **Kernel drops** ([`UdpDrops`]): a datagram the kernel throws away because a
//!   receiver's buffer is full is counted per socket in /proc/net/udp; a transfer reports
//!   those of the forwarder's sockets and of its own apart, and the system-wide
//!   `RcvbufErrors`/`InErrors` deltas of /proc/net/snmp too.
//!
//! Everything runs on loopback threads with std sockets; nothing sleeps to synchronise
//! (the sender paces itself; receivers block on their sockets with timeouts).

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The largest UDP payload over IPv4: 65,535 − 20 (IP header) − 8 (UDP header).
pub const MAX_DATAGRAM: usize = 65_507;
/// What the kernel charges a receive buffer for a datagram of `size` bytes, at most: its
/// bookkeeping (about a kilobyte, even for 1 byte) and its data, in a buffer rounded up to a
/// power of two (up to twice the payload).
pub fn charge(size: usize) -> u64 {
    2 * size as u64 + 1280
}
/// The receive buffer asked for on the test's own UDP sockets (the kernel caps it at
/// `net.core.rmem_max`).
pub const SOCKET_BUFFER: usize = 8 << 20;

/// splitmix64: a fast, well-mixed function of one word.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

// ---------------------------------------------------------------------------------------
// TCP
// ---------------------------------------------------------------------------------------

/// The stream of one seed: word `i` (bytes `8i..8i+8`, little-endian) is `mix(seed ^ i·φ)`.
#[derive(Debug, Clone, Copy)]
pub struct Pattern {
    seed: u64,
}

impl Pattern {
    /// The stream of `seed`.
    pub fn new(seed: u64) -> Self {
        Pattern { seed: mix(seed) }
    }

    fn word(&self, i: u64) -> u64 {
        mix(self.seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    fn byte(&self, offset: u64) -> u8 {
        self.word(offset / 8).to_le_bytes()[(offset % 8) as usize]
    }

    /// Fills `buf` with the stream's bytes from `offset` on.
    pub fn fill(&self, offset: u64, buf: &mut [u8]) {
        let head = ((8 - offset % 8) % 8).min(buf.len() as u64) as usize;
        for (k, b) in buf[..head].iter_mut().enumerate() {
            *b = self.byte(offset + k as u64);
        }
        let start = offset + head as u64;
        let len = buf.len();
        let mut words = buf[head..].chunks_exact_mut(8);
        for (k, w) in (&mut words).enumerate() {
            w.copy_from_slice(&self.word(start / 8 + k as u64).to_le_bytes());
        }
        let tail = words.into_remainder();
        let tail_offset = offset + (len - tail.len()) as u64;
        for (k, b) in tail.iter_mut().enumerate() {
            *b = self.byte(tail_offset + k as u64);
        }
    }

    /// Checks that `got` is the stream from `offset` on; the offset of the first wrong byte.
    pub fn check(&self, offset: u64, got: &[u8]) -> Result<(), u64> {
        let head = ((8 - offset % 8) % 8).min(got.len() as u64) as usize;
        for (k, b) in got[..head].iter().enumerate() {
            if *b != self.byte(offset + k as u64) {
                return Err(offset + k as u64);
            }
        }
        let start = offset + head as u64;
        let mut words = got[head..].chunks_exact(8);
        for (k, w) in (&mut words).enumerate() {
            let i = start / 8 + k as u64;
            if u64::from_le_bytes(w.try_into().expect("8 bytes")) != self.word(i) {
                let at = w.iter().zip(self.word(i).to_le_bytes()).position(|(a, b)| *a != b).unwrap_or(0);
                return Err(i * 8 + at as u64);
            }
        }
        let tail = words.remainder();
        let tail_offset = offset + (got.len() - tail.len()) as u64;
        for (k, b) in tail.iter().enumerate() {
            if *b != self.byte(tail_offset + k as u64) {
                return Err(tail_offset + k as u64);
            }
        }
        Ok(())
    }
}

/// A loopback TCP echo target (a thread per connection), serving until the process ends.
pub fn tcp_echo_target() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the TCP echo target");
    let addr = listener.local_addr().expect("TCP echo target address");
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut stream = stream;
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) => {
                            let _ = stream.shutdown(Shutdown::Write);
                            return;
                        }
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
            });
        }
    });
    addr
}

/// What a TCP transfer moved.
#[derive(Debug, Clone)]
pub struct TcpReport {
    /// Bytes written by all connections (and, the transfer having succeeded, echoed back).
    pub bytes: u64,
    /// Connections used.
    pub connections: usize,
    /// From the first connect to the last byte checked.
    pub elapsed: Duration,
}

impl TcpReport {
    /// Bytes per second, one way.
    pub fn rate(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64()
    }
}

/// Sends `total` bytes (split over `connections`) through `via` to an echo target and checks
/// every byte of the echo. Fails on the first wrong byte, a short echo, an error, or when
/// nothing moves for `stall` (the transfer always ends by itself).
pub fn tcp_transfer(via: SocketAddr, total: u64, connections: usize, stall: Duration) -> Result<TcpReport, String> {
    let started = Instant::now();
    let share = total / connections as u64;
    let mut threads = Vec::new();
    for c in 0..connections {
        let bytes = if c + 1 == connections { total - share * (connections as u64 - 1) } else { share };
        let stream = TcpStream::connect(via).map_err(|e| format!("connect {via}: {e}"))?;
        stream.set_read_timeout(Some(stall)).map_err(|e| e.to_string())?;
        stream.set_write_timeout(Some(stall)).map_err(|e| e.to_string())?;
        let pattern = Pattern::new(0x7c9 + c as u64);
        let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
        let write = thread::spawn(move || -> Result<(), String> {
            let mut buf = vec![0u8; 256 * 1024];
            let mut sent = 0u64;
            while sent < bytes {
                let n = (bytes - sent).min(buf.len() as u64) as usize;
                pattern.fill(sent, &mut buf[..n]);
                writer.write_all(&buf[..n]).map_err(|e| format!("connection {c}: write at {sent}: {e}"))?;
                sent += n as u64;
            }
            writer.shutdown(Shutdown::Write).map_err(|e| format!("connection {c}: shutdown: {e}"))
        });
        let mut reader = stream;
        let read = thread::spawn(move || -> Result<(), String> {
            let mut buf = vec![0u8; 256 * 1024];
            let mut got = 0u64;
            loop {
                let n = reader.read(&mut buf).map_err(|e| format!("connection {c}: read at {got} of {bytes}: {e}"))?;
                if n == 0 {
                    break;
                }
                if got + n as u64 > bytes {
                    return Err(format!("connection {c}: more bytes echoed than sent ({} > {bytes})", got + n as u64));
                }
                pattern
                    .check(got, &buf[..n])
                    .map_err(|at| format!("connection {c}: wrong byte at offset {at} of the echo"))?;
                got += n as u64;
            }
            if got != bytes {
                return Err(format!("connection {c}: {got} bytes echoed of {bytes} sent before the end"));
            }
            Ok(())
        });
        threads.push((write, read));
    }
    let mut first_error = None;
    for (write, read) in threads {
        for result in [write.join(), read.join()] {
            let result = result.unwrap_or_else(|_| Err("a transfer thread panicked".into()));
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(TcpReport { bytes: total, connections, elapsed: started.elapsed() }),
    }
}

// ---------------------------------------------------------------------------------------
// UDP
// ---------------------------------------------------------------------------------------

/// The size of datagram `seq` of every session: 1 and 65,507 bytes regularly, and otherwise
/// spread over every power-of-two band from 1 byte up (log-uniform: as many tiny as large
/// ones, 10 KiB on average).
pub fn datagram_size(seq: u64) -> usize {
    match seq % 1000 {
        0 => MAX_DATAGRAM,
        1 => 1,
        _ => {
            let r = mix(seq ^ 0x51ce);
            let band = (r % 17) as u32; // 2^0 ..= 2^16
            let size = (1u64 << band) + (r >> 32) % (1u64 << band);
            size.min(MAX_DATAGRAM as u64) as usize
        }
    }
}

/// The first word of a datagram of 8 bytes or more: its number, and its session above bit 48.
fn header(session: u32, seq: u64) -> u64 {
    seq | (u64::from(session) << 48)
}

/// Fills `buf` (of datagram `seq`'s size) with datagram `seq` of `session`.
pub fn datagram(session: u32, seq: u64, buf: &mut [u8]) {
    let key = mix(header(session, seq));
    let mut words = buf.chunks_mut(8);
    if let Some(first) = words.next() {
        let len = first.len();
        // Too short for its number, a datagram's bytes are keyed by it instead.
        let word = if len == 8 { header(session, seq) } else { key };
        first.copy_from_slice(&word.to_le_bytes()[..len]);
    }
    for (i, w) in words.enumerate() {
        let len = w.len();
        w.copy_from_slice(&mix(key ^ (i as u64 + 1)).to_le_bytes()[..len]);
    }
}

/// The number a datagram of 8 bytes or more carries, with its session.
fn parse_header(data: &[u8]) -> Option<(u32, u64)> {
    let word = u64::from_le_bytes(data.get(..8)?.try_into().ok()?);
    Some(((word >> 48) as u32, word & ((1 << 48) - 1)))
}

/// A loopback UDP echo target: answers every datagram to its sender, and checks on the way
/// in that each sender's numbered datagrams arrive in order and without gaps.
pub struct UdpEcho {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its socket's inode, to find it in /proc/net/udp.
    pub inode: u64,
    stats: Arc<EchoStats>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

/// What the echo target saw (datagrams of 8 bytes or more only: the others carry no number).
#[derive(Debug, Default)]
struct EchoStats {
    received: AtomicU64,
    gaps: AtomicU64,
    backwards: AtomicU64,
}

impl UdpEcho {
    /// Binds 127.0.0.1:0 with a large receive buffer and starts echoing.
    pub fn start() -> Self {
        let socket = udp_socket();
        let addr = socket.local_addr().expect("UDP echo address");
        let inode = socket_inode(&socket);
        socket.set_read_timeout(Some(Duration::from_millis(100))).expect("read timeout");
        let stats = Arc::new(EchoStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, stopped) = (stats.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            let mut next: HashMap<(SocketAddr, u32), u64> = HashMap::new();
            while !stopped.load(Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                seen.received.fetch_add(1, Relaxed);
                if let Some((session, seq)) = parse_header(&buf[..n]) {
                    let expected = next.entry((from, session)).or_insert(0);
                    if seq < *expected {
                        seen.backwards.fetch_add(1, Relaxed);
                    } else {
                        // Datagrams under 8 bytes carry no number: skipping those is no gap.
                        if (*expected..seq).any(|k| datagram_size(k) >= 8) {
                            seen.gaps.fetch_add(1, Relaxed);
                        }
                        *expected = seq + 1;
                    }
                }
                let _ = socket.send_to(&buf[..n], from);
            }
        });
        UdpEcho { addr, inode, stats, stop, thread: Some(thread) }
    }
}

impl UdpEcho {
    /// Datagrams it has received so far.
    pub fn received(&self) -> u64 {
        self.stats.received.load(Relaxed)
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP socket on 127.0.0.1:0 with [`SOCKET_BUFFER`] asked for both ways.
fn udp_socket() -> UdpSocket {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).expect("UDP socket");
    socket.set_recv_buffer_size(SOCKET_BUFFER).expect("SO_RCVBUF");
    socket.set_send_buffer_size(SOCKET_BUFFER).expect("SO_SNDBUF");
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).expect("bind 127.0.0.1:0");
    socket.into()
}

/// The inode of a socket, as /proc/net/udp lists it.
fn socket_inode(socket: &impl AsRawFd) -> u64 {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", socket.as_raw_fd())).expect("readlink the socket fd");
    let link = link.to_string_lossy();
    link.trim_start_matches("socket:[").trim_end_matches(']').parse().expect("socket:[INODE]")
}

/// How a UDP transfer is paced.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Bytes per second, over all sessions (payload bytes).
    pub rate: u64,
    /// Bytes sent and not yet echoed, at most, each datagram counted as its [`charge`].
    pub window: u64,
}

/// Kernel drops of datagrams while a transfer ran.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UdpDrops {
    /// Per-socket drops (/proc/net/udp) of the forwarder's sockets: its listening socket
    /// and its sockets connected to the target.
    pub forwarder_sockets: u64,
    /// Per-socket drops of the test's own sockets (clients and echo target).
    pub test_sockets: u64,
    /// System-wide `Udp: RcvbufErrors` delta (/proc/net/snmp): every process's.
    pub snmp_rcvbuf_errors: u64,
    /// System-wide `Udp: InErrors` delta.
    pub snmp_in_errors: u64,
}

/// What a UDP transfer found.
#[derive(Debug, Clone, Default)]
pub struct UdpReport {
    /// Datagrams sent, over all sessions.
    pub sent: u64,
    /// Payload bytes sent.
    pub bytes: u64,
    /// Echoes received, checked and in order.
    pub received: u64,
    /// Datagrams never echoed.
    pub lost: u64,
    /// Echoes that came after a later one of their session.
    pub reordered: u64,
    /// Echoes that matched no datagram the session expected.
    pub corrupted: u64,
    /// Gaps the echo target saw in a sender's numbers on the way in.
    pub target_gaps: u64,
    /// Datagrams the echo target saw out of order on the way in.
    pub target_backwards: u64,
    /// Kernel drops.
    pub drops: UdpDrops,
    /// From the first datagram to the last echo (or giving up).
    pub elapsed: Duration,
}

impl UdpReport {
    /// Nothing lost, reordered or corrupted, either way.
    pub fn lossless(&self) -> bool {
        self.received == self.sent
            && self.lost == 0
            && self.reordered == 0
            && self.corrupted == 0
            && self.target_gaps == 0
            && self.target_backwards == 0
    }

    /// Payload bytes per second, one way.
    pub fn rate(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64()
    }
}

/// The charges of the echoes received so far, and a signal for each one.
#[derive(Debug, Default)]
struct Echoed {
    total: Mutex<u64>,
    more: Condvar,
}

impl Echoed {
    fn add(&self, charge: u64) {
        *self.total.lock().expect("lock") += charge;
        self.more.notify_one();
    }
}

/// What one session's receiver found.
#[derive(Debug, Default)]
struct SessionResult {
    received: u64,
    lost: u64,
    reordered: u64,
    corrupted: u64,
}

/// Sends `count` datagrams over `sessions` client sockets (round robin) through `via`, whose
/// target is `echo`, paced by `pace`, and checks every echo. Stops by itself: when every
/// echo is in, or when none has come for `stall`.
pub fn udp_transfer(
    via: SocketAddr,
    echo: &UdpEcho,
    sessions: u32,
    count: u64,
    pace: Pace,
    stall: Duration,
) -> UdpReport {
    let drops_before = udp_socket_drops(via, echo.addr);
    let snmp_before = snmp_udp();
    let (gaps_before, backwards_before) = (echo.stats.gaps.load(Relaxed), echo.stats.backwards.load(Relaxed));

    let clients: Vec<UdpSocket> = (0..sessions)
        .map(|_| {
            let s = udp_socket();
            s.connect(via).expect("connect the client socket");
            s.set_read_timeout(Some(Duration::from_millis(100))).expect("read timeout");
            s
        })
        .collect();
    let own_inodes: Vec<u64> = clients.iter().map(socket_inode).chain([echo.inode]).collect();
    let echoed = Arc::new(Echoed::default());
    let done = Arc::new(AtomicBool::new(false));
    let last_echo = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let per_session: Vec<u64> =
        (0..sessions).map(|s| count / sessions as u64 + u64::from((s as u64) < count % sessions as u64)).collect();

    // One receiver per session, checking its echoes in order.
    let receivers: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(s, socket)| {
            let socket = socket.try_clone().expect("clone the client socket");
            let expected_total = per_session[s];
            let (echoed, done, last_echo) = (echoed.clone(), done.clone(), last_echo.clone());
            thread::spawn(move || {
                let session = s as u32;
                let mut result = SessionResult::default();
                let mut next = 0u64;
                let mut buf = vec![0u8; 65_536];
                let mut want = vec![0u8; 65_536];
                while next < expected_total && !done.load(Relaxed) {
                    let Ok(n) = socket.recv(&mut buf) else { continue };
                    last_echo.store(started.elapsed().as_millis() as u64, Relaxed);
                    echoed.add(charge(n));
                    let got = &buf[..n];
                    // Which datagram is this? Its number when it carries one, else the next
                    // few candidates by size and content.
                    let seq = match parse_header(got) {
                        Some((sess, seq)) if sess == session => Some(seq),
                        Some(_) => None,
                        None => (next..next + 64).find(|&k| {
                            let size = datagram_size(k);
                            size == n && {
                                datagram(session, k, &mut want[..size]);
                                want[..size] == *got
                            }
                        }),
                    };
                    let Some(seq) = seq else {
                        result.corrupted += 1;
                        continue;
                    };
                    let size = datagram_size(seq);
                    datagram(session, seq, &mut want[..size]);
                    if size != n || want[..size] != *got {
                        result.corrupted += 1;
                    } else if seq < next {
                        result.reordered += 1;
                    } else {
                        result.lost += seq - next;
                        result.received += 1;
                        next = seq + 1;
                    }
                }
                result.lost += expected_total.saturating_sub(next);
                result
            })
        })
        .collect();

    // The sender: round robin over the sessions, within the window and the byte rate.
    let mut sent = 0u64;
    let mut bytes = 0u64;
    let mut seqs = vec![0u64; sessions as usize];
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut in_flight_sent = 0u64;
    let mut gave_up = false;
    // When the next datagram may leave: each one pushes it on by its size at the rate, from
    // when it actually left, so a sender that fell behind never catches up in a burst.
    let mut due = Duration::ZERO;
    'send: for i in 0..count {
        let s = (i % sessions as u64) as usize;
        let seq = seqs[s];
        seqs[s] += 1;
        let size = datagram_size(seq);
        datagram(s as u32, seq, &mut buf[..size]);
        let cost = charge(size);
        let mut total_echoed = echoed.total.lock().expect("lock");
        loop {
            let in_flight = in_flight_sent.saturating_sub(*total_echoed);
            let now = started.elapsed();
            let window_open = in_flight + cost <= pace.window.max(cost);
            if window_open && now >= due {
                break;
            }
            let quiet = now.saturating_sub(Duration::from_millis(last_echo.load(Relaxed)));
            if in_flight > 0 && quiet > stall {
                gave_up = true;
                break 'send;
            }
            // Woken by the next echo (window space) or when the rate allows the datagram.
            let wait = if window_open { due - now } else { Duration::from_millis(100) };
            total_echoed = echoed.more.wait_timeout(total_echoed, wait).expect("lock").0;
        }
        drop(total_echoed);
        if let Err(e) = clients[s].send(&buf[..size]) {
            panic!("send datagram {seq} of session {s} ({size} bytes): {e}");
        }
        sent += 1;
        bytes += size as u64;
        in_flight_sent += cost;
        due = due.max(started.elapsed()) + Duration::from_secs_f64(size as f64 / pace.rate as f64);
    }
    // Wait for the last echoes, or for the stream of them to stall.
    let mut total_echoed = echoed.total.lock().expect("lock");
    while !gave_up && *total_echoed < in_flight_sent {
        let quiet = started.elapsed().saturating_sub(Duration::from_millis(last_echo.load(Relaxed)));
        if quiet > stall {
            break;
        }
        total_echoed = echoed.more.wait_timeout(total_echoed, Duration::from_millis(100)).expect("lock").0;
    }
    drop(total_echoed);
    done.store(true, Relaxed);
    let elapsed = started.elapsed();
    let mut report = UdpReport { sent, bytes, elapsed, ..UdpReport::default() };
    for r in receivers {
        let r = r.join().expect("a receiver thread panicked");
        report.received += r.received;
        report.lost += r.lost;
        report.reordered += r.reordered;
        report.corrupted += r.corrupted;
    }
    // Datagrams never sent (the sender gave up) are not losses.
    report.lost = report.lost.saturating_sub(count - sent);
    report.target_gaps = echo.stats.gaps.load(Relaxed) - gaps_before;
    report.target_backwards = echo.stats.backwards.load(Relaxed) - backwards_before;
    let drops_after = udp_socket_drops(via, echo.addr);
    let own =
        |d: &HashMap<u64, (bool, u64)>| d.iter().filter(|(i, _)| own_inodes.contains(i)).map(|(_, v)| v.1).sum::<u64>();
    let forwarder = |d: &HashMap<u64, (bool, u64)>| d.values().filter(|v| v.0).map(|v| v.1).sum::<u64>();
    report.drops.test_sockets = own(&drops_after).saturating_sub(own(&drops_before));
    report.drops.forwarder_sockets = forwarder(&drops_after).saturating_sub(forwarder(&drops_before));
    let snmp_after = snmp_udp();
    report.drops.snmp_rcvbuf_errors = snmp_after.0.saturating_sub(snmp_before.0);
    report.drops.snmp_in_errors = snmp_after.1.saturating_sub(snmp_before.1);
    report
}

/// /proc/net/udp: for each socket inode, whether it is the forwarder's (bound to `via`, or
/// connected to `target`) and its drop count.
fn udp_socket_drops(via: SocketAddr, target: SocketAddr) -> HashMap<u64, (bool, u64)> {
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => format!("{:08X}:{:04X}", u32::from_le_bytes(v4.ip().octets()), v4.port()),
        SocketAddr::V6(_) => String::new(),
    };
    let (via, target) = (hex(via), hex(target));
    let text = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
            let (local, remote, inode, drops) = (f.get(1)?, f.get(2)?, f.get(9)?, f.get(12)?);
            let forwarder = *local == via || *remote == target;
            Some((inode.parse().ok()?, (forwarder, drops.parse().ok()?)))
        })
        .collect()
}

/// /proc/net/snmp `Udp:` RcvbufErrors and InErrors.
fn snmp_udp() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else { return (0, 0) };
    let pairs: HashMap<&str, u64> = names
        .split_whitespace()
        .zip(values.split_whitespace())
        .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
        .collect();
    (pairs.get("RcvbufErrors").copied().unwrap_or(0), pairs.get("InErrors").copied().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pattern_checks_from_any_offset_and_names_the_first_wrong_byte() {
        let p = Pattern::new(3);
        let mut whole = vec![0u8; 1000];
        p.fill(0, &mut whole);
        let mut part = vec![0u8; 333];
        p.fill(13, &mut part);
        assert_eq!(part, whole[13..346]);
        assert_eq!(p.check(13, &part), Ok(()));
        part[100] ^= 1;
        assert_eq!(p.check(13, &part), Err(113));
    }

    #[test]
    fn datagram_sizes_cover_1_to_65507() {
        let sizes: Vec<usize> = (0..20_000).map(datagram_size).collect();
        assert_eq!(sizes.iter().min(), Some(&1));
        assert_eq!(sizes.iter().max(), Some(&MAX_DATAGRAM));
        assert!(sizes.iter().any(|&s| (2..8).contains(&s)));
        assert!(sizes.iter().any(|&s| s > 40_000 && s < MAX_DATAGRAM));
    }

    #[test]
    fn a_datagram_names_its_number_and_session() {
        let mut buf = vec![0u8; 100];
        datagram(3, 77, &mut buf);
        assert_eq!(parse_header(&buf), Some((3, 77)));
        let mut other = vec![0u8; 100];
        datagram(3, 78, &mut other);
        assert_ne!(buf[8..], other[8..]);
    }
}
