//! Names outside the domain go to the configured recursors (Consul's `recursors`): tried in
//! order, each for `recursor_timeout`, over UDP and again over TCP when the UDP answer was
//! truncated. The first answer wins; none means SERVFAIL, as with Consul.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_server::proto::op::{Edns, Message, MessageType, OpCode, Query};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A recursor's address: `host:port`, or an IP alone for port 53.
pub fn parse_recursor(text: &str) -> Result<SocketAddr, String> {
    let t = text.trim();
    t.parse::<SocketAddr>()
        .or_else(|_| t.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| format!("recursor {text:?} is not an IP address or IP:port"))
}

/// `--recursor` values (blank ones skipped); the error names the bad one.
pub fn parse_recursors(list: &[String]) -> Result<Vec<SocketAddr>, String> {
    list.iter().filter(|r| !r.trim().is_empty()).map(|r| parse_recursor(r)).collect()
}

/// Asks the recursors `query` (recursion desired); the first one that answers gives the answer.
pub async fn ask(recursors: &[SocketAddr], query: &Query, timeout: Duration) -> Option<Message> {
    let mut m = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(query.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    m.set_edns(edns);
    let id = m.metadata.id;
    let packet = m.to_vec().ok()?;
    for r in recursors {
        let answer = match tokio::time::timeout(timeout, udp(*r, &packet)).await {
            Ok(Ok(a)) if a.metadata.id == id && a.metadata.truncation => {
                tokio::time::timeout(timeout, tcp(*r, &packet)).await.ok().and_then(Result::ok)
            }
            Ok(Ok(a)) => Some(a),
            _ => None,
        };
        match answer {
            Some(a) if a.metadata.id == id && a.metadata.message_type == MessageType::Response => return Some(a),
            _ => tracing::debug!(recursor = %r, "DNS: no answer from the recursor"),
        }
    }
    None
}

async fn udp(to: SocketAddr, packet: &[u8]) -> std::io::Result<Message> {
    let local: SocketAddr = if to.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let socket = tokio::net::UdpSocket::bind(local).await?;
    socket.connect(to).await?;
    socket.send(packet).await?;
    let mut buf = vec![0u8; 65_535];
    let n = socket.recv(&mut buf).await?;
    Message::from_vec(&buf[..n]).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
}

async fn tcp(to: SocketAddr, packet: &[u8]) -> std::io::Result<Message> {
    let mut stream = tokio::net::TcpStream::connect(to).await?;
    let len = u16::try_from(packet.len()).map_err(|_| std::io::Error::other("query too long"))?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(packet).await?;
    let len = stream.read_u16().await? as usize;
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await?;
    Message::from_vec(&buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recursor_addresses() {
        assert_eq!(parse_recursor("8.8.8.8").unwrap(), "8.8.8.8:53".parse().unwrap());
        assert_eq!(parse_recursor("127.0.0.1:5353").unwrap(), "127.0.0.1:5353".parse().unwrap());
        assert_eq!(parse_recursor("::1").unwrap(), "[::1]:53".parse().unwrap());
        assert!(parse_recursor("dns.google").unwrap_err().contains("dns.google"));
    }
}
