//! The tests' own DNS client: plain queries over UDP to one server (the
//! coordinator's embedded DNS), no recursion asked, no cache, so every answer
//! is what that server says right now; an answer truncated (TC set) is
//! asked again over TCP, as a resolver would. This is the independent read
//! of what landed in DNS. [`exchange_udp`] and [`exchange_tcp`] send one
//! message as it is, for tests of the server's limits.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// How long one query waits for its answer.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// How many times a query is sent before giving up.
const QUERY_ATTEMPTS: usize = 3;

/// Asks one DNS server.
#[derive(Debug, Clone)]
pub struct Resolver {
    server: SocketAddr,
}

/// One answer, reduced to what tests assert on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsAnswer {
    /// NOERROR, NXDOMAIN, …
    pub rcode: ResponseCode,
    /// The AA bit.
    pub authoritative: bool,
    /// A records in the answer section, sorted.
    pub a: Vec<Ipv4Addr>,
    /// AAAA records in the answer section, sorted.
    pub aaaa: Vec<Ipv6Addr>,
    /// CNAME targets in the answer section, with their trailing dot.
    pub cnames: Vec<String>,
    /// The types of every record in the answer section, in order.
    pub types: Vec<RecordType>,
}

impl DnsAnswer {
    /// NXDOMAIN: the name does not exist.
    pub fn is_nxdomain(&self) -> bool {
        self.rcode == ResponseCode::NXDomain
    }
}

impl Resolver {
    /// A resolver that asks only `server`.
    pub fn new(server: SocketAddr) -> Resolver {
        Resolver { server }
    }

    /// Asks for `name`'s A records (and whatever CNAME leads to them).
    pub async fn a(&self, name: &str) -> anyhow::Result<DnsAnswer> {
        self.query(name, RecordType::A).await
    }

    /// Asks for `name`'s AAAA records (and whatever CNAME leads to them).
    pub async fn aaaa(&self, name: &str) -> anyhow::Result<DnsAnswer> {
        self.query(name, RecordType::AAAA).await
    }

    /// Asks for `name`'s AAAA records, every [`crate::POLL`], until
    /// `accept` likes the answer or `timeout` passes (see
    /// [`Resolver::a_until`]).
    pub async fn aaaa_until(
        &self,
        name: &str,
        timeout: std::time::Duration,
        accept: impl Fn(&DnsAnswer) -> bool,
    ) -> DnsAnswer {
        self.query_until(name, RecordType::AAAA, timeout, accept)
            .await
    }

    /// Asks for `name`'s A records, every [`crate::POLL`], until `accept`
    /// likes the answer or `timeout` passes; returns the last answer either
    /// way, for the caller to assert on. Panics if the name cannot be asked.
    pub async fn a_until(
        &self,
        name: &str,
        timeout: std::time::Duration,
        accept: impl Fn(&DnsAnswer) -> bool,
    ) -> DnsAnswer {
        self.query_until(name, RecordType::A, timeout, accept).await
    }

    /// Asks for `name`'s `record_type` records until `accept` likes the
    /// answer or `timeout` passes; the last answer either way.
    async fn query_until(
        &self,
        name: &str,
        record_type: RecordType,
        timeout: std::time::Duration,
        accept: impl Fn(&DnsAnswer) -> bool,
    ) -> DnsAnswer {
        crate::wait_until(
            timeout,
            crate::POLL,
            || self.query(name, record_type),
            |answer| answer.as_ref().is_ok_and(&accept),
        )
        .await
        .unwrap_or_else(|e| panic!("resolving {name} {record_type}: {e:#}"))
    }

    /// Asks one question and returns the answer: over UDP, and again over
    /// TCP if the UDP answer was truncated.
    pub async fn query(&self, name: &str, record_type: RecordType) -> anyhow::Result<DnsAnswer> {
        let (request, response) = self.query_udp(name, record_type).await?;
        if !response.truncated() {
            return Ok(reduce(&response));
        }
        let response = exchange_tcp(self.server, &request).await?;
        Ok(reduce(&response))
    }

