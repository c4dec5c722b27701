//! The messages of the tpmon protocol and their encoding.
//!
//! Every message body starts with the protocol version byte and a tag byte; the fields
//! follow in the order documented in docs/protocol.md. The same body travels in a
//! length-prefixed frame on stream sockets and as one datagram on service queues.
//! This module owns that layout; it knows nothing of sockets.

use crate::codec::{DecodeError, Reader, Writer};
use crate::flags::Flags;
use crate::kind::ErrorKind;
use crate::tx::{
    decode_branches, decode_done, decode_end, encode_branches, encode_done, encode_end, xid_part,
    Branch, TxDone, TxEnd,
};
use crate::PROTOCOL_VERSION;

/// Identifies a client context within the domain (XATMI `CLIENTID`); assigned by the
/// daemon when a client or server instance connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ClientId(pub u64);

/// The global transaction a request belongs to. Carried by every request made inside a
/// transaction so that the service can join it as a branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxContext {
    /// XA format identifier.
    pub format_id: i32,
    /// Global transaction id (at most 64 bytes).
    pub gtrid: Vec<u8>,
    /// The transaction's deadline in Unix milliseconds.
    pub deadline_ms: u64,
    /// Branches already joined on the way to this request (a forward carries the
    /// forwarding service's branch and those it collected), so that the final reply
    /// reports them all.
    pub branches: Vec<Branch>,
}

/// A typed buffer on the wire: the type code of `tpmon-buffer`, the subtype and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferWire {
    /// `tpmon_buffer::BufferType` code (never 0).
    pub type_code: u8,
    /// Subtype (record name), empty for most types.
    pub subtype: String,
    /// Encoded body.
    pub body: Vec<u8>,
}

/// How a client wants unsolicited messages delivered (TPUNSOL_*).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnsolMode {
    /// Ignore unsolicited messages.
    #[default]
    Ignore,
    /// Deliver them to a handler.
    Handler,
    /// Keep them until the client polls.
    Poll,
}

/// First frame a client sends: who it is and its credentials (TPINIT).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Hello {
    /// Client name (`cltname`).
    pub client_name: String,
    /// User name (`usrname`).
    pub user_name: String,
    /// User password.
    pub password: String,
    /// Domain password (system access control).
    pub domain_password: String,
    /// Unsolicited-message mode.
    pub unsol: UnsolMode,
}

impl std::fmt::Debug for Hello {
    // Secrets are never printed, so a Hello can be logged safely.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hello")
            .field("client_name", &self.client_name)
            .field("user_name", &self.user_name)
            .field("unsol", &self.unsol)
            .finish_non_exhaustive()
    }
}

/// One server (a queue of requests served by its instances) in the routing table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerRoute {
    /// Server name from the configuration.
    pub name: String,
    /// Path of the server's request queue (a Unix datagram socket).
    pub queue_path: String,
    /// Requests allowed to wait in the queue.
    pub queue_max: u32,
    /// v4: the node the server runs on. A server of another node than the Welcome's
    /// `node` has no queue here (`queue_path` is empty); its services are reached
    /// through this node's daemon, which routes them over the node links (v5).
    pub node: String,
}

/// One service in the routing table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRoute {
    /// Service name.
    pub name: String,
    /// Index into the server list.
    pub server: u16,
    /// Service time limit in milliseconds (0 = none).
    pub timeout_ms: u32,
    /// Declared conversational.
    pub conversational: bool,
    /// Accepted request buffer types: bit `1 << code`; 0 = all.
    pub buffer_types: u32,
}

