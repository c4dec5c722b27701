//! A client context: connect, call, async call, get reply, cancel.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tpmon_buffer::Buffer;
use tpmon_ipc::{Endpoint, StatusTable};
use tpmon_proto::{
    ClientId, ErrorKind, Flags, Hello, Message, RemoteCall, Reply, ReplyStatus, Request,
    ServiceRoute, TxContext, Welcome,
};

use crate::convert::{from_wire, to_wire};
use crate::options::CONNECT_TIMEOUT_DEFAULT;
use crate::transport::{handshake, Local, RecvFailure, Relay, RemoteSocket, Transport};
use crate::{CallError, ClientOptions};

/// A call descriptor returned by [`Client::acall`]; `Cd(0)` for TPNOREPLY calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cd(pub u64);

/// A successful reply.
#[derive(Debug, Clone, PartialEq)]
pub struct CallReply {
    /// Reply data (None when the service returned none).
    pub buffer: Option<Buffer>,
    /// The service's application return code (`tpurcode`).
    pub urcode: i64,
}

struct Pending {
    flags: Flags,
    request_type: Option<tpmon_buffer::BufferType>,
    /// Made inside the current transaction: its reply reports branches, and its
    /// failure dooms the transaction.
    in_tx: bool,
}

/// Where a call to a service goes (see [`Client::route`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// A server of this client's node offers it: the request goes straight to that
    /// server's queue (or, relayed, the daemon puts it there).
    Local {
        /// The service's index in the routing table.
        index: usize,
        /// Its entry.
        route: &'a ServiceRoute,
    },
    /// Only other nodes offer it: the request goes to this node's daemon as a
    /// [`RemoteCall`], and the daemon routes it to one of them over the node links.
    Remote {
        /// The first entry of the service in the routing table.
        route: &'a ServiceRoute,
    },
}

/// Where a service name leads, from the routing table.
#[derive(Debug, Clone, Copy)]
enum Target {
    Local(usize),
    Remote(usize),
}

/// Largest message a client accepts or sends when the daemon does not say otherwise.
const MESSAGE_BYTES_MAX: usize = 64 << 20;

