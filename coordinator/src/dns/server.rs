//! The embedded authoritative DNS server: answers UDP and TCP queries from
//! the [`Zone`]'s current snapshot (hickory-server).

use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Header, MessageType, OpCode, ResponseCode};
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::ServerFuture;
use tokio::net::{TcpListener, UdpSocket};

use super::{DnsError, Zone};

/// How long a TCP DNS connection may idle.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers DNS requests from a [`Zone`].
#[derive(Debug, Clone)]
pub struct Handler {
    zone: Arc<Zone>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        self.zone.count_query();
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(req_edns) = request.edns() {
            let mut edns = Edns::new();
            edns.set_max_payload(req_edns.max_payload().max(512));
            builder.edns(edns);
        }
        let result = if request.message_type() != MessageType::Query
            || request.op_code() != OpCode::Query
        {
            response_handle
                .send_response(builder.error_msg(request.header(), ResponseCode::NotImp))
                .await
        } else {
            match request.request_info() {
                Err(_) => {
                    response_handle
                        .send_response(builder.error_msg(request.header(), ResponseCode::FormErr))
                        .await
                }
                Ok(info) => {
                    let answer = self
                        .zone
                        .snapshot()
                        .lookup(info.query.name(), info.query.query_type());
                    let mut header = Header::response_from_request(request.header());
                    header.set_authoritative(answer.code != ResponseCode::Refused);
                    header.set_response_code(answer.code);
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
        };
        result.unwrap_or_else(|error| {
            tracing::debug!(%error, "dns response could not be sent");
            let mut header = Header::response_from_request(request.header());
            header.set_response_code(ResponseCode::ServFail);
            ResponseInfo::from(header)
        })
    }
}

/// Binds UDP and TCP on `addr` and serves `zone` until the returned server
/// is shut down. Returns the server and the address actually bound.
pub async fn serve(
    zone: Arc<Zone>,
    addr: std::net::SocketAddr,
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
    let mut server = ServerFuture::new(Handler { zone });
    server.register_socket(udp);
    server.register_listener(tcp, TCP_TIMEOUT);
    Ok((server, bound))
}