/// The daemon's answer to a successful Hello, and the set-up of a server instance.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Welcome {
    /// The client's id.
    pub client_id: ClientId,
    /// Domain name.
    pub domain: String,
    /// Node name.
    pub node: String,
    /// The daemon's run directory; empty when the local fast path is not offered.
    pub run_dir: String,
    /// Random token the daemon wrote to `run_dir/host.token`: a client that reads the
    /// same value is on the same host and may use the service queues directly.
    pub host_token: u64,
    /// Default blocking timeout in milliseconds.
    pub blocking_timeout_ms: u32,
    /// Microseconds a local caller or instance polls before sleeping (0 = never).
    pub spin_us: u32,
    /// Boot epoch of the node's transaction manager (part of every gtrid).
    pub epoch: u64,
    /// Transaction timeout when the originator sets none, in milliseconds.
    pub tx_timeout_ms: u32,
    /// Longest transaction timeout allowed, in milliseconds.
    pub tx_timeout_max_ms: u32,
    /// Largest message (request or reply body) the domain accepts, in bytes.
    pub message_bytes_max: u32,
    /// Servers (queues).
    pub servers: Vec<ServerRoute>,
    /// Services.
    pub services: Vec<ServiceRoute>,
    /// v6: the names of the domain's nodes, this one included: the nodes whose
    /// transactions a server instance may join (a branch of any other node's
    /// transaction could never be resolved).
    pub nodes: Vec<String>,
}

impl Welcome {
    /// v6: true when `node` is a node of the domain (with no node list, only this
    /// one).
    pub fn is_domain_node(&self, node: &str) -> bool {
        node == self.node || self.nodes.iter().any(|n| n == node)
    }

    /// The node that offers `route`'s service when it is not this daemon's node
    /// (`None`: a local service, or a server index out of range).
    pub fn remote_node(&self, route: &ServiceRoute) -> Option<&str> {
        self.servers
            .get(usize::from(route.server))
            .map(|s| s.node.as_str())
            .filter(|n| *n != self.node)
    }

    /// v5: the entry of `service` that this node runs, if any (a service may appear
    /// once per node that offers it; at most once per node).
    pub fn local_route(&self, service: &str) -> Option<(usize, &ServiceRoute)> {
        self.services
            .iter()
            .enumerate()
            .find(|(_, s)| s.name == service && self.remote_node(s).is_none())
    }

    /// v5: the other nodes that offer `service`, in configuration order, each once.
    pub fn remote_nodes(&self, service: &str) -> Vec<&str> {
        let mut nodes: Vec<&str> = Vec::new();
        for s in self.services.iter().filter(|s| s.name == service) {
            if let Some(n) = self.remote_node(s) {
                if !nodes.contains(&n) {
                    nodes.push(n);
                }
            }
        }
        nodes
    }
}

/// v5: a call for a service that the caller's node does not run. The caller sends it
/// to its own node's daemon (a local caller on `run_dir/remote.sock`, a relayed one on
/// its TCP session), which routes it to a node offering the service over the node
/// links, where it is the body of a `Call` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteCall {
    /// How long the caller still waits for the reply, in milliseconds; 0: no limit
    /// (TPNOTIME). Bounds how long the daemons keep the call's state.
    pub timeout_ms: u32,
    /// The request, as it would go to a local queue (its `call_id` and `reply_to` are
    /// the caller's; on a node link, `call_id` is the link's call id and `reply_to` is
    /// empty).
    pub request: Request,
}

/// A service request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Caller-chosen id, echoed in the reply; never reused by one caller.
    pub call_id: u64,
    /// Call flags.
    pub flags: Flags,
    /// Service name.
    pub service: String,
    /// Abstract Unix socket name the reply goes to (empty on a relayed TCP connection).
    pub reply_to: Vec<u8>,
    /// The originating client.
    pub client: ClientId,
    /// Transaction context, when the call is part of a global transaction.
    pub tx: Option<TxContext>,
    /// Request data.
    pub buffer: Option<BufferWire>,
}

/// How a service call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyStatus {
    /// TPSUCCESS.
    Success,
    /// TPFAIL or TPEXIT: the caller sees TPESVCFAIL with the reply data.
    Fail,
    /// The call failed with this error kind (no reply data from the service).
    Error(ErrorKind),
}

/// A reply to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The request's call id.
    pub call_id: u64,
    /// Outcome.
    pub status: ReplyStatus,
    /// Application return code (`tpurcode`).
    pub urcode: i64,
    /// Reply data.
    pub buffer: Option<BufferWire>,
    /// Human-readable detail for errors (empty on success).
    pub detail: String,
    /// Transaction branches the call made (its own and its nested calls'), reported
    /// to the originator, which hands them to the transaction manager at commit.
    pub branches: Vec<Branch>,
}

