//! Local IPv4 address events from the kernel, so that a change on the host
//! is followed at once rather than at the next IMDS poll.
//!
//! The agent learns its addresses from IMDS, which it polls. Some changes
//! show on the host first: an address added to or removed from an interface
//! (a DHCP lease renewed with another address, a secondary private IP or a
//! second network interface attached, an interface brought down). An
//! [`AddressWatch`] is an rtnetlink socket bound to the kernel's
//! `RTMGRP_IPV4_IFADDR` multicast group: it hears every IPv4 address added
//! (`RTM_NEWADDR`) or removed (`RTM_DELADDR`) in the agent's network
//! namespace, and the daemon reads IMDS again on each. (An Elastic IP is
//! NAT outside the instance and changes no local address; the poll is what
//! notices it.)
//!
//! - Only messages from the kernel (netlink port 0) are taken; IPv6
//!   addresses, links, routes and anything else are ignored
//!   ([`parse_datagram`]).
//! - When the kernel could not queue an event (the socket's buffer was full,
//!   `ENOBUFS`) or a message about an IPv4 address cannot be read, the watch
//!   reports [`AddressEvent::Missed`]: something may have changed, so the
//!   daemon reads IMDS just the same.
//! - Opening the socket can fail (netlink filtered by a sandbox or seccomp);
//!   the daemon then says so once and relies on the poll alone.
//!
//! The socket comes from `netlink-sys` and the messages are decoded with
//! `netlink-packet-route`; this module needs no unsafe code.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{NetlinkBuffer, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket};
use nix::errno::Errno;

/// The legacy multicast group bit for IPv4 address changes
/// (`RTMGRP_IPV4_IFADDR` in `<linux/rtnetlink.h>`: group
/// `RTNLGRP_IPV4_IFADDR` = 5, as the bit `1 << (5 - 1)`).
pub const RTMGRP_IPV4_IFADDR: u32 = 0x10;

/// `RTM_NEWADDR` in `<linux/rtnetlink.h>`.
const RTM_NEWADDR: u16 = 20;
/// `RTM_DELADDR` in `<linux/rtnetlink.h>`.
const RTM_DELADDR: u16 = 21;
/// Netlink messages are aligned to four bytes (`NLMSG_ALIGNTO`).
const NLMSG_ALIGNTO: usize = 4;

/// An IPv4 address on a local interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalAddress {
    /// The interface's index.
    pub interface_index: u32,
    /// The interface's name (or alias label), if the kernel sent it.
    pub label: Option<String>,
    /// The address.
    pub address: Ipv4Addr,
    /// The prefix length of its network.
    pub prefix_len: u8,
}

/// What the kernel said about the local IPv4 addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressEvent {
    /// An address was added (or its properties changed).
    Added(LocalAddress),
    /// An address was removed.
    Removed(LocalAddress),
    /// Events were lost or could not be read: the addresses may have
    /// changed in ways not reported.
    Missed,
}

/// A subscription to local IPv4 address events.
pub struct AddressWatch {
    socket: TokioSocket,
    /// Events read but not handed out yet (one datagram may hold several).
    pending: VecDeque<AddressEvent>,
}

impl std::fmt::Debug for AddressWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressWatch")
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

impl AddressWatch {
    /// Opens a netlink route socket subscribed to IPv4 address changes, in
    /// the network namespace of the calling thread. Must be called within
    /// the tokio runtime.
    pub fn open() -> io::Result<Self> {
        let mut socket = TokioSocket::new(NETLINK_ROUTE)?;
        socket
            .socket_mut()
            .bind(&SocketAddr::new(0, RTMGRP_IPV4_IFADDR))?;
        Ok(AddressWatch {
            socket,
            pending: VecDeque::new(),
        })
    }

