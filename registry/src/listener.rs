//! The HTTP API's listener (servers' and sidecars'): warp's routes served by hyper, with Consul's limits against a client
//! that takes too much: at most `http_max_conns_per_client` open connections per client IP (Consul's
//! default 200; a connection over it gets 429 and is closed, as Consul's connlimit answers), and a
//! header read timeout, so a client that trickles its request headers (slowloris) is cut off.
//! Serves plain HTTP, TLS, or both on one port (see [`Transport`]). Stops gracefully: open requests
//! finish, then their connections close.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use warp::Filter;

/// Consul's answer on a connection over the limit.
const TOO_MANY: &str = "Your IP is issuing too many concurrent connections, please rate limit your calls\n";

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections one client IP may hold; 0: no limit.
    pub max_conns_per_client: usize,
    /// How long a client has to send a request's headers once it started one.
    pub header_read_timeout: Duration,
}

/// Open connections by client IP.
#[derive(Debug, Clone, Default)]
pub struct ConnCounter(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One counted connection; uncounted when dropped.
#[derive(Debug)]
pub struct ConnGuard {
    counter: ConnCounter,
    ip: IpAddr,
}

impl ConnCounter {
    /// Counts a new connection from `ip`, or None when it already holds `max` (0: no limit).
    pub fn acquire(&self, ip: IpAddr, max: usize) -> Option<ConnGuard> {
        let mut open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if max > 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(ConnGuard { counter: self.clone(), ip })
    }

    pub fn open(&self, ip: IpAddr) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut open = self.counter.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Whether a repeated warning may be logged now: at most once a minute per `last` (a throttle for
/// refusals a misbehaving peer or client repeats many times a second).
pub fn once_a_minute(last: &std::sync::atomic::AtomicU64) -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let seen = last.load(Relaxed);
    now >= seen + 60 && last.compare_exchange(seen, now, Relaxed, Relaxed).is_ok()
}

/// Says a client went over the limit at most once a minute (it may retry in a tight loop).
fn log_refusal(ip: IpAddr, max: usize) {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    if once_a_minute(&LAST) {
        tracing::warn!(%ip, max, "a client holds http_max_conns_per_client connections: its new ones get 429 (logged once a minute)");
    }
}

/// How a listener takes TLS.
#[derive(Clone)]
pub enum Transport {
    Plain,
    /// TLS only (the HTTPS port).
    Tls(tokio_rustls::TlsAcceptor),
    /// TLS or plain HTTP, told apart by the first byte: the RPC port while `verify_incoming` is off
    /// (Consul's RPC port takes both the same way).
    TlsOrPlain(tokio_rustls::TlsAcceptor),
}

/// Says a TLS handshake failed at most once a minute: a stranger (another cluster's server, a
/// client without a certificate) may retry forever.
fn log_handshake_failure(peer: std::net::SocketAddr, error: &std::io::Error) {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    if once_a_minute(&LAST) {
        tracing::warn!(%peer, %error, "TLS handshake refused: a certificate our CA did not sign, none where verify_incoming requires one, or plain HTTP on a TLS port (logged once a minute)");
    }
}

/// Serves `filter` on `listener` until `stop` completes.
pub async fn serve<F>(
    listener: tokio::net::TcpListener,
    filter: F,
    limits: Limits,
    transport: Transport,
    stop: impl Future<Output = ()>,
) where
    F: Filter + Clone + Send + Sync + 'static,
    F::Extract: warp::Reply,
{
    let counter = ConnCounter::default();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let (mut stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let Some(guard) = counter.acquire(peer.ip(), limits.max_conns_per_client) else {
            log_refusal(peer.ip(), limits.max_conns_per_client);
            tokio::spawn(async move {
                let reply = format!(
                    "HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{TOO_MANY}",
                    TOO_MANY.len()
                );
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(reply.as_bytes())).await;
                let _ = stream.shutdown().await;
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (filter, transport, watcher) = (filter.clone(), transport.clone(), graceful.watcher());
        // Handshakes run in the connection's task: a slow one must not hold up the accept loop.
        tokio::spawn(async move {
            let _guard = guard;
            let acceptor = match transport {
                Transport::Plain => None,
                Transport::Tls(a) => Some(a),
                Transport::TlsOrPlain(a) => {
                    let mut first = [0u8; 1];
                    match tokio::time::timeout(limits.header_read_timeout, stream.peek(&mut first)).await {
                        Ok(Ok(1)) if first[0] == crate::tls::HANDSHAKE_BYTE => Some(a),
                        Ok(Ok(1)) => None,
                        _ => return,
                    }
                }
            };
            match acceptor {
                None => serve_connection(stream, filter, limits, watcher, peer).await,
                Some(a) => match tokio::time::timeout(limits.header_read_timeout, a.accept(stream)).await {
                    Ok(Ok(tls)) => serve_connection(tls, filter, limits, watcher, peer).await,
                    Ok(Err(e)) => log_handshake_failure(peer, &e),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                },
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

async fn serve_connection<I, F>(
    io: I,
    filter: F,
    limits: Limits,
    watcher: hyper_util::server::graceful::Watcher,
    peer: std::net::SocketAddr,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Filter + Clone + Send + Sync + 'static,
    F::Extract: warp::Reply,
{
    let service = hyper_util::service::TowerToHyperService::new(warp::service(filter));
    let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder.http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    let conn = builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(io), service);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        tracing::debug!(%peer, error = %e, "HTTP connection ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_warning_is_let_through_once_a_minute() {
        let last = std::sync::atomic::AtomicU64::new(0);
        assert!(once_a_minute(&last));
        assert!(!once_a_minute(&last), "again at once: held back");
        let now = last.load(std::sync::atomic::Ordering::Relaxed);
        last.store(now - 61, std::sync::atomic::Ordering::Relaxed);
        assert!(once_a_minute(&last), "a minute later: let through");
    }

    #[test]
    fn connections_are_counted_per_client_and_released() {
        let c = ConnCounter::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = c.acquire(a, 2).expect("1 of 2");
        let second = c.acquire(a, 2).expect("2 of 2");
        assert!(c.acquire(a, 2).is_none(), "a third from the same client");
        let other = c.acquire(b, 2).expect("another client has its own count");
        drop(first);
        let again = c.acquire(a, 2).expect("a slot came free");
        drop((second, again, other));
        assert_eq!((c.open(a), c.open(b)), (0, 0));
        let unlimited: Vec<ConnGuard> = (0..500).filter_map(|_| c.acquire(a, 0)).collect();
        assert_eq!(unlimited.len(), 500, "0 means no limit");
    }
}
