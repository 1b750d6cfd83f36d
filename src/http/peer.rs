//! Noticing at once that a stream's client has gone.
//!
//! A client that dies leaves its TCP connection to be closed by its
//! kernel; the server only learns of it on its next write, which on an
//! idle stream is the next heartbeat, seconds later. Meanwhile a unicast
//! event handed to that stream is lost. So each connection's socket is
//! remembered ([`remember`], from the server's `on_connect`), and a
//! stream watches a duplicate of it ([`gone`]): end-of-file or a reset
//! ends the stream, and its subscription, the moment they arrive.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A connection's socket, kept in its extensions.
#[derive(Debug, Clone, Copy)]
pub struct PeerFd(pub RawFd);

/// For `HttpServer::on_connect`: remembers the socket of a TCP
/// connection.
pub fn remember(conn: &dyn std::any::Any, ext: &mut actix_web::dev::Extensions) {
    if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        ext.insert(PeerFd(tcp.as_raw_fd()));
    }
}

/// Resolves when the client of `req` has gone (never, on a connection
/// [`remember`] did not see): what a stream ends with.
pub fn departure(req: &actix_web::HttpRequest) -> impl std::future::Future<Output = ()> + 'static {
    let fd = req.conn_data::<PeerFd>().copied();
    async move {
        match fd {
            Some(fd) => gone(fd).await,
            None => std::future::pending().await,
        }
    }
}

/// Resolves when the peer of `fd` has closed or reset the connection
/// (never, if the socket cannot be watched). Call it while the
/// connection is open (in its request's handler).
pub async fn gone(fd: PeerFd) {
    // SAFETY: the fd belongs to the connection this request is served
    // on, which stays open at least as long as the handler that calls
    // this; the duplicate made here is independent of it from then on.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd.0) };
    let Ok(owned) = borrowed.try_clone_to_owned() else {
        return std::future::pending().await;
    };
    let socket = socket2::Socket::from(owned);
    if socket.set_nonblocking(true).is_err() {
        return std::future::pending().await;
    }
    // SAFETY: the socket owns its fd (a duplicate made above) and keeps
    // it open, the same one, for as long as the `AsyncFd` holds it.
    let Ok(watched) = (unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) })
    else {
        return std::future::pending().await;
    };
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    loop {
        let Ok(mut ready) = watched.readable().await else {
            return;
        };
        match ready.get_inner().peek(&mut buf) {
            Ok(0) => return,
            Ok(_) => {
                // The client sent something (it should not on a stream):
                // not a close. Wait for the next change.
                ready.clear_ready();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => ready.clear_ready(),
            Err(_) => return,
        }
    }
}