/// Daemon ↔ server-instance control messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlMessage {
    /// Daemon to instance, first message: the routing table and the instance's place.
    Setup {
        /// Routing table and ids.
        welcome: Welcome,
        /// Index of the instance's server.
        server: u16,
        /// The instance's slot in the status table.
        slot: u32,
        /// Index of the server's group.
        group: u16,
    },
    /// Instance to daemon: tpsvrinit succeeded, serving.
    Ready {
        /// The instance's process id.
        pid: u32,
    },
    /// Instance to daemon: tpsvrinit failed; the instance exits.
    InitFailed {
        /// Why.
        reason: String,
    },
    /// Instance to daemon: a routine returned TPEXIT; the instance exits to be restarted.
    Exiting {
        /// The service that asked for it.
        reason: String,
    },
}

/// Administrative requests on the daemon's admin socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRequest {
    /// Status as JSON.
    Status,
    /// Shut the domain down cleanly.
    Down,
    /// In-flight and in-doubt transactions as JSON.
    TxList,
    /// Resolve one transaction by hand.
    TxResolve {
        /// The transaction.
        gtrid: Vec<u8>,
        /// Commit (true) or roll back (false).
        commit: bool,
    },
    /// Rollback-recovery (spec 03 Algorithm 3) of an embedded site, by group name.
    RmRecover {
        /// The site's group.
        site: String,
    },
    /// Take a checkpoint of an embedded site now, by group name.
    RmCheckpoint {
        /// The site's group.
        site: String,
    },
}

/// Any protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Client → daemon: authenticate.
    Hello(Hello),
    /// Daemon → client: authenticated.
    Welcome(Welcome),
    /// Daemon → client: refused; the connection is closed after this.
    Refused {
        /// The error kind (TPEPERM for bad credentials).
        kind: ErrorKind,
        /// Why.
        reason: String,
    },
    /// A service request.
    Request(Request),
    /// A service reply.
    Reply(Reply),
    /// Daemon ↔ instance control.
    Control(ControlMessage),
    /// Admin request.
    Admin(AdminRequest),
    /// Admin answer.
    AdminReply {
        /// Whether the request succeeded.
        ok: bool,
        /// JSON status, or a message.
        text: String,
    },
    /// Sent to a server queue to make one instance run tpsvrdone and exit.
    Shutdown,
    /// Originator → transaction manager: commit or roll back.
    TxEnd(TxEnd),
    /// Transaction manager → originator: the outcome.
    TxDone(TxDone),
    /// v5: a call for a service of another node (caller → its daemon, and the body
    /// of a node link's Call frame).
    Call(RemoteCall),
}

mod tag {
    pub const HELLO: u8 = 1;
    pub const WELCOME: u8 = 2;
    pub const REFUSED: u8 = 3;
    pub const REQUEST: u8 = 4;
    pub const REPLY: u8 = 5;
    pub const CONTROL: u8 = 6;
    pub const ADMIN: u8 = 7;
    pub const ADMIN_REPLY: u8 = 8;
    pub const SHUTDOWN: u8 = 9;
    pub const TX_END: u8 = 10;
    pub const TX_DONE: u8 = 11;
    pub const CALL: u8 = 12;
}

/// Largest buffer body accepted by the decoder; the sockets enforce smaller limits.
const BODY_BYTES_MAX: usize = 1 << 30;
/// Most routing entries a Welcome may carry.
const ROUTES_MAX: usize = 65_535;

