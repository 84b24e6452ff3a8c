//! A TCP front for the embedded broker that answers what librdkafka's mock
//! cluster gets wrong for clients other than librdkafka.
//!
//! A Kafka client opens every connection with an ApiVersions request at the
//! newest version it knows. A broker that does not know that version must
//! answer in version 0's layout with `UNSUPPORTED_VERSION` and the range it
//! does support, so the client can ask again lower (KIP-511). The mock
//! cluster (librdkafka 2.12) supports ApiVersions 0–2 and answers a v3 or
//! v4 request in a layout of its own, which librdkafka's own client accepts
//! but the Java client and kafka-python 3 cannot decode: they drop the
//! connection and never get further.
//!
//! It also advertises versions of the group and transaction APIs that its
//! handlers get wrong: a JoinGroup v6 request (the first flexible version)
//! makes it drop the connection, so kafka-python 3 never joins a group.
//!
//! So each connection's leading ApiVersions requests above v2 are answered
//! here, as KIP-511 says, and the broker's answer to the one that passes on
//! has those APIs capped at the versions librdkafka's own client uses (the
//! ones the mock is tested with). From then on the front only copies bytes
//! both ways. Nothing else is parsed or changed.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// The ApiVersions request's key.
const API_VERSIONS: i16 = 18;
/// The newest ApiVersions version the mock cluster answers properly.
const MOCK_API_VERSIONS_MAX: i16 = 2;
/// Kafka's `UNSUPPORTED_VERSION` error code.
const UNSUPPORTED_VERSION: i16 = 35;
/// (API key, newest version) for the APIs whose newer versions the mock
/// mishandles: the newest librdkafka 2.12's client sends, so the mock's
/// tested paths. OffsetCommit, OffsetFetch, FindCoordinator, JoinGroup,
/// Heartbeat, LeaveGroup, SyncGroup, InitProducerId, AddPartitionsToTxn,
/// AddOffsetsToTxn, TxnOffsetCommit.
const VERSION_CAPS: [(i16, i16); 11] =
    [(8, 9), (9, 9), (10, 2), (11, 5), (12, 3), (13, 1), (14, 3), (22, 4), (24, 0), (25, 0), (28, 3)];
/// A request larger than this (Kafka's default `socket.request.max.bytes`,
/// 100 MiB) is not Kafka: the connection is dropped.
const MAX_FRAME: usize = 100 << 20;
/// Bytes moved per read once a connection is only copied.
const COPY_BUFFER: usize = 256 << 10;

/// A listening front; dropping it stops accepting (open connections end
/// when the broker behind them stops).
pub(crate) struct Front {
    address: SocketAddr,
    stopping: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Front {
    /// Listens on a free port of `broker`'s host and passes connections to `broker`.
    pub(crate) fn start(broker: SocketAddr) -> io::Result<Front> {
        let listener = TcpListener::bind(SocketAddr::new(broker.ip(), 0))?;
        let address = listener.local_addr()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let stopping = stopping.clone();
            std::thread::Builder::new().name("kafka-front".into()).spawn(move || {
                for client in listener.incoming() {
                    if stopping.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    let spawned = std::thread::Builder::new()
                        .name("kafka-front-conn".into())
                        .spawn(move || serve(client, broker));
                    if let Err(e) = spawned {
                        tracing::warn!(error = %e, "embedded broker: cannot serve a connection");
                    }
                }
            })?
        };
        Ok(Front { address, stopping, acceptor: Some(acceptor) })
    }