    /// Waits for the next event. An error means the socket is no longer
    /// usable.
    pub async fn next(&mut self) -> io::Result<AddressEvent> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(event);
            }
            match self.socket.recv_from_full().await {
                // Only the kernel speaks for the kernel.
                Ok((datagram, from)) if from.port_number() == 0 => {
                    self.pending.extend(parse_datagram(&datagram));
                }
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(Errno::ENOBUFS as i32) => {
                    return Ok(AddressEvent::Missed);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The IPv4 address events in one datagram from the kernel, in order.
///
/// A datagram holds one or more netlink messages. `RTM_NEWADDR` and
/// `RTM_DELADDR` for IPv4 become [`AddressEvent::Added`] and
/// [`AddressEvent::Removed`]; one for IPv4 that cannot be decoded, and an
/// overrun, become [`AddressEvent::Missed`]; everything else is ignored. A
/// malformed message ends the datagram.
pub fn parse_datagram(datagram: &[u8]) -> Vec<AddressEvent> {
    let mut events = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let Ok(buffer) = NetlinkBuffer::new_checked(rest) else {
            break;
        };
        let length = buffer.length() as usize;
        let message_type = buffer.message_type();
        let family = buffer.payload().first().copied();
        let message = &rest[..length];
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(message) {
            Ok(message) => events.extend(event_of(message.payload)),
            Err(_) => {
                let about_ipv4 = matches!(message_type, RTM_NEWADDR | RTM_DELADDR)
                    && family == Some(u8::from(AddressFamily::Inet));
                if about_ipv4 {
                    events.push(AddressEvent::Missed);
                }
            }
        }
        let step = length.next_multiple_of(NLMSG_ALIGNTO).min(rest.len());
        rest = &rest[step..];
    }
    events
}

/// The event one decoded message stands for, if any.
fn event_of(payload: NetlinkPayload<RouteNetlinkMessage>) -> Option<AddressEvent> {
    let (message, added) = match payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(message)) => (message, true),
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelAddress(message)) => (message, false),
        NetlinkPayload::Overrun(_) => return Some(AddressEvent::Missed),
        _ => return None,
    };
    if message.header.family != AddressFamily::Inet {
        return None;
    }
    Some(match local_address(&message) {
        Some(address) if added => AddressEvent::Added(address),
        Some(address) => AddressEvent::Removed(address),
        // An IPv4 address message without an address: still a change.
        None => AddressEvent::Missed,
    })
}

