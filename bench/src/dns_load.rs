//! DNS load as a load tool (dnsperf) or a busy forwarding resolver makes it: a few UDP sockets, each
//! keeping many questions in flight, sent and read in batches (`sendmmsg`, `recvmmsg`), so that on a
//! machine shared with the server the harness spends little of the CPU it measures.
//!
//! Each answer is matched to its question by ID and checked by its header (an answer, NOERROR, the
//! expected record count); one answer in 64 is decoded in full and its SRV records counted.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use nix::sys::socket::{recvmmsg, sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::load::{Hist, LoadStats};

/// A question unanswered this long is counted as an error (and its slot reused).
const LOST_AFTER: Duration = Duration::from_secs(2);
const WARMUP: Duration = Duration::from_secs(1);

/// `sockets` x `in_flight` questions (`query`, its ID rewritten per question) kept in flight against
/// `server` for `duration` after a one-second warm-up; `want` SRV records expected per answer.
pub async fn udp_in_flight(
    server: SocketAddr,
    query: &[u8],
    sockets: usize,
    in_flight: usize,
    duration: Duration,
    want: usize,
) -> Result<LoadStats> {
    let query = Arc::new(query.to_vec());
    let measure_from = Instant::now() + WARMUP;
    let until = measure_from + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..sockets {
        let query = query.clone();
        tasks.spawn(async move { one_socket(server, &query, in_flight, measure_from, until, want).await });
    }
    let mut hist = Hist::new();
    let (mut errors, mut first_error) = (0, None);
    while let Some(done) = tasks.join_next().await {
        let run = done.context("a DNS load task")??;
        hist.add(&run.hist);
        errors += run.errors;
        first_error = first_error.or(run.first_error);
    }
    Ok(LoadStats::from_hist(sockets * in_flight, &hist, errors, duration, first_error))
}

struct SocketRun {
    hist: Hist,
    errors: u64,
    first_error: Option<String>,
}

async fn one_socket(
    server: SocketAddr,
    query: &[u8],
    in_flight: usize,
    measure_from: Instant,
    until: Instant,
    want: usize,
) -> Result<SocketRun> {
    let socket = UdpSocket::bind(SocketAddr::new(server.ip(), 0)).await?;
    socket.connect(server).await?;
    let mut run = SocketRun { hist: Hist::new(), errors: 0, first_error: None };
    let fail = |run: &mut SocketRun, e: String| {
        run.errors += 1;
        run.first_error.get_or_insert(e);
    };
    let mut outstanding: HashMap<u16, Instant> = HashMap::with_capacity(in_flight);
    let mut next_id: u16 = 0;
    let mut to_send = in_flight;
    let mut answers = vec![[0u8; 1500]; 64];
    let mut checked = 0u64;
    loop {
        if to_send > 0 {
            let now = Instant::now();
            let mut packets = Vec::with_capacity(to_send);
            for _ in 0..to_send {
                while outstanding.contains_key(&next_id) {
                    next_id = next_id.wrapping_add(1);
                }
                let mut p = query.to_vec();
                p[..2].copy_from_slice(&next_id.to_be_bytes());
                outstanding.insert(next_id, now);
                next_id = next_id.wrapping_add(1);
                packets.push(p);
            }
            send_all(&socket, &packets).await?;
            to_send = 0;
        }
        if outstanding.is_empty() {
            break;
        }
        let received = match tokio::time::timeout(
            Duration::from_millis(100),
            socket.async_io(Interest::READABLE, || receive(&socket, &mut answers)),
        )
        .await
        {
            Ok(r) => r?,
            Err(_) => Vec::new(),
        };
        let now = Instant::now();
        for (i, len) in received.into_iter().enumerate() {
            let answer = &answers[i][..len];
            let Some(id) = answer.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])) else { continue };
            // A late answer to a question already counted lost is skipped.
            let Some(sent) = outstanding.remove(&id) else { continue };
            if now < until {
                to_send += 1;
            }
            if sent < measure_from || now > until {
                continue;
            }
            checked += 1;
            match check(answer, want, checked.is_multiple_of(64)) {
                Ok(()) => run.hist.record(now - sent),
                Err(e) => fail(&mut run, format!("{e:#}")),
            }
        }
        let lost: Vec<u16> = outstanding.iter().filter(|(_, t)| now - **t > LOST_AFTER).map(|(id, _)| *id).collect();
        for id in lost {
            outstanding.remove(&id);
            if now < until {
                to_send += 1;
            }
            fail(&mut run, format!("no answer within {LOST_AFTER:?}"));
        }
    }
    Ok(run)
}

/// The answer's header says: a response, NOERROR, `want` answers; `decode` also decodes it and
/// counts its SRV records.
fn check(answer: &[u8], want: usize, decode: bool) -> Result<()> {
    ensure!(answer.len() >= 12, "an answer shorter than a DNS header");
    let (flags, rcode) = (answer[2], answer[3] & 0x0f);
    ensure!(flags & 0x80 != 0 && rcode == 0, "not a NOERROR answer (rcode {rcode})");
    let count = u16::from_be_bytes([answer[6], answer[7]]) as usize;
    ensure!(count == want, "DNS answered {count} records, expected {want}");
    if decode {
        use registry::dns::proto::op::Message;
        use registry::dns::proto::rr::RData;
        let m = Message::from_vec(answer)?;
        let srv = m.answers.iter().filter(|r| matches!(r.data, RData::SRV(_))).count();
        ensure!(srv == want, "DNS answered {srv} SRV records, expected {want}");
    }
    Ok(())
}

fn receive(socket: &UdpSocket, buffers: &mut [[u8; 1500]]) -> io::Result<Vec<usize>> {
    let mut slices: Vec<[io::IoSliceMut<'_>; 1]> =
        buffers.iter_mut().map(|b| [io::IoSliceMut::new(&mut b[..])]).collect();
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(slices.len(), None);
    let got = recvmmsg(socket.as_raw_fd(), &mut headers, slices.iter_mut(), MsgFlags::MSG_DONTWAIT, None)
        .map_err(io::Error::from)?;
    Ok(got.map(|m| m.bytes).collect())
}

async fn send_all(socket: &UdpSocket, packets: &[Vec<u8>]) -> Result<()> {
    let mut sent = 0;
    while sent < packets.len() {
        let rest = &packets[sent..];
        sent += socket.async_io(Interest::WRITABLE, || send(socket, rest)).await?.max(1);
    }
    Ok(())
}

fn send(socket: &UdpSocket, packets: &[Vec<u8>]) -> io::Result<usize> {
    let slices: Vec<[io::IoSlice<'_>; 1]> = packets.iter().map(|p| [io::IoSlice::new(p)]).collect();
    // The socket is connected: no address per message.
    let addrs: Vec<Option<SockaddrStorage>> = vec![None; packets.len()];
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(packets.len(), None);
    let results = sendmmsg(socket.as_raw_fd(), &mut headers, &slices, addrs, [], MsgFlags::MSG_DONTWAIT)
        .map_err(io::Error::from)?;
    Ok(results.count())
}
