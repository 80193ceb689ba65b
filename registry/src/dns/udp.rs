//! The DNS interface's UDP side: questions read and answers sent in batches, one `recvmmsg` and one
//! `sendmmsg` system call per batch instead of two per answer.
//!
//! Measured (docs/benchmarks.md, issue 15): with one `recvfrom` and one `sendto` per answer, system
//! calls were about 40% of the server's time and the runtime's wake-ups another 12%; the answers
//! themselves, cached per service, a third. Answers are still hickory's: each question goes through
//! [`super::answer_from`] (hickory decodes it, our `RequestHandler` answers, hickory encodes). An
//! answer that has to wait (a recursor, another datacenter, a catalog read that is not cached) is
//! finished by a task of its own and sent alone, so one slow question never holds up the batch.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::task::Poll;

use nix::sys::socket::{recvmmsg, sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::{answer_from, Catalog, Handler};

/// Questions read per system call at most.
const BATCH: usize = 64;
/// Larger than any question a client sends over UDP (EDNS allows up to 4096 bytes; ours are < 300).
const MAX_QUESTION: usize = 4096;

/// Serves questions arriving on `socket` until the task is dropped.
pub async fn serve<C: Catalog>(socket: UdpSocket, handler: Arc<Handler<C>>) {
    let socket = Arc::new(socket);
    let mut buffers = vec![[0u8; MAX_QUESTION]; BATCH];
    let mut replies: Vec<(Vec<u8>, SockaddrStorage)> = Vec::with_capacity(BATCH);
    loop {
        let received = match socket.async_io(Interest::READABLE, || receive(&socket, &mut buffers)).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors surface here on Linux (a client that went away): not fatal.
                tracing::debug!(error = %e, "DNS: receiving over UDP");
                continue;
            }
        };
        for (i, len, from) in received {
            let Some(src) = socket_addr(&from) else { continue };
            // Like hickory's server: never answer port 0.
            if src.port() == 0 {
                continue;
            }
            let mut answer = Box::pin(answer_from(handler.clone(), buffers[i][..len].to_vec(), src, true));
            match futures::poll!(answer.as_mut()) {
                Poll::Ready(Some(bytes)) => replies.push((bytes, from)),
                Poll::Ready(None) => {}
                Poll::Pending => {
                    let socket = socket.clone();
                    tokio::spawn(async move {
                        if let Some(bytes) = answer.await {
                            let _ = socket.send_to(&bytes, src).await;
                        }
                    });
                }
            }
        }
        if !replies.is_empty() {
            send_all(&socket, &replies).await;
            replies.clear();
        }
    }
}

/// Reads what is queued, up to a batch: each question's buffer position, length and sender.
fn receive(socket: &UdpSocket, buffers: &mut [[u8; MAX_QUESTION]]) -> io::Result<Vec<(usize, usize, SockaddrStorage)>> {
    let mut slices: Vec<[io::IoSliceMut<'_>; 1]> =
        buffers.iter_mut().map(|b| [io::IoSliceMut::new(&mut b[..])]).collect();
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(slices.len(), None);
    let got = recvmmsg(socket.as_raw_fd(), &mut headers, slices.iter_mut(), MsgFlags::MSG_DONTWAIT, None)
        .map_err(io::Error::from)?;
    // Positions kept: a message without a sender is skipped, not allowed to shift the others.
    Ok(got.enumerate().filter_map(|(i, m)| Some((i, m.bytes, m.address?))).collect())
}

/// Sends every reply, in as few system calls as the socket's buffer allows.
async fn send_all(socket: &UdpSocket, replies: &[(Vec<u8>, SockaddrStorage)]) {
    let mut sent = 0;
    while sent < replies.len() {
        let rest = &replies[sent..];
        match socket.async_io(Interest::WRITABLE, || send(socket, rest)).await {
            Ok(n) => sent += n.max(1),
            Err(e) => {
                // A reply that cannot be sent (its client's address unreachable): skip it.
                tracing::debug!(error = %e, "DNS: sending over UDP");
                sent += 1;
            }
        }
    }
}

fn send(socket: &UdpSocket, replies: &[(Vec<u8>, SockaddrStorage)]) -> io::Result<usize> {
    let slices: Vec<[io::IoSlice<'_>; 1]> = replies.iter().map(|(b, _)| [io::IoSlice::new(b)]).collect();
    let addrs: Vec<Option<SockaddrStorage>> = replies.iter().map(|(_, a)| Some(*a)).collect();
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(replies.len(), None);
    let results = sendmmsg(socket.as_raw_fd(), &mut headers, &slices, addrs, [], MsgFlags::MSG_DONTWAIT)
        .map_err(io::Error::from)?;
    Ok(results.count())
}

fn socket_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::from((v4.ip(), v4.port())));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::from((v6.ip(), v6.port())))
}