    pub(crate) fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wakes the acceptor, which then sees `stopping`.
        let _ = TcpStream::connect(self.address);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// One client connection, until either side closes it.
fn serve(mut client: TcpStream, broker: SocketAddr) {
    let _ = client.set_nodelay(true);
    let Some(first) = answer_leading_api_versions(&mut client) else { return };
    let Ok(mut upstream) = TcpStream::connect(broker) else { return };
    let _ = upstream.set_nodelay(true);
    if upstream.write_all(&first).is_err() {
        return;
    }
    let (Ok(client_reader), Ok(upstream_writer)) = (client.try_clone(), upstream.try_clone()) else { return };
    let requests = std::thread::Builder::new()
        .name("kafka-front-conn".into())
        .spawn(move || copy_until_closed(client_reader, upstream_writer));
    // The first response answers the first request: the versions, if it asked.
    let versions_passed = api_key(&first) != API_VERSIONS
        || read_frame(&mut upstream).is_some_and(|mut versions| {
            cap_versions(&mut versions);
            client.write_all(&versions).is_ok()
        });
    if !versions_passed {
        let _ = upstream.shutdown(Shutdown::Both);
        let _ = client.shutdown(Shutdown::Both);
    }
    copy_until_closed(upstream, client);
    if let Ok(requests) = requests {
        let _ = requests.join();
    }
}

/// Answers the client's ApiVersions requests above what the mock supports;
/// returns the first request to pass on whole, or `None` once the client
/// has gone (or sent something that is not Kafka).
fn answer_leading_api_versions(client: &mut TcpStream) -> Option<Vec<u8>> {
    loop {
        let frame = read_frame(client)?;
        if api_key(&frame) != API_VERSIONS || i16_at(&frame, 6) <= MOCK_API_VERSIONS_MAX {
            return Some(frame);
        }
        let correlation_id = &frame[8..12];
        client.write_all(&unsupported_version(correlation_id)).ok()?;
    }
}

fn i16_at(frame: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([frame[at], frame[at + 1]])
}

/// A request's API key (after its 4-byte size).
fn api_key(request: &[u8]) -> i16 {
    i16_at(request, 4)
}

/// Caps the newest versions in an ApiVersions response of v0–v2 (size,
/// correlation id, error code, then a 4-byte count of (key, min, max)
/// entries) at [`VERSION_CAPS`], in place.
fn cap_versions(response: &mut [u8]) {
    let Some(count) = response.get(10..14).map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]])) else { return };
    for entry in 0..usize::try_from(count).unwrap_or(0) {
        let at = 14 + 6 * entry;
        if at + 6 > response.len() {
            return;
        }
        let key = i16_at(response, at);
        if let Some(&(_, cap)) = VERSION_CAPS.iter().find(|(capped, _)| *capped == key) {
            let newest = i16_at(response, at + 4).min(cap);
            response[at + 4..at + 6].copy_from_slice(&newest.to_be_bytes());
        }
    }
}

/// One request, its 4-byte size included; `None` at the end of the stream
/// or for a size no Kafka request has.
fn read_frame(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).ok()?;
    let body = usize::try_from(i32::from_be_bytes(size)).ok()?;
    // api_key, api_version, correlation_id: 8 bytes at least.
    if !(8..=MAX_FRAME).contains(&body) {
        return None;
    }
    let mut frame = vec![0u8; 4 + body];
    frame[..4].copy_from_slice(&size);
    stream.read_exact(&mut frame[4..]).ok()?;
    Some(frame)
}

/// An ApiVersions response in version 0's layout: `UNSUPPORTED_VERSION`
/// and the one range the client needs to ask again, ApiVersions' own.
fn unsupported_version(correlation_id: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(16);
    body.extend_from_slice(correlation_id);
    body.extend_from_slice(&UNSUPPORTED_VERSION.to_be_bytes());
    body.extend_from_slice(&1i32.to_be_bytes());
    body.extend_from_slice(&API_VERSIONS.to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&MOCK_API_VERSIONS_MAX.to_be_bytes());
    let mut response = (body.len() as i32).to_be_bytes().to_vec();
    response.extend_from_slice(&body);
    response
}