impl Message {
    /// Encodes the message body (without a frame header).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(64 + self.payload_hint());
        w.u8(PROTOCOL_VERSION);
        match self {
            Message::Hello(h) => {
                w.u8(tag::HELLO)
                    .str16(&h.client_name)
                    .str16(&h.user_name)
                    .str16(&h.password)
                    .str16(&h.domain_password)
                    .u8(unsol_code(h.unsol));
            }
            Message::Welcome(wl) => {
                w.u8(tag::WELCOME);
                encode_welcome(&mut w, wl);
            }
            Message::Refused { kind, reason } => {
                w.u8(tag::REFUSED).u8(kind.code()).str16(reason);
            }
            Message::Request(r) => {
                w.u8(tag::REQUEST);
                encode_request(&mut w, r);
            }
            Message::Call(c) => {
                w.u8(tag::CALL).u32(c.timeout_ms);
                encode_request(&mut w, &c.request);
            }
            Message::Reply(r) => {
                w.u8(tag::REPLY).u64(r.call_id);
                match r.status {
                    ReplyStatus::Success => w.u8(0).u8(0),
                    ReplyStatus::Fail => w.u8(1).u8(0),
                    ReplyStatus::Error(k) => w.u8(2).u8(k.code()),
                };
                w.i64(r.urcode);
                encode_buffer(&mut w, r.buffer.as_ref());
                w.str16(&r.detail);
                encode_branches(&mut w, &r.branches);
            }
            Message::Control(c) => {
                w.u8(tag::CONTROL);
                match c {
                    ControlMessage::Setup {
                        welcome,
                        server,
                        slot,
                        group,
                    } => {
                        w.u8(1).u16(*server).u32(*slot).u16(*group);
                        encode_welcome(&mut w, welcome);
                    }
                    ControlMessage::Ready { pid } => {
                        w.u8(2).u32(*pid);
                    }
                    ControlMessage::InitFailed { reason } => {
                        w.u8(3).str16(reason);
                    }
                    ControlMessage::Exiting { reason } => {
                        w.u8(4).str16(reason);
                    }
                }
            }
            Message::Admin(a) => {
                w.u8(tag::ADMIN);
                match a {
                    AdminRequest::Status => {
                        w.u8(1);
                    }
                    AdminRequest::Down => {
                        w.u8(2);
                    }
                    AdminRequest::TxList => {
                        w.u8(3);
                    }
                    AdminRequest::TxResolve { gtrid, commit } => {
                        w.u8(4).bytes16(gtrid).bool(*commit);
                    }
                    AdminRequest::RmRecover { site } => {
                        w.u8(5).str16(site);
                    }
                    AdminRequest::RmCheckpoint { site } => {
                        w.u8(6).str16(site);
                    }
                }
            }
            Message::AdminReply { ok, text } => {
                w.u8(tag::ADMIN_REPLY).bool(*ok).bytes32(text.as_bytes());
            }
            Message::Shutdown => {
                w.u8(tag::SHUTDOWN);
            }
            Message::TxEnd(e) => {
                w.u8(tag::TX_END);
                encode_end(&mut w, e);
            }
            Message::TxDone(d) => {
                w.u8(tag::TX_DONE);
                encode_done(&mut w, d);
            }
        }
        w.finish()
    }

    fn payload_hint(&self) -> usize {
        match self {
            Message::Request(r) => r.buffer.as_ref().map_or(0, |b| b.body.len()),
            Message::Call(c) => c.request.buffer.as_ref().map_or(0, |b| b.body.len()),
            Message::Reply(r) => r.buffer.as_ref().map_or(0, |b| b.body.len()),
            _ => 0,
        }
    }

    /// Decodes one message body. Any malformed input yields an error with its offset.
    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        let mut r = Reader::new(bytes);
        let version = r.u8("protocol version")?;
        if version != PROTOCOL_VERSION {
            return Err(DecodeError {
                offset: 0,
                what: format!(
                    "protocol version {version} is not supported (this build speaks {PROTOCOL_VERSION})"
                ),
            });
        }
        let tag_at = r.offset();
        let m = match r.u8("message tag")? {
            tag::HELLO => Message::Hello(Hello {
                client_name: r.str16("client name")?,
                user_name: r.str16("user name")?,
                password: r.str16("password")?,
                domain_password: r.str16("domain password")?,
                unsol: unsol_from(&mut r)?,
            }),
            tag::WELCOME => Message::Welcome(decode_welcome(&mut r)?),
            tag::REFUSED => Message::Refused {
                kind: kind_from(&mut r)?,
                reason: r.str16("reason")?,
            },
            tag::REQUEST => Message::Request(decode_request(&mut r)?),
            tag::CALL => {
                let timeout_ms = r.u32("call timeout")?;
                Message::Call(RemoteCall {
                    timeout_ms,
                    request: decode_request(&mut r)?,
                })
            }
            tag::REPLY => {
                let call_id = r.u64("call id")?;
                let at = r.offset();
                let status = match (r.u8("reply status")?, r.u8("error kind")?) {
                    (0, _) => ReplyStatus::Success,
                    (1, _) => ReplyStatus::Fail,
                    (2, k) => ReplyStatus::Error(ErrorKind::from_code(k).ok_or(DecodeError {
                        offset: at + 1,
                        what: format!("unknown error kind {k}"),
                    })?),
                    (s, _) => {
                        return Err(DecodeError {
                            offset: at,
                            what: format!("unknown reply status {s}"),
                        })
                    }
                };
                let urcode = r.i64("urcode")?;
                let buffer = decode_buffer(&mut r)?;
                let detail = r.str16("detail")?;
                let branches = decode_branches(&mut r)?;
                Message::Reply(Reply {
                    call_id,
                    status,
                    urcode,
                    buffer,
                    detail,
                    branches,
                })
            }
            tag::CONTROL => Message::Control(match r.u8("control kind")? {
                1 => {
                    let server = r.u16("server index")?;
                    let slot = r.u32("slot")?;
                    let group = r.u16("group index")?;
                    ControlMessage::Setup {
                        welcome: decode_welcome(&mut r)?,
                        server,
                        slot,
                        group,
                    }
                }
                2 => ControlMessage::Ready { pid: r.u32("pid")? },
                3 => ControlMessage::InitFailed {
                    reason: r.str16("reason")?,
                },
                4 => ControlMessage::Exiting {
                    reason: r.str16("reason")?,
                },
                v => return Err(r.error(format!("unknown control kind {v}"))),
            }),
            tag::ADMIN => Message::Admin(match r.u8("admin kind")? {
                1 => AdminRequest::Status,
                2 => AdminRequest::Down,
                3 => AdminRequest::TxList,
                4 => AdminRequest::TxResolve {
                    gtrid: xid_part(&mut r, "gtrid")?,
                    commit: r.bool("commit")?,
                },
                5 => AdminRequest::RmRecover {
                    site: r.str16("site")?,
                },
                6 => AdminRequest::RmCheckpoint {
                    site: r.str16("site")?,
                },
                v => return Err(r.error(format!("unknown admin request {v}"))),
            }),
            tag::ADMIN_REPLY => {
                let ok = r.bool("ok")?;
                let at = r.offset();
                let text = r.bytes32("text", BODY_BYTES_MAX)?;
                Message::AdminReply {
                    ok,
                    text: String::from_utf8(text.to_vec()).map_err(|_| DecodeError {
                        offset: at,
                        what: "admin reply is not UTF-8".into(),
                    })?,
                }
            }
            tag::SHUTDOWN => Message::Shutdown,
            tag::TX_END => Message::TxEnd(decode_end(&mut r)?),
            tag::TX_DONE => Message::TxDone(decode_done(&mut r)?),
            t => {
                return Err(DecodeError {
                    offset: tag_at,
                    what: format!("unknown message tag {t}"),
                })
            }
        };
        r.finish()?;
        Ok(m)
    }
}

