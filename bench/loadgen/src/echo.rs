//! The echo server behind every proxy: TCP on a tokio current-thread runtime (thousands of
//! idle connections cost little), UDP on a plain thread with a large receive buffer so the
//! server is never where datagrams are lost.

use std::io;
use std::net::{SocketAddr, UdpSocket};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::sock::big_buffers;

/// Runs until the process is killed.
pub fn run(tcp: Option<SocketAddr>, udp: Option<SocketAddr>) -> io::Result<()> {
    let udp_thread = match udp {
        Some(addr) => {
            let sock = UdpSocket::bind(addr)?;
            big_buffers(&sock);
            Some(std::thread::spawn(move || udp_echo(sock)))
        }
        None => None,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        match tcp {
            Some(addr) => {
                let listener = crate::sock::tcp_listener(addr)?;
                ready();
                loop {
                    match listener.accept().await {
                        Ok((stream, _)) => {
                            tokio::spawn(tcp_echo(stream));
                        }
                        // EMFILE and the like: back off instead of spinning.
                        Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
                    }
                }
            }
            None => {
                ready();
                std::future::pending::<io::Result<()>>().await
            }
        }
    })?;
    if let Some(t) = udp_thread {
        let _ = t.join();
    }
    Ok(())
}

async fn tcp_echo(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = stream.shutdown().await;
}

fn udp_echo(sock: UdpSocket) {
    let mut buf = vec![0u8; 65_536];
    loop {
        if let Ok((n, peer)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], peer);
        }
    }
}

fn ready() {
    let mut line = crate::stats::JsonLine::new("echo-server");
    line.str("event", "ready");
    line.print();
}