/// The address an IPv4 address message is about. The local address is
/// `IFA_LOCAL` (`IFA_ADDRESS` is the peer's on a point-to-point link), and
/// `IFA_ADDRESS` where there is no `IFA_LOCAL`.
fn local_address(message: &AddressMessage) -> Option<LocalAddress> {
    let mut local = None;
    let mut address = None;
    let mut label = None;
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Local(IpAddr::V4(a)) => local = Some(*a),
            AddressAttribute::Address(IpAddr::V4(a)) => address = Some(*a),
            AddressAttribute::Label(name) => label = Some(name.clone()),
            _ => {}
        }
    }
    Some(LocalAddress {
        interface_index: message.header.index,
        label,
        address: local.or(address)?,
        prefix_len: message.header.prefix_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::NetlinkHeader;
    use netlink_packet_route::link::{LinkAttribute, LinkMessage};

    /// An address message as the kernel would send it.
    fn address_message(
        family: AddressFamily,
        index: u32,
        prefix_len: u8,
        attributes: Vec<AddressAttribute>,
    ) -> AddressMessage {
        let mut message = AddressMessage::default();
        message.header.family = family;
        message.header.index = index;
        message.header.prefix_len = prefix_len;
        message.attributes = attributes;
        message
    }

    /// The bytes of one netlink message from port `port`.
    fn encode(inner: RouteNetlinkMessage, port: u32) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.port_number = port;
        let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(inner));
        message.finalize();
        let mut bytes = vec![0; message.buffer_len()];
        message.serialize(&mut bytes);
        bytes
    }

    fn ipv4(index: u32, a: [u8; 4], label: &str) -> AddressMessage {
        let address = IpAddr::V4(Ipv4Addr::from(a));
        address_message(
            AddressFamily::Inet,
            index,
            24,
            vec![
                AddressAttribute::Address(address),
                AddressAttribute::Local(address),
                AddressAttribute::Label(label.to_owned()),
            ],
        )
    }

    fn local(index: u32, a: [u8; 4], label: &str) -> LocalAddress {
        LocalAddress {
            interface_index: index,
            label: Some(label.to_owned()),
            address: Ipv4Addr::from(a),
            prefix_len: 24,
        }
    }

    /// An IPv4 address added and one removed are reported, with the
    /// interface and the address.
    #[test]
    fn ipv4_add_and_remove_are_events() {
        let added = encode(
            RouteNetlinkMessage::NewAddress(ipv4(2, [10, 0, 0, 7], "ens5")),
            0,
        );
        assert_eq!(
            parse_datagram(&added),
            [AddressEvent::Added(local(2, [10, 0, 0, 7], "ens5"))]
        );
        let removed = encode(
            RouteNetlinkMessage::DelAddress(ipv4(2, [10, 0, 0, 7], "ens5")),
            0,
        );
        assert_eq!(
            parse_datagram(&removed),
            [AddressEvent::Removed(local(2, [10, 0, 0, 7], "ens5"))]
        );
    }

    /// On a point-to-point link the local address is the one reported, not
    /// the peer's.
    #[test]
    fn local_address_wins_over_the_peer() {
        let message = address_message(
            AddressFamily::Inet,
            3,
            32,
            vec![
                AddressAttribute::Address(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
                AddressAttribute::Local(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2))),
            ],
        );
        let bytes = encode(RouteNetlinkMessage::NewAddress(message), 0);
        let events = parse_datagram(&bytes);
        assert!(
            matches!(&events[..], [AddressEvent::Added(a)] if a.address == Ipv4Addr::new(192, 0, 2, 2)),
            "{events:?}"
        );
    }

    /// IPv6 addresses and link messages are not IPv4 address events.
    #[test]
    fn other_messages_are_ignored() {
        let ipv6 = address_message(
            AddressFamily::Inet6,
            2,
            64,
            vec![AddressAttribute::Address(IpAddr::V6(
                "2001:db8::1".parse().unwrap(),
            ))],
        );
        assert_eq!(
            parse_datagram(&encode(RouteNetlinkMessage::NewAddress(ipv6), 0)),
            []
        );
        let mut link = LinkMessage::default();
        link.header.index = 2;
        link.attributes = vec![LinkAttribute::IfName("ens5".into())];
        assert_eq!(
            parse_datagram(&encode(RouteNetlinkMessage::NewLink(link), 0)),
            []
        );
    }

    /// Several messages in one datagram are all read, in order, with the
    /// ones that do not matter skipped.
    #[test]
    fn one_datagram_many_messages() {
        let mut datagram = encode(
            RouteNetlinkMessage::DelAddress(ipv4(2, [10, 0, 0, 7], "ens5")),
            0,
        );
        let mut link = LinkMessage::default();
        link.header.index = 2;
        datagram.extend(encode(RouteNetlinkMessage::NewLink(link), 0));
        datagram.extend(encode(
            RouteNetlinkMessage::NewAddress(ipv4(4, [10, 0, 1, 9], "ens6")),
            0,
        ));
        assert_eq!(
            parse_datagram(&datagram),
            [
                AddressEvent::Removed(local(2, [10, 0, 0, 7], "ens5")),
                AddressEvent::Added(local(4, [10, 0, 1, 9], "ens6")),
            ]
        );
    }

    /// An overrun, or an IPv4 address message that cannot be decoded, means
    /// events were missed; garbage and truncated bytes give nothing and do
    /// not panic.
    #[test]
    fn damage_is_missed_or_ignored() {
        let mut header = NetlinkHeader::default();
        header.port_number = 0;
        let mut overrun: NetlinkMessage<RouteNetlinkMessage> =
            NetlinkMessage::new(header, NetlinkPayload::Overrun(vec![0; 4]));
        overrun.finalize();
        let mut bytes = vec![0; overrun.buffer_len()];
        overrun.serialize(&mut bytes);
        assert_eq!(parse_datagram(&bytes), [AddressEvent::Missed]);

        // RTM_NEWADDR for AF_INET whose header is cut to four bytes.
        let mut cut = vec![20, 0, 0, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        cut.extend([u8::from(AddressFamily::Inet), 24, 0, 0]);
        assert_eq!(parse_datagram(&cut), [AddressEvent::Missed]);

        let good = encode(
            RouteNetlinkMessage::NewAddress(ipv4(2, [10, 0, 0, 7], "ens5")),
            0,
        );
        assert_eq!(parse_datagram(&good[..good.len() - 3]), []);
        assert_eq!(parse_datagram(&[]), []);
        assert_eq!(parse_datagram(&[0xff; 40]), []);
        // A length field shorter than a header.
        let mut short = good.clone();
        short[0] = 4;
        assert_eq!(parse_datagram(&short), []);
    }
}
