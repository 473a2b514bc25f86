//! The embedded authoritative DNS server: answers UDP and TCP queries from
//! the [`Zone`]'s current snapshot (hickory-server), in a way that cannot
//! be turned on others.
//!
//! - **Size.** A UDP answer is at most the client's EDNS buffer size,
//!   capped at [`MAX_UDP_PAYLOAD`] (1232 bytes, the DNS Flag Day 2020
//!   figure that fits every path's MTU without fragments), or 512 bytes
//!   for a query without EDNS. An answer that does not fit goes out with TC
//!   set and no records, so the client asks again over TCP, where the
//!   whole answer goes.
//! - **Rate.** UDP answers are rate limited per source network
//!   ([`super::rrl`], `--dns-rate-limit`).
//! - **Connections.** TCP connections are bounded in number, per source
//!   and in total, and closed when idle ([`super::tcp`]).
//! - Each is counted in the zone's [`super::zone::ServerCounters`].

use std::sync::atomic::Ordering;
use std::sync::Arc;

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{RData, Record};
use hickory_proto::xfer::Protocol;
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::ServerFuture;
use tokio::net::{TcpListener, UdpSocket};

use super::rrl::{RateLimiter, Verdict};
use super::zone::Answer;
use super::{DnsError, Zone};

/// The largest UDP answer, whatever buffer the client offers.
pub const MAX_UDP_PAYLOAD: u16 = 1232;

/// The largest UDP answer to a query without EDNS (RFC 1035).
pub const PLAIN_UDP_PAYLOAD: u16 = 512;

/// Answers DNS requests from a [`Zone`].
#[derive(Debug, Clone)]
pub struct Handler {
    zone: Arc<Zone>,
    limiter: Option<Arc<RateLimiter>>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        self.zone.count_query();
        let counters = self.zone.server_counters();
        let udp = request.protocol() == Protocol::Udp;
        let (builder, edns, limit) = response_builder(request, udp);
        let verdict = match (&self.limiter, udp) {
            (Some(limiter), true) => limiter.check(request.src().ip()),
            _ => Verdict::Answer,
        };
        let mut header = Header::response_from_request(request.header());
        let result = match verdict {
            Verdict::Drop => {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                return ResponseInfo::from(header);
            }
            Verdict::Slip => {
                counters.slipped.fetch_add(1, Ordering::Relaxed);
                header.set_truncated(true);
                response_handle
                    .send_response(builder.build_no_records(header))
                    .await
            }
            Verdict::Answer => {
                self.answer(request, builder, (edns, limit), response_handle)
                    .await
            }
        };
        result.unwrap_or_else(|error| {
            tracing::debug!(%error, "dns response could not be sent");
            let mut header = Header::response_from_request(request.header());
            header.set_response_code(ResponseCode::ServFail);
            ResponseInfo::from(header)
        })
    }
}

/// The builder of the answer to `request`, with our EDNS record if it
/// carried one, and the most bytes the answer may take: the client's
/// buffer within 512 to [`MAX_UDP_PAYLOAD`] over UDP (512 without EDNS),
/// anything over TCP.
fn response_builder(
    request: &Request,
    udp: bool,
) -> (MessageResponseBuilder<'_>, Option<Edns>, u16) {
    let mut builder = MessageResponseBuilder::from_message_request(request);
    let mut limit = if udp { PLAIN_UDP_PAYLOAD } else { u16::MAX };
    let mut edns = None;
    if let Some(asked) = request.edns() {
        let mut ours = Edns::new();
        let offered = asked
            .max_payload()
            .clamp(PLAIN_UDP_PAYLOAD, MAX_UDP_PAYLOAD);
        ours.set_max_payload(offered);
        if udp {
            limit = offered;
        }
        builder.edns(ours.clone());
        edns = Some(ours);
    }
    (builder, edns, limit)
}

