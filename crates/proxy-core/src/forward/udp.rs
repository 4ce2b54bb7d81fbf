//! The UDP forwarder (placeholder until the session manager lands).

use tokio::net::UdpSocket;

use super::RouteCtx;

/// Serves datagrams until the route's connections are closed.
pub(crate) async fn serve(socket: UdpSocket, ctx: RouteCtx) {
    ctx.close_conns.cancelled().await;
    drop(socket);
}