fn encode_request(w: &mut Writer, r: &Request) {
    w.u64(r.call_id)
        .u32(r.flags.0)
        .str16(&r.service)
        .bytes16(&r.reply_to)
        .u64(r.client.0);
    match &r.tx {
        None => {
            w.u8(0);
        }
        Some(tx) => {
            w.u8(1)
                .i32(tx.format_id)
                .bytes16(&tx.gtrid)
                .u64(tx.deadline_ms);
            encode_branches(w, &tx.branches);
        }
    }
    encode_buffer(w, r.buffer.as_ref());
}

fn decode_request(r: &mut Reader<'_>) -> Result<Request, DecodeError> {
    let call_id = r.u64("call id")?;
    let flags = Flags(r.u32("flags")?);
    let service = r.str16("service name")?;
    let reply_to = r.bytes16("reply address")?.to_vec();
    let client = ClientId(r.u64("client id")?);
    let tx = match r.u8("transaction marker")? {
        0 => None,
        1 => Some(TxContext {
            format_id: r.i32("xid format")?,
            gtrid: xid_part(r, "gtrid")?,
            deadline_ms: r.u64("transaction deadline")?,
            branches: decode_branches(r)?,
        }),
        v => return Err(r.error(format!("transaction marker {v} is not 0 or 1"))),
    };
    let buffer = decode_buffer(r)?;
    Ok(Request {
        call_id,
        flags,
        service,
        reply_to,
        client,
        tx,
        buffer,
    })
}