    /// Asks one question over UDP; the query and the answer as they are.
    async fn query_udp(
        &self,
        name: &str,
        record_type: RecordType,
    ) -> anyhow::Result<(Message, Message)> {
        let name = Name::from_str(name).with_context(|| format!("{name:?} is not a DNS name"))?;
        let id: u16 = rand::random();
        let mut request = Message::new();
        request
            .set_id(id)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(false)
            .add_query(Query::query(name.clone(), record_type));
        let bytes = request.to_vec().context("encoding a DNS query")?;
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("binding a UDP socket")?;
        socket
            .connect(self.server)
            .await
            .with_context(|| format!("connecting to {}", self.server))?;
        let mut buffer = vec![0u8; 65_535];
        for _ in 0..QUERY_ATTEMPTS {
            socket
                .send(&bytes)
                .await
                .with_context(|| format!("sending to {}", self.server))?;
            let received = match tokio::time::timeout(QUERY_TIMEOUT, socket.recv(&mut buffer)).await
            {
                Err(_elapsed) => continue,
                Ok(received) => {
                    received.with_context(|| format!("receiving from {}", self.server))?
                }
            };
            let response = Message::from_vec(&buffer[..received])
                .with_context(|| format!("decoding the answer from {}", self.server))?;
            if response.id() != id || response.message_type() != MessageType::Response {
                continue;
            }
            return Ok((request, response));
        }
        bail!(
            "{} did not answer {name} {record_type} in {QUERY_ATTEMPTS} tries",
            self.server
        )
    }
}

/// Sends `request` over UDP from `from` (any port) to `server`; the answer's
/// bytes, or `None` if none came within [`QUERY_TIMEOUT`].
pub async fn exchange_udp(
    server: SocketAddr,
    from: IpAddr,
    request: &Message,
) -> anyhow::Result<Option<Vec<u8>>> {
    let socket = UdpSocket::bind((from, 0))
        .await
        .with_context(|| format!("binding a UDP socket on {from}"))?;
    socket.send_to(&request.to_vec()?, server).await?;
    let mut buffer = vec![0u8; 65_535];
    match tokio::time::timeout(QUERY_TIMEOUT, socket.recv(&mut buffer)).await {
        Err(_elapsed) => Ok(None),
        Ok(received) => {
            let received = received?;
            buffer.truncate(received);
            Ok(Some(buffer))
        }
    }
}

/// Sends `request` over TCP to `server` and reads the answer.
pub async fn exchange_tcp(server: SocketAddr, request: &Message) -> anyhow::Result<Message> {
    let mut stream = tokio::time::timeout(QUERY_TIMEOUT, TcpStream::connect(server))
        .await
        .with_context(|| format!("connecting to {server} over TCP"))??;
    exchange_on(&mut stream, request).await
}

/// Sends `request` on an open DNS-over-TCP connection (two-byte length,
/// then the message) and reads the answer.
pub async fn exchange_on(stream: &mut TcpStream, request: &Message) -> anyhow::Result<Message> {
    let server = stream.peer_addr()?;
    let bytes = request.to_vec()?;
    let length = u16::try_from(bytes.len()).context("a query over 64 KiB")?;
    stream.write_all(&length.to_be_bytes()).await?;
    stream.write_all(&bytes).await?;
    let read = async {
        let mut length = [0u8; 2];
        stream.read_exact(&mut length).await?;
        let mut answer = vec![0u8; usize::from(u16::from_be_bytes(length))];
        stream.read_exact(&mut answer).await?;
        anyhow::Ok(answer)
    };
    let answer = tokio::time::timeout(QUERY_TIMEOUT * 2, read)
        .await
        .with_context(|| format!("no answer from {server} over TCP"))??;
    Message::from_vec(&answer).with_context(|| format!("decoding the TCP answer from {server}"))
}

fn reduce(response: &Message) -> DnsAnswer {
    let mut a = Vec::new();
    let mut aaaa = Vec::new();
    let mut cnames = Vec::new();
    let mut types = Vec::new();
    for record in response.answers() {
        types.push(record.record_type());
        match record.data() {
            RData::A(address) => a.push(address.0),
            RData::AAAA(address) => aaaa.push(address.0),
            RData::CNAME(target) => cnames.push(target.0.to_ascii()),
            _ => {}
        }
    }
    a.sort();
    aaaa.sort();
    DnsAnswer {
        rcode: response.response_code(),
        authoritative: response.authoritative(),
        a,
        aaaa,
        cnames,
        types,
    }
}