/// One client context (what `tpinit` creates). Not shared between threads: give each
/// thread its own, as XATMI contexts are per thread.
pub struct Client {
    pub(crate) transport: Transport,
    pub(crate) welcome: Welcome,
    services: HashMap<String, Target>,
    blocking_timeout: Duration,
    next_call_id: u64,
    pending: HashMap<u64, Pending>,
    /// Replies that arrived for other outstanding calls while waiting for one.
    ready: VecDeque<Reply>,
    /// Calls whose replies are to be thrown away (cancelled or timed-out tpcalls).
    abandoned: HashSet<u64>,
    pending_max: usize,
    /// The transaction this context is in (as originator or as a participant).
    pub(crate) txn: Option<crate::tx::ActiveTx>,
    /// TX settings (timeout, commit return, control) and the sequence of gtrids.
    pub(crate) tx_settings: crate::tx::TxSettings,
    /// A server's own branch of the current transaction is active in its database
    /// (a transaction its routine began): only the server's context can end it.
    pub(crate) local_branch: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("client_id", &self.welcome.client_id)
            .field("local", &self.is_local())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects and authenticates (`tpinit`). Without an address in `opts` the
    /// environment is read ([`ClientOptions::from_env`]). When the primary address
    /// cannot be reached, the backup address is tried.
    pub fn connect(opts: &ClientOptions) -> Result<Client, CallError> {
        let env;
        let opts = if opts.addr.is_none() {
            env = ClientOptions {
                force_relay: opts.force_relay,
                ..ClientOptions::from_env()
            };
            &env
        } else {
            opts
        };
        let hello = Hello {
            client_name: opts.client_name.clone(),
            user_name: opts.user_name.clone(),
            password: opts.password.clone(),
            domain_password: opts.domain_password.clone(),
            unsol: opts.unsol,
        };
        let timeout = opts.connect_timeout.unwrap_or(CONNECT_TIMEOUT_DEFAULT);
        let primary = opts.addr.as_deref().ok_or_else(|| {
            CallError::new(
                ErrorKind::Inval,
                "no domain address: set TPMON_HOST_ADDR and TPMON_HOST_PORT or pass one",
            )
        })?;
        let (stream, welcome, decoder) = match handshake(primary, &hello, timeout) {
            Ok(v) => v,
            // Only an unreachable primary fails over; a refusal is final.
            Err(e) if e.kind == ErrorKind::Os || e.kind == ErrorKind::Time => {
                match &opts.backup_addr {
                    Some(b) => handshake(b, &hello, timeout).map_err(|e2| {
                        CallError::new(e2.kind, format!("{}; backup: {}", e.detail, e2.detail))
                    })?,
                    None => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        let local = if opts.force_relay {
            None
        } else {
            try_local(&welcome)
        };
        let transport = match local {
            Some((endpoint, table)) => {
                let mut l = local_parts(&welcome, endpoint, Arc::new(table));
                // Only peeked at, never read: non-blocking, or it is not kept.
                l.session = stream.set_nonblocking(true).is_ok().then_some(stream);
                Transport::Local(l)
            }
            None => {
                let mut decoder = decoder;
                decoder.set_max(MESSAGE_BYTES_MAX);
                Transport::Relay(Relay {
                    stream,
                    decoder,
                    read_timeout: None,
                    stash: Vec::new(),
                })
            }
        };
        Ok(Self::with_transport(welcome, transport))
    }

    /// A client over the local fast path with a routing table already in hand: what a
    /// server instance uses for nested calls and forwards.
    pub fn local(welcome: Welcome, table: Arc<StatusTable>) -> Result<Client, CallError> {
        let endpoint =
            Endpoint::bind_abstract(&format!("tpmon/{}", welcome.domain), MESSAGE_BYTES_MAX)
                .map_err(|e| CallError::new(ErrorKind::Os, e.to_string()))?;
        let l = local_parts(&welcome, endpoint, table);
        Ok(Self::with_transport(welcome, Transport::Local(l)))
    }

    fn with_transport(welcome: Welcome, transport: Transport) -> Client {
        // A service may appear once per node that offers it: this node's entry wins,
        // else the first entry stands for "another node" (the daemon picks which).
        let mut services: HashMap<String, Target> = HashMap::new();
        for (i, s) in welcome.services.iter().enumerate() {
            let here = welcome.remote_node(s).is_none();
            match services.get(&s.name) {
                Some(Target::Local(_)) => {}
                Some(Target::Remote(_)) if !here => {}
                _ => {
                    let t = if here {
                        Target::Local(i)
                    } else {
                        Target::Remote(i)
                    };
                    services.insert(s.name.clone(), t);
                }
            }
        }
        // Replies to one client share its kernel queue; never have more outstanding
        // than that queue holds, or servers would block replying to us.
        let pending_max = match transport {
            Transport::Local(_) => tpmon_ipc::kernel_queue_len()
                .saturating_sub(2)
                .clamp(1, 4096),
            Transport::Relay(_) => 4096,
        };
        Client {
            blocking_timeout: Duration::from_millis(u64::from(welcome.blocking_timeout_ms.max(1))),
            transport,
            welcome,
            services,
            // Unguessable ids (see `forget` for why they must also never repeat): a
            // reply is taken only for a pending id, so a local process of another user
            // cannot forge one without guessing 63 random bits.
            next_call_id: (tpmon_ipc::random_u64() >> 1).max(1),
            pending: HashMap::new(),
            ready: VecDeque::new(),
            abandoned: HashSet::new(),
            pending_max,
            txn: None,
            tx_settings: crate::tx::TxSettings::default(),
            local_branch: false,
        }
    }

    /// True when calls go straight to the service queues.
    pub fn is_local(&self) -> bool {
        matches!(self.transport, Transport::Local(_))
    }

    /// This context's client id.
    pub fn client_id(&self) -> ClientId {
        self.welcome.client_id
    }

    /// The routing table received from the daemon.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// The blocking timeout for the following calls (`tpset_timeout`).
    pub fn set_blocking_timeout(&mut self, timeout: Duration) {
        self.blocking_timeout = timeout.max(Duration::from_millis(1));
    }

    /// The blocking timeout in force.
    pub fn blocking_timeout(&self) -> Duration {
        self.blocking_timeout
    }

    /// Joins the transaction of a request being served (a participant: its calls
    /// carry the transaction, and their branches are collected for the reply), or
    /// leaves it with None. Used by the server runtime.
    #[doc(hidden)]
    pub fn set_transaction(&mut self, tx: Option<TxContext>) {
        self.txn = tx.map(crate::tx::ActiveTx::participant);
    }

    /// Adds a branch to the current transaction (a server's own branch in a
    /// transaction it began itself); a failed branch dooms the transaction.
    #[doc(hidden)]
    pub fn join_branch(&mut self, b: tpmon_proto::Branch) {
        if let Some(t) = &mut self.txn {
            if b.vote == tpmon_proto::Vote::Failed {
                t.doom("a branch failed to prepare");
            }
            t.branches.push(b);
            t.check_size();
        }
    }

    /// Lets this context end its current transaction (true) or not (false): the
    /// server runtime owns a transaction it began for an automatic-transaction call,
    /// so the routine may not end it.
    #[doc(hidden)]
    pub fn set_originator(&mut self, originator: bool) {
        if let Some(t) = &mut self.txn {
            t.originator = originator;
        }
    }

    /// True when this context is the current transaction's originator (it may end
    /// it); false outside a transaction.
    pub fn is_originator(&self) -> bool {
        self.txn.as_ref().is_some_and(|t| t.originator)
    }

    /// The context that calls in the current transaction carry.
    pub fn current_context(&self) -> Option<TxContext> {
        self.txn.as_ref().map(|t| t.context())
    }

    /// The current transaction's gtrid.
    pub fn current_gtrid(&self) -> Option<String> {
        self.txn.as_ref().map(|t| t.gtrid.clone())
    }

    /// True when the current transaction can only roll back.
    pub fn transaction_doomed(&self) -> bool {
        self.txn.as_ref().is_some_and(|t| t.doomed.is_some())
    }

    /// Leaves the current transaction and returns what was collected in it.
    #[doc(hidden)]
    pub fn take_transaction(&mut self) -> Option<crate::tx::ActiveTx> {
        self.local_branch = false;
        self.txn.take()
    }

    /// Marks that a server's own branch of the current transaction is active (true)
    /// or ended (false). Used by the server runtime: while it is active,
    /// [`Client::tx_commit`] and [`Client::tx_rollback`] refuse (TX_PROTOCOL_ERROR),
    /// since only the server's context can prepare or roll that branch back.
    #[doc(hidden)]
    pub fn set_local_branch(&mut self, active: bool) {
        self.local_branch = active;
    }

    /// Looks a service up in the routing table: a server of this node offers it
    /// (preferred), or only other nodes do. Unknown: TPENOENT.
    pub fn route(&self, service: &str) -> Result<Route<'_>, CallError> {
        let target = *self.services.get(service).ok_or_else(|| {
            CallError::new(ErrorKind::NoEnt, format!("no service named {service}"))
        })?;
        Ok(match target {
            Target::Local(index) => Route::Local {
                index,
                route: &self.welcome.services[index],
            },
            Target::Remote(index) => Route::Remote {
                route: &self.welcome.services[index],
            },
        })
    }

    /// The timeout a [`RemoteCall`] carries: what is left until `deadline`, at least
    /// 1 ms; 0 for no deadline.
    fn remote_timeout_ms(deadline: Option<Instant>) -> u32 {
        deadline.map_or(0, |d| {
            let left = d.saturating_duration_since(Instant::now()).as_millis();
            left.clamp(1, u128::from(u32::MAX)) as u32
        })
    }

    /// Synchronous call (`tpcall`).
    pub fn call(
        &mut self,
        service: &str,
        data: &Buffer,
        flags: Flags,
    ) -> Result<CallReply, CallError> {
        if flags.contains(Flags::NOREPLY) {
            return Err(CallError::new(
                ErrorKind::Inval,
                "TPNOREPLY is not valid for tpcall",
            ));
        }
        let deadline = self.deadline(flags);
        let cd = self.send_call(service, data, flags, deadline)?;
        // TPNOBLOCK on tpcall concerns sending only; the reply is always awaited.
        let result = self.wait(Some(cd.0), flags.without(Flags::NOBLOCK), deadline);
        if let Err(e) = &result {
            if e.kind == ErrorKind::Time || e.kind == ErrorKind::Block {
                self.forget(cd.0);
            }
        }
        result.map(|(_, r)| r)
    }

    /// Asynchronous call (`tpacall`): returns a descriptor for [`Client::getrply`], or
    /// `Cd(0)` with TPNOREPLY.
    pub fn acall(&mut self, service: &str, data: &Buffer, flags: Flags) -> Result<Cd, CallError> {
        if flags.contains(Flags::NOREPLY) && self.txn.is_some() && !flags.contains(Flags::NOTRAN) {
            return Err(CallError::new(
                ErrorKind::Inval,
                "TPNOREPLY inside a transaction needs TPNOTRAN",
            ));
        }
        let deadline = self.deadline(flags);
        self.send_call(service, data, flags, deadline)
    }

    /// Collects a reply (`tpgetrply`): of `cd`, or of any call when `cd` is None
    /// (TPGETANY). Returns the descriptor the reply belongs to. A failed call's error
    /// consumes its descriptor; a timeout (TPETIME) or TPEBLOCK leaves it valid.
    pub fn getrply(&mut self, cd: Option<Cd>, flags: Flags) -> Result<(Cd, CallReply), CallError> {
        if let Some(cd) = cd {
            if !self.pending.contains_key(&cd.0) {
                return Err(CallError::new(
                    ErrorKind::BadDesc,
                    format!("no outstanding call {}", cd.0),
                ));
            }
        } else if self.pending.is_empty() {
            return Err(CallError::new(ErrorKind::BadDesc, "no outstanding calls"));
        }
        let deadline = self.deadline(flags);
        self.wait(cd.map(|c| c.0), flags, deadline)
            .map(|(id, r)| (Cd(id), r))
    }

    /// Cancels an outstanding call (`tpcancel`): its reply, if one comes, is discarded.
    pub fn cancel(&mut self, cd: Cd) -> Result<(), CallError> {
        if !self.pending.contains_key(&cd.0) {
            return Err(CallError::new(
                ErrorKind::BadDesc,
                format!("no outstanding call {}", cd.0),
            ));
        }
        if self.pending.get(&cd.0).is_some_and(|p| p.in_tx) {
            return Err(CallError::new(
                ErrorKind::Tran,
                "a call that belongs to a global transaction cannot be cancelled",
            ));
        }
        self.forget(cd.0);
        Ok(())
    }

    /// Abandons every outstanding call; their replies will be discarded.
    pub fn abandon_all(&mut self) {
        let ids: Vec<u64> = self.pending.keys().copied().collect();
        for id in ids {
            self.forget(id);
        }
    }

    /// Number of calls awaiting replies.
    pub fn outstanding(&self) -> usize {
        self.pending.len()
    }

    /// Ids of the outstanding calls made inside the current transaction.
    pub(crate) fn outstanding_in_tx(&self) -> Vec<u64> {
        self.pending
            .iter()
            .filter(|(_, p)| p.in_tx)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Sends a request prepared by a server (a forward): its call id, reply address and
    /// client id are the original caller's. Only on the local fast path. A service
    /// that only other nodes offer is forwarded through this node's daemon, which
    /// routes it as any remote call (the reply goes to the original caller); inside a
    /// global transaction that is refused with TPETRAN.
    pub fn forward(&mut self, request: &Request) -> Result<(), CallError> {
        if !matches!(self.transport, Transport::Local(_)) {
            return Err(CallError::new(
                ErrorKind::Proto,
                "tpforward needs the local transport",
            ));
        }
        let deadline = Some(Instant::now() + self.blocking_timeout);
        let target = self.route(&request.service)?;
        let (Route::Local { route, .. } | Route::Remote { route }) = target;
        if route.conversational {
            return Err(CallError::new(
                ErrorKind::NoEnt,
                format!("{} is conversational", request.service),
            ));
        }
        if let Route::Local { route, .. } = target {
            let server = route.server as usize;
            let body = Message::Request(request.clone()).encode();
            self.check_size(&body)?;
            return self.transport.send(server, &body, false, deadline);
        }
        // Forwarded to another node: the daemon routes it, and the reply goes from
        // there to the original caller.
        let body = Message::Call(RemoteCall {
            timeout_ms: Self::remote_timeout_ms(deadline),
            request: request.clone(),
        })
        .encode();
        self.check_size(&body)?;
        self.transport.send_remote(&body, false, deadline)
    }

    /// Refuses a message the domain would not accept, before anything is sent.
    fn check_size(&self, body: &[u8]) -> Result<(), CallError> {
        let max = self.welcome.message_bytes_max as usize;
        if max > 0 && body.len() > max {
            return Err(CallError::new(
                ErrorKind::Limit,
                format!(
                    "the request is {} bytes; the domain accepts at most {max} (frame_bytes_max)",
                    body.len()
                ),
            ));
        }
        Ok(())
    }

    fn deadline(&self, flags: Flags) -> Option<Instant> {
        let blocking = if flags.contains(Flags::NOTIME) {
            None
        } else {
            Some(Instant::now() + self.blocking_timeout)
        };
        // A call inside a transaction also ends at the transaction's deadline.
        let tx = if flags.contains(Flags::NOTRAN) {
            None
        } else {
            self.txn.as_ref().map(|t| t.deadline_instant())
        };
        match (blocking, tx) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(crate) fn forget(&mut self, call_id: u64) {
        if let Some(p) = self.pending.remove(&call_id) {
            if p.in_tx {
                if let Some(t) = &mut self.txn {
                    t.doom("a call of the transaction was abandoned (timed out or cancelled)");
                }
            }
        }
        self.ready.retain(|r| r.call_id != call_id);
        self.abandoned.insert(call_id);
        // Call ids are never reused, so an old abandoned id can only match a reply that
        // will never come; keep the set bounded.
        if self.abandoned.len() > 4096 {
            let cutoff = self.next_call_id.saturating_sub(4096);
            self.abandoned.retain(|&id| id >= cutoff);
        }
    }

    fn send_call(
        &mut self,
        service: &str,
        data: &Buffer,
        flags: Flags,
        deadline: Option<Instant>,
    ) -> Result<Cd, CallError> {
        let noreply = flags.contains(Flags::NOREPLY);
        if !noreply && self.pending.len() >= self.pending_max {
            return Err(CallError::new(
                ErrorKind::Limit,
                format!("{} calls are already outstanding", self.pending.len()),
            ));
        }
        let target = self.route(service)?;
        let (Route::Local { route, .. } | Route::Remote { route }) = target;
        if route.conversational {
            return Err(CallError::new(
                ErrorKind::NoEnt,
                format!("{service} is conversational: use tpconnect"),
            ));
        }
        let server = match target {
            Route::Local { route, .. } => Some(route.server as usize),
            Route::Remote { .. } => None,
        };
        let call_id = self.next_call_id;
        self.next_call_id += 1;
        let tx = if flags.contains(Flags::NOTRAN) {
            None
        } else {
            self.txn.as_ref().map(|t| t.context())
        };
        let in_tx = tx.is_some();
        let mut wire_flags = flags.without(Flags::GETANY);
        if tx.is_some() {
            wire_flags |= Flags::TRAN;
        }
        let reply_to = match &self.transport {
            Transport::Local(l) => l.endpoint.name().to_vec(),
            Transport::Relay(_) => Vec::new(),
        };
        let req = Request {
            call_id,
            flags: wire_flags,
            service: service.to_string(),
            reply_to,
            client: self.welcome.client_id,
            tx,
            buffer: Some(to_wire(data)),
        };
        let nonblock = flags.contains(Flags::NOBLOCK);
        match server {
            Some(server) => {
                let body = Message::Request(req).encode();
                self.check_size(&body)?;
                self.transport.send(server, &body, nonblock, deadline)?;
            }
            None => {
                let body = Message::Call(RemoteCall {
                    timeout_ms: Self::remote_timeout_ms(deadline),
                    request: req,
                })
                .encode();
                self.check_size(&body)?;
                self.transport.send_remote(&body, nonblock, deadline)?;
            }
        }
        if noreply {
            return Ok(Cd(0));
        }
        self.pending.insert(
            call_id,
            Pending {
                flags,
                request_type: Some(data.buffer_type()),
                in_tx,
            },
        );
        Ok(Cd(call_id))
    }

    pub(crate) fn wait(
        &mut self,
        want: Option<u64>,
        flags: Flags,
        deadline: Option<Instant>,
    ) -> Result<(u64, CallReply), CallError> {
        let matches = |id: u64| want.is_none_or(|w| w == id);
        if let Some(pos) = self.ready.iter().position(|r| matches(r.call_id)) {
            if let Some(r) = self.ready.remove(pos) {
                return self.finish(r);
            }
        }
        let nonblock = flags.contains(Flags::NOBLOCK);
        loop {
            let timeout = match deadline {
                None => None,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(CallError::new(
                            ErrorKind::Time,
                            "no reply within the blocking timeout",
                        ));
                    }
                    Some(left)
                }
            };
            match self.transport.recv(timeout, nonblock) {
                Ok(r) => {
                    if !self.pending.contains_key(&r.call_id) {
                        // A late reply of an abandoned call, or a stranger's: dropped.
                        self.abandoned.remove(&r.call_id);
                        continue;
                    }
                    if matches(r.call_id) {
                        return self.finish(r);
                    }
                    self.ready.push_back(r);
                }
                // The socket timeout is rounded down; the loop head decides whether the
                // deadline has really passed.
                Err(RecvFailure::TimedOut) => continue,
                Err(RecvFailure::WouldBlock) => {
                    return Err(CallError::new(ErrorKind::Block, "no reply is ready"))
                }
                Err(RecvFailure::Fatal(e)) => return Err(e),
            }
        }
    }

    fn finish(&mut self, r: Reply) -> Result<(u64, CallReply), CallError> {
        let pending = self.pending.remove(&r.call_id);
        if pending.as_ref().is_some_and(|p| p.in_tx) {
            if let Some(t) = &mut self.txn {
                t.absorb(&r);
            }
        }
        let buffer = match &r.buffer {
            Some(w) => Some(from_wire(w)?),
            None => None,
        };
        match r.status {
            ReplyStatus::Success => {
                if let (Some(p), Some(b)) = (&pending, &buffer) {
                    if p.flags.contains(Flags::NOCHANGE) && p.request_type != Some(b.buffer_type())
                    {
                        return Err(CallError::new(
                            ErrorKind::OType,
                            format!(
                                "reply is {} and TPNOCHANGE was given",
                                b.buffer_type().name()
                            ),
                        ));
                    }
                }
                Ok((
                    r.call_id,
                    CallReply {
                        buffer,
                        urcode: r.urcode,
                    },
                ))
            }
            ReplyStatus::Fail => Err(CallError {
                kind: ErrorKind::SvcFail,
                urcode: r.urcode,
                reply: buffer,
                detail: r.detail,
            }),
            ReplyStatus::Error(kind) => Err(CallError {
                kind,
                urcode: r.urcode,
                reply: None,
                detail: r.detail,
            }),
        }
    }
}

fn local_parts(welcome: &Welcome, endpoint: Endpoint, table: Arc<StatusTable>) -> Local {
    Local {
        endpoint,
        table,
        remote: Box::new(RemoteSocket {
            path: Path::new(&welcome.run_dir).join(tpmon_proto::REMOTE_SOCKET),
            sock: None,
        }),
        queues: welcome
            .servers
            .iter()
            .map(|s| PathBuf::from(&s.queue_path))
            .collect(),
        queue_max: welcome
            .servers
            .iter()
            .map(|s| u64::from(s.queue_max))
            .collect(),
        senders: Vec::new(),
        spin: tpmon_ipc::Spin::new(Duration::from_micros(u64::from(welcome.spin_us))),
        session: None,
        tm: None,
    }
}

/// The local fast path is used when the daemon offers its run directory and we can read
/// the same host token there and map the status table.
fn try_local(welcome: &Welcome) -> Option<(Endpoint, StatusTable)> {
    if welcome.run_dir.is_empty() {
        return None;
    }
    let dir = Path::new(&welcome.run_dir);
    let token = std::fs::read_to_string(dir.join("host.token")).ok()?;
    if token.trim().parse::<u64>().ok()? != welcome.host_token {
        return None;
    }
    let table = StatusTable::open(&dir.join("status.shm")).ok()?;
    let endpoint =
        Endpoint::bind_abstract(&format!("tpmon/{}", welcome.domain), MESSAGE_BYTES_MAX).ok()?;
    Some((endpoint, table))
}