fn unsol_code(u: UnsolMode) -> u8 {
    match u {
        UnsolMode::Ignore => 0,
        UnsolMode::Handler => 1,
        UnsolMode::Poll => 2,
    }
}

fn unsol_from(r: &mut Reader<'_>) -> Result<UnsolMode, DecodeError> {
    match r.u8("unsolicited mode")? {
        0 => Ok(UnsolMode::Ignore),
        1 => Ok(UnsolMode::Handler),
        2 => Ok(UnsolMode::Poll),
        v => Err(r.error(format!("unknown unsolicited mode {v}"))),
    }
}

fn kind_from(r: &mut Reader<'_>) -> Result<ErrorKind, DecodeError> {
    let k = r.u8("error kind")?;
    ErrorKind::from_code(k).ok_or_else(|| r.error(format!("unknown error kind {k}")))
}

fn encode_buffer(w: &mut Writer, b: Option<&BufferWire>) {
    match b {
        None => {
            w.u8(0);
        }
        Some(b) => {
            w.u8(b.type_code).str16(&b.subtype).bytes32(&b.body);
        }
    }
}

fn decode_buffer(r: &mut Reader<'_>) -> Result<Option<BufferWire>, DecodeError> {
    match r.u8("buffer type")? {
        0 => Ok(None),
        type_code => Ok(Some(BufferWire {
            type_code,
            subtype: r.str16("buffer subtype")?,
            body: r.bytes32("buffer body", BODY_BYTES_MAX)?.to_vec(),
        })),
    }
}

fn encode_welcome(w: &mut Writer, wl: &Welcome) {
    w.u64(wl.client_id.0)
        .str16(&wl.domain)
        .str16(&wl.node)
        .str16(&wl.run_dir)
        .u64(wl.host_token)
        .u32(wl.blocking_timeout_ms)
        .u32(wl.spin_us)
        .u64(wl.epoch)
        .u32(wl.tx_timeout_ms)
        .u32(wl.tx_timeout_max_ms)
        .u32(wl.message_bytes_max)
        .u16(wl.servers.len().min(ROUTES_MAX) as u16);
    for s in wl.servers.iter().take(ROUTES_MAX) {
        w.str16(&s.name)
            .str16(&s.queue_path)
            .u32(s.queue_max)
            .str16(&s.node);
    }
    w.u16(wl.services.len().min(ROUTES_MAX) as u16);
    for s in wl.services.iter().take(ROUTES_MAX) {
        w.str16(&s.name)
            .u16(s.server)
            .u32(s.timeout_ms)
            .bool(s.conversational)
            .u32(s.buffer_types);
    }
    w.u16(wl.nodes.len().min(ROUTES_MAX) as u16);
    for n in wl.nodes.iter().take(ROUTES_MAX) {
        w.str16(n);
    }
}