impl Handler {
    /// Answers `request` from the zone, within `limit` bytes: an answer
    /// that does not fit is sent with TC set and no records.
    async fn answer<R: ResponseHandler>(
        &self,
        request: &Request,
        builder: MessageResponseBuilder<'_>,
        (edns, limit): (Option<Edns>, u16),
        mut response_handle: R,
    ) -> std::io::Result<ResponseInfo> {
        if !is_query(request) {
            return response_handle
                .send_response(builder.error_msg(request.header(), ResponseCode::NotImp))
                .await;
        }
        let Ok(info) = request.request_info() else {
            return response_handle
                .send_response(builder.error_msg(request.header(), ResponseCode::FormErr))
                .await;
        };
        let answer = self.zone.snapshot().lookup_within(
            info.query.name(),
            info.query.query_type(),
            usize::from(limit),
        );
        let mut header = Header::response_from_request(request.header());
        header.set_authoritative(answer.code != ResponseCode::Refused);
        header.set_response_code(answer.code);
        let question = info.query.original().clone();
        if answer.truncated || !fits(&header, question, &answer, edns, limit) {
            let counters = self.zone.server_counters();
            counters.truncated.fetch_add(1, Ordering::Relaxed);
            header.set_truncated(true);
            return response_handle
                .send_response(builder.build_no_records(header))
                .await;
        }
        let response = builder.build(
            header,
            answer.answers.iter(),
            answer.name_servers.iter(),
            answer.soa.iter(),
            std::iter::empty(),
        );
        response_handle.send_response(response).await
    }
}

fn is_query(request: &Request) -> bool {
    request.message_type() == MessageType::Query && request.op_code() == OpCode::Query
}

/// Whether the answer, encoded, is at most `limit` bytes. Most answers are
/// a few records, whose size is bounded without encoding them; only an
/// answer that may not fit is encoded to be sure.
fn fits(
    header: &Header,
    question: hickory_proto::op::Query,
    answer: &Answer,
    edns: Option<Edns>,
    limit: u16,
) -> bool {
    let limit = usize::from(limit);
    let records = || {
        answer
            .answers
            .iter()
            .chain(&answer.name_servers)
            .chain(&answer.soa)
    };
    // Header, question (name, type, class), an OPT record.
    let fixed = 12 + question.name().len() + 2 + 4 + 11;
    if fixed + records().map(record_bound).sum::<usize>() <= limit {
        return true;
    }
    let mut message = Message::new();
    message.set_header(*header).add_query(question);
    message.add_answers(answer.answers.iter().cloned());
    message.add_name_servers(answer.name_servers.iter().chain(&answer.soa).cloned());
    if let Some(edns) = edns {
        message.set_edns(edns);
    }
    message.to_vec().is_ok_and(|bytes| bytes.len() <= limit)
}

/// The most bytes `record` takes on the wire (names uncompressed).
fn record_bound(record: &Record) -> usize {
    let name = |n: &hickory_proto::rr::Name| n.len() + 2;
    let data = match record.data() {
        RData::A(_) => 4,
        RData::AAAA(_) => 16,
        RData::CNAME(target) => name(&target.0),
        RData::NS(target) => name(&target.0),
        RData::SOA(soa) => name(soa.mname()) + name(soa.rname()) + 20,
        // Anything else: assume the worst, and let the encoder say.
        _ => usize::from(u16::MAX),
    };
    name(record.name()) + 10 + data
}

/// Binds UDP and TCP on `addr` and serves `zone` until the returned server
/// is shut down, with UDP answers limited to `rate_limit` a second per
/// source network (0: no limit). Returns the server and the address
/// actually bound.
pub async fn serve(
    zone: Arc<Zone>,
    addr: std::net::SocketAddr,
    rate_limit: u32,
) -> Result<(ServerFuture<Handler>, std::net::SocketAddr), DnsError> {
    let udp = UdpSocket::bind(addr)
        .await
        .map_err(|source| DnsError::Bind {
            protocol: "udp",
            addr,
            source,
        })?;
    let bound = udp.local_addr().map_err(|source| DnsError::Bind {
        protocol: "udp",
        addr,
        source,
    })?;
    // TCP on the same port UDP got, so port 0 yields one port for both.
    let tcp = TcpListener::bind(bound)
        .await
        .map_err(|source| DnsError::Bind {
            protocol: "tcp",
            addr: bound,
            source,
        })?;
    let limiter = RateLimiter::new(rate_limit).map(Arc::new);
    let handler = Handler {
        zone: zone.clone(),
        limiter,
    };
    let mut server = ServerFuture::new(handler.clone());
    server.register_socket(udp);
    // hickory's TCP listener has no bound on connections: ours does, and
    // stops with the server.
    tokio::spawn(super::tcp::serve(
        tcp,
        handler,
        zone,
        server.shutdown_token().clone(),
    ));
    Ok((server, bound))
}
