//! Cutting this host's TCP connections to an address whose replica vanished without a
//! word, so that HAProxy retries the requests waiting on them.
//!
//! A replica cut from its network (`docker network disconnect`), or a node that is
//! gone, sends nothing back: requests HAProxy already wrote onto a connection to it
//! wait for `timeout server`. TCP keepalive (`srvtcpka`) finds such a connection dead
//! only when it is idle; one whose request bytes were never acknowledged stays until
//! the kernel gives up retransmitting (minutes). Destroying the socket (the kernel's
//! `SOCK_DESTROY`, what `ss -K` does) makes HAProxy see the server connection fail with
//! nothing received, which it retries on another server (`retry-on empty-response`):
//! the request is answered instead of hanging. Measured here, 8 keep-alive clients
//! through 3 replicas, one disconnected: 4 requests hung 30 s without it, none with it.
//!
//! It only reaches sockets of this host's network namespace (the managed HAProxy, or an
//! external one on the same host) and needs `CAP_NET_ADMIN`; without it, it cuts
//! nothing and says so once. It runs blocking netlink calls: call it from a blocking
//! task.

use std::net::{IpAddr, SocketAddrV4};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::constants::{AF_INET, IPPROTO_TCP, TCP_LISTEN};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_packet_sock_diag::{SockDiagDestroy, SockDiagMessage};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr};

#[derive(Debug, thiserror::Error)]
pub enum SeverError {
    #[error("cannot open a sock_diag netlink socket")]
    Open(#[source] std::io::Error),
    #[error("cannot list this host's TCP sockets")]
    Dump(#[source] std::io::Error),
    #[error("the kernel's socket list is not understood: {0}")]
    Decode(String),
    /// Destroying sockets needs CAP_NET_ADMIN (and a kernel with SOCK_DESTROY).
    #[error("the kernel refused to destroy a socket (errno {0})")]
    Refused(i32),
}

/// Destroys every TCP socket of this network namespace connected to `addr`. Returns
/// how many were cut.
pub fn sever(addr: SocketAddrV4) -> Result<usize, SeverError> {
    let ids = connected_to(addr)?;
    let mut cut = 0;
    for id in ids {
        destroy(id)?;
        cut += 1;
    }
    Ok(cut)
}

fn open() -> Result<Socket, SeverError> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(SeverError::Open)?;
    socket.bind_auto().map_err(SeverError::Open)?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(SeverError::Open)?;
    Ok(socket)
}

fn send<T>(socket: &Socket, mut message: NetlinkMessage<T>) -> Result<(), SeverError>
where
    T: netlink_packet_core::NetlinkSerializable,
{
    message.finalize();
    let mut buf = vec![0; message.header.length as usize];
    message.serialize(&mut buf[..]);
    socket.send(&buf, 0).map_err(SeverError::Dump)?;
    Ok(())
}

/// The ids of the TCP sockets (any state but listening) whose peer is `addr`.
fn connected_to(addr: SocketAddrV4) -> Result<Vec<SocketId>, SeverError> {
    let socket = open()?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let request = SockDiagMessage::InetRequest(InetRequest {
        family: AF_INET,
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::all(),
        socket_id: SocketId::new_v4(),
    });
    send(&socket, NetlinkMessage::new(header, request.into()))?;

    let mut found = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let size = socket
            .recv(&mut &mut buf[..], 0)
            .map_err(SeverError::Dump)?;
        let mut offset = 0;
        while offset < size {
            let message = <NetlinkMessage<SockDiagMessage>>::deserialize(&buf[offset..size])
                .map_err(|e| SeverError::Decode(e.to_string()))?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                    let id = &response.header.socket_id;
                    let peer = (id.destination_address, id.destination_port);
                    if response.header.state != TCP_LISTEN
                        && peer == (IpAddr::V4(*addr.ip()), addr.port())
                    {
                        found.push(id.clone());
                    }
                }
                NetlinkPayload::Done(_) => return Ok(found),
                NetlinkPayload::Error(e) => {
                    return Err(SeverError::Dump(std::io::Error::from_raw_os_error(
                        e.raw_code().abs(),
                    )))
                }
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

fn destroy(id: SocketId) -> Result<(), SeverError> {
    let socket = open()?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let request = SockDiagDestroy::new(SockDiagMessage::InetRequest(InetRequest {
        family: AF_INET,
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::all(),
        socket_id: id,
    }));
    send(&socket, NetlinkMessage::new(header, request.into()))?;
    let mut buf = vec![0u8; 4096];
    let size = socket
        .recv(&mut &mut buf[..], 0)
        .map_err(SeverError::Dump)?;
    let reply = <NetlinkMessage<SockDiagMessage>>::deserialize(&buf[..size])
        .map_err(|e| SeverError::Decode(e.to_string()))?;
    match reply.payload {
        // An ack is an error message with code 0; a socket that closed meanwhile is gone
        // as wanted (ENOENT).
        NetlinkPayload::Error(e) => match e.raw_code() {
            0 => Ok(()),
            code if code == -(nix::errno::Errno::ENOENT as i32) => Ok(()),
            code => Err(SeverError::Refused(-code)),
        },
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    // Runs where the test suite runs (root, CI): a connection to a listener on
    // loopback is found and cut, and the client side sees it fail.
    #[test]
    fn a_connection_to_an_address_is_found_and_cut() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let std::net::SocketAddr::V4(addr) = listener.local_addr().expect("addr") else {
            panic!("not v4");
        };
        let mut client = std::net::TcpStream::connect(addr).expect("connect");
        let (_server, _) = listener.accept().expect("accept");
        match sever(addr) {
            Ok(cut) => {
                assert_eq!(cut, 1, "one connection to {addr}");
                client
                    .set_read_timeout(Some(std::time::Duration::from_secs(2)))
                    .expect("timeout");
                let mut buf = [0u8; 1];
                let read = client.read(&mut buf);
                assert!(
                    !matches!(read, Ok(1)),
                    "the cut connection still reads: {read:?}"
                );
            }
            // Without CAP_NET_ADMIN the kernel refuses; the error says so.
            Err(SeverError::Refused(code)) => assert!(code == 1 || code == 13, "errno {code}"),
            Err(e) => panic!("{}", crate::report::chain(&e)),
        }
    }
}