fn decode_welcome(r: &mut Reader<'_>) -> Result<Welcome, DecodeError> {
    let client_id = ClientId(r.u64("client id")?);
    let domain = r.str16("domain")?;
    let node = r.str16("node")?;
    let run_dir = r.str16("run dir")?;
    let host_token = r.u64("host token")?;
    let blocking_timeout_ms = r.u32("blocking timeout")?;
    let spin_us = r.u32("spin")?;
    let epoch = r.u64("epoch")?;
    let tx_timeout_ms = r.u32("transaction timeout")?;
    let tx_timeout_max_ms = r.u32("transaction timeout limit")?;
    let message_bytes_max = r.u32("message limit")?;
    let n = r.u16("server count")? as usize;
    let mut servers = Vec::with_capacity(n.min(r.remaining() / 8));
    for _ in 0..n {
        servers.push(ServerRoute {
            name: r.str16("server name")?,
            queue_path: r.str16("queue path")?,
            queue_max: r.u32("queue max")?,
            node: r.str16("server node")?,
        });
    }
    let n = r.u16("service count")? as usize;
    let mut services = Vec::with_capacity(n.min(r.remaining() / 13));
    for _ in 0..n {
        let name = r.str16("service name")?;
        let at = r.offset();
        let server = r.u16("service server")?;
        if server as usize >= servers.len() {
            return Err(DecodeError {
                offset: at,
                what: format!("service {name} names server {server} of {}", servers.len()),
            });
        }
        services.push(ServiceRoute {
            name,
            server,
            timeout_ms: r.u32("service timeout")?,
            conversational: r.bool("conversational")?,
            buffer_types: r.u32("buffer types")?,
        });
    }
    let n = r.u16("node count")? as usize;
    let mut nodes = Vec::with_capacity(n.min(r.remaining() / 2));
    for _ in 0..n {
        nodes.push(r.str16("node name")?);
    }
    Ok(Welcome {
        client_id,
        domain,
        node,
        run_dir,
        host_token,
        blocking_timeout_ms,
        spin_us,
        epoch,
        tx_timeout_ms,
        tx_timeout_max_ms,
        message_bytes_max,
        servers,
        services,
        nodes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Message> {
        let welcome = Welcome {
            client_id: ClientId(7),
            domain: "d".into(),
            node: "n1".into(),
            run_dir: "/tmp/r".into(),
            host_token: 99,
            blocking_timeout_ms: 60_000,
            spin_us: 20,
            epoch: 3,
            tx_timeout_ms: 30_000,
            tx_timeout_max_ms: 300_000,
            message_bytes_max: 1 << 20,
            servers: vec![ServerRoute {
                name: "s".into(),
                queue_path: "/tmp/r/q/s".into(),
                queue_max: 10,
                node: "n1".into(),
            }],
            services: vec![ServiceRoute {
                name: "ECHO".into(),
                server: 0,
                timeout_ms: 0,
                conversational: false,
                buffer_types: 0,
            }],
            nodes: vec!["n1".into(), "n2".into()],
        };
        vec![
            Message::Hello(Hello {
                client_name: "c".into(),
                user_name: "u".into(),
                password: "p".into(),
                domain_password: "dp".into(),
                unsol: UnsolMode::Poll,
            }),
            Message::Welcome(welcome.clone()),
            Message::Refused {
                kind: ErrorKind::Perm,
                reason: "bad password".into(),
            },
            Message::Request(Request {
                call_id: u64::MAX,
                flags: Flags::NOBLOCK | Flags::NOTRAN,
                service: "ECHO".into(),
                reply_to: b"\0x".to_vec(),
                client: ClientId(3),
                tx: Some(TxContext {
                    format_id: 0x7470,
                    gtrid: vec![1; 64],
                    deadline_ms: 5,
                    branches: vec![Branch {
                        group: 2,
                        bqual: b"1.2".to_vec(),
                        vote: crate::tx::Vote::Prepared,
                        cpn: 7,
                    }],
                }),
                buffer: Some(BufferWire {
                    type_code: 1,
                    subtype: String::new(),
                    body: b"hello".to_vec(),
                }),
            }),
            Message::Reply(Reply {
                call_id: 1,
                status: ReplyStatus::Error(ErrorKind::SvcErr),
                urcode: -5,
                buffer: None,
                detail: "crashed".into(),
                branches: vec![],
            }),
            Message::Reply(Reply {
                call_id: 2,
                status: ReplyStatus::Fail,
                urcode: 5,
                buffer: Some(BufferWire {
                    type_code: 5,
                    subtype: "acct".into(),
                    body: vec![],
                }),
                detail: String::new(),
                branches: vec![Branch {
                    group: 0,
                    bqual: vec![b'x'; 64],
                    vote: crate::tx::Vote::ReadOnly,
                    cpn: 7,
                }],
            }),
            Message::Control(ControlMessage::Setup {
                welcome,
                server: 0,
                slot: 4,
                group: 1,
            }),
            Message::Control(ControlMessage::Ready { pid: 42 }),
            Message::Control(ControlMessage::InitFailed { reason: "x".into() }),
            Message::Control(ControlMessage::Exiting { reason: "y".into() }),
            Message::Admin(AdminRequest::Status),
            Message::Admin(AdminRequest::Down),
            Message::AdminReply {
                ok: true,
                text: "{}".into(),
            },
            Message::Shutdown,
            Message::Admin(AdminRequest::TxList),
            Message::Admin(AdminRequest::TxResolve {
                gtrid: b"d:n:1:2:3:4".to_vec(),
                commit: true,
            }),
            Message::Admin(AdminRequest::RmRecover { site: "s1".into() }),
            Message::Admin(AdminRequest::RmCheckpoint { site: "s2".into() }),
            Message::TxEnd(TxEnd {
                gtrid: b"d:n:1:2:3:4".to_vec(),
                commit: true,
                wait_completed: false,
                branches: vec![Branch {
                    group: 1,
                    bqual: b"a".to_vec(),
                    vote: crate::tx::Vote::Failed,
                    cpn: 7,
                }],
                doomed: "TPFAIL".into(),
            }),
            Message::TxDone(TxDone {
                gtrid: b"g".to_vec(),
                outcome: crate::tx::TxOutcome::Mixed,
                detail: "x".into(),
            }),
            Message::Call(RemoteCall {
                timeout_ms: 1500,
                request: Request {
                    call_id: 9,
                    flags: Flags::NOREPLY,
                    service: "FAR".into(),
                    reply_to: Vec::new(),
                    client: ClientId(11),
                    tx: None,
                    buffer: Some(BufferWire {
                        type_code: 3,
                        subtype: String::new(),
                        body: vec![0, 1, 2],
                    }),
                },
            }),
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for m in samples() {
            let bytes = m.encode();
            assert_eq!(Message::decode(&bytes), Ok(m));
        }
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        for m in samples() {
            let bytes = m.encode();
            for cut in 0..bytes.len() {
                assert!(
                    Message::decode(&bytes[..cut]).is_err(),
                    "{m:?} cut at {cut}"
                );
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(Message::decode(&longer).is_err());
        }
    }

    #[test]
    fn errors_name_the_offset() {
        let e = Message::decode(&[PROTOCOL_VERSION, 200]).expect_err("bad tag");
        assert_eq!(e.offset, 1);
        let e = Message::decode(&[9, 1]).expect_err("bad version");
        assert!(e.what.contains("version 9"));
    }

    #[test]
    fn services_of_other_nodes_are_told_apart() {
        let mut w = match samples().remove(1) {
            Message::Welcome(w) => w,
            other => panic!("the second sample is a Welcome: {other:?}"),
        };
        let echo = w.services[0].clone();
        assert_eq!(w.remote_node(&echo), None);
        assert_eq!(w.local_route("ECHO").map(|(i, _)| i), Some(0));
        assert!(w.remote_nodes("ECHO").is_empty());
        w.servers[0].node = "n3".into();
        w.servers[0].queue_path.clear();
        assert_eq!(w.remote_node(&echo), Some("n3"));
        assert_eq!(w.local_route("ECHO"), None);
        // The same service on a second server of another node, and on this node.
        for (name, node) in [("s2", "n2"), ("s3", "n3"), ("s1", "n1")] {
            w.servers.push(ServerRoute {
                name: name.into(),
                queue_path: String::new(),
                queue_max: 1,
                node: node.into(),
            });
            w.services.push(ServiceRoute {
                server: (w.servers.len() - 1) as u16,
                ..echo.clone()
            });
        }
        assert_eq!(w.remote_nodes("ECHO"), vec!["n3", "n2"]);
        assert_eq!(w.local_route("ECHO").map(|(i, _)| i), Some(3));
        let back = Message::decode(&Message::Welcome(w.clone()).encode()).expect("decodes");
        assert_eq!(back, Message::Welcome(w));
    }

    #[test]
    fn hello_debug_hides_secrets() {
        let h = Hello {
            password: "s3cret".into(),
            domain_password: "d0main".into(),
            ..Hello::default()
        };
        let text = format!("{h:?}");
        assert!(!text.contains("s3cret") && !text.contains("d0main"));
    }
}