/// Copies until `from` ends or `to` fails, then closes both ways, so the
/// opposite direction's copy ends too.
fn copy_until_closed(mut from: TcpStream, mut to: TcpStream) {
    let mut buffer = vec![0u8; COPY_BUFFER];
    loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ApiVersions request of `version`, header v2 with client id "t".
    fn api_versions_request(version: i16, correlation_id: i32) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&API_VERSIONS.to_be_bytes());
        body.extend_from_slice(&version.to_be_bytes());
        body.extend_from_slice(&correlation_id.to_be_bytes());
        body.extend_from_slice(&1i16.to_be_bytes());
        body.push(b't');
        let mut frame = (body.len() as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        frame
    }

    #[test]
    fn versions_are_negotiated_as_kip_511_says_and_capped_where_the_mock_fails_then_bytes_pass_unchanged() {
        // Given a "broker" that records what reaches it, behind a front
        let broker = TcpListener::bind("127.0.0.1:0").unwrap();
        let front = Front::start(broker.local_addr().unwrap()).unwrap();
        let mut client = TcpStream::connect(front.address()).unwrap();

        // When the client opens with ApiVersions v4
        client.write_all(&api_versions_request(4, 7)).unwrap();
        // Then the front answers: v0 layout, its correlation id, UNSUPPORTED_VERSION, ApiVersions 0..=2
        let mut answer = [0u8; 20];
        client.read_exact(&mut answer).unwrap();
        let expected: Vec<u8> =
            [&16i32.to_be_bytes()[..], &7i32.to_be_bytes(), &35i16.to_be_bytes(), &1i32.to_be_bytes()]
                .into_iter()
                .chain([&18i16.to_be_bytes()[..], &0i16.to_be_bytes(), &2i16.to_be_bytes()])
                .flatten()
                .copied()
                .collect();
        assert_eq!(answer.to_vec(), expected);

        // When it asks again at v2, that request and what follows reach the broker unchanged
        let retry = api_versions_request(2, 8);
        client.write_all(&retry).unwrap();
        client.write_all(b"\x00\x00\x00\x08anything").unwrap();
        let (mut upstream, _) = broker.accept().unwrap();
        let mut received = vec![0u8; retry.len() + 12];
        upstream.read_exact(&mut received).unwrap();
        assert_eq!(&received[..retry.len()], retry.as_slice());
        assert_eq!(&received[retry.len()..], b"\x00\x00\x00\x08anything");
        // And the broker's versions come back with JoinGroup capped at v5, Fetch untouched
        let versions = |join_group_max: i16| -> Vec<u8> {
            // correlation id 8, no error, 2 entries
            let mut body = 8i32.to_be_bytes().to_vec();
            body.extend_from_slice(&0i16.to_be_bytes());
            body.extend_from_slice(&2i32.to_be_bytes());
            for (key, max) in [(11i16, join_group_max), (1, 16)] {
                body.extend([key.to_be_bytes(), 0i16.to_be_bytes(), max.to_be_bytes()].concat());
            }
            body.extend_from_slice(&0i32.to_be_bytes());
            [(body.len() as i32).to_be_bytes().to_vec(), body].concat()
        };
        upstream.write_all(&versions(6)).unwrap();
        let mut capped = vec![0u8; versions(5).len()];
        client.read_exact(&mut capped).unwrap();
        assert_eq!(capped, versions(5));
        // And anything after it passes unchanged
        upstream.write_all(b"reply").unwrap();
        let mut reply = [0u8; 5];
        client.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"reply");
    }

    #[test]
    fn what_is_not_kafka_is_dropped_without_reaching_the_broker() {
        let broker = TcpListener::bind("127.0.0.1:0").unwrap();
        let front = Front::start(broker.local_addr().unwrap()).unwrap();
        let mut client = TcpStream::connect(front.address()).unwrap();
        // An HTTP request reads as a 1.2 GB frame
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        // Closed, with a reset where the rest of the request was left unread
        let mut rest = Vec::new();
        assert!(matches!(client.read_to_end(&mut rest), Ok(0) | Err(_)), "the front closed the connection");
        broker.set_nonblocking(true).unwrap();
        assert!(broker.accept().is_err(), "nothing was passed on");
    }
}
