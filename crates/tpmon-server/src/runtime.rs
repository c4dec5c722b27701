//! The server main loop.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tpmon_client::{from_wire, to_wire, Client, Committed, TxError};
use tpmon_ipc::{monotonic_us, BusyRequest, CallOutcome, Endpoint, IpcError, Spin, StatusTable};
use tpmon_proto::{
    encode_frame, Branch, ControlMessage, ErrorKind, Flags, FrameDecoder, Message, Reply,
    ReplyStatus, Request, TxContext, Vote, Welcome,
};
use tpmon_xa::{failpoint, Rm, Xid};

use crate::context::Context;
use crate::service::{Outcome, ServiceRequest, ServiceResult};
use crate::{CONTROL_FD, ENV_MESSAGE_BYTES_MAX, ENV_SERVER_NAME, QUEUE_FD};

type Routine = Box<dyn FnMut(&mut Context, ServiceRequest) -> ServiceResult>;
type InitHook = Box<dyn FnOnce(&mut Context, &[String]) -> Result<(), String>>;
type DoneHook = Box<dyn FnOnce(&mut Context)>;

/// How long a reply may wait for room in a slow caller's queue before it is dropped.
const REPLY_SEND_PATIENCE: Duration = Duration::from_secs(2);
/// Exit code of an instance whose routine panicked or asked for TPEXIT.
const EXIT_RESTART: u8 = 75;

/// A server program: its routines and hooks.
#[derive(Default)]
pub struct Server {
    routines: HashMap<String, Routine>,
    init: Option<InitHook>,
    done: Option<DoneHook>,
}

impl Server {
    /// A server with no services yet.
    pub fn new() -> Server {
        Server::default()
    }

    /// Registers the routine for a service name.
    pub fn service(
        mut self,
        name: &str,
        routine: impl FnMut(&mut Context, ServiceRequest) -> ServiceResult + 'static,
    ) -> Server {
        self.routines.insert(name.to_string(), Box::new(routine));
        self
    }

    /// Sets `tpsvrinit`: runs once with the server's arguments before any request; an
    /// error stops the instance and is reported by the daemon.
    pub fn on_init(
        mut self,
        hook: impl FnOnce(&mut Context, &[String]) -> Result<(), String> + 'static,
    ) -> Server {
        self.init = Some(Box::new(hook));
        self
    }

    /// Sets `tpsvrdone`: runs once when the instance is shut down.
    pub fn on_done(mut self, hook: impl FnOnce(&mut Context) + 'static) -> Server {
        self.done = Some(Box::new(hook));
        self
    }

    /// Runs the server until the daemon shuts it down. Call from `main`; the process
    /// must have been started by the tpmon daemon.
    pub fn run(self) -> ExitCode {
        let name = std::env::var(ENV_SERVER_NAME).unwrap_or_else(|_| "server".into());
        match Instance::start(self, name.clone()) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("tpmon server {name}[{}]: {e}", std::process::id());
                ExitCode::from(1)
            }
        }
    }
}

struct Instance {
    server: Server,
    ctx: Context,
    queue: Endpoint,
    control: UnixStream,
    table: Arc<StatusTable>,
    welcome: Welcome,
    server_index: usize,
    slot: usize,
    service_index: HashMap<String, usize>,
    spin: Spin,
    /// The server's group (the `group` of the branches it reports).
    group: u16,
    /// Implicit demarcation: a call outside a transaction runs in its own.
    auto_transaction: bool,
}

/// Environment variables the daemon sets for servers of a group with a resource
/// manager.
const ENV_RM_KIND: &str = "TPMON_RM_KIND";
const ENV_RM_OPEN: &str = "TPMON_RM_OPEN";
const ENV_RM_POOL_MAX: &str = "TPMON_RM_POOL_MAX";
const ENV_AUTO_TRANSACTION: &str = "TPMON_AUTO_TRANSACTION";

/// Opens the group's resource manager, if the daemon named one.
fn open_rm() -> Result<Option<Box<dyn Rm>>, String> {
    let Ok(kind) = std::env::var(ENV_RM_KIND) else {
        return Ok(None);
    };
    let kind = match kind.as_str() {
        "postgres" => tpmon_config::RmKind::Postgres,
        "mariadb" => tpmon_config::RmKind::Mariadb,
        "noop" => tpmon_config::RmKind::Noop,
        "fake" => tpmon_config::RmKind::Fake,
        "embedded" => tpmon_config::RmKind::Embedded,
        other => return Err(format!("unknown resource manager kind {other:?}")),
    };
    let mut res =
        tpmon_config::XaResource::new(kind, std::env::var(ENV_RM_OPEN).unwrap_or_default());
    res.pool_max = std::env::var(ENV_RM_POOL_MAX)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    tpmon_rm::open(&res)
        .map(Some)
        .map_err(|e| format!("cannot open the {} resource manager: {e}", kind.as_str()))
}

/// How a request relates to a global transaction.
enum TxRole {
    /// Not in one.
    None,
    /// A participant of the caller's transaction; `own` is this instance's branch when
    /// the group has a resource manager.
    Join { own: Option<Xid> },
    /// The server began a transaction for this call (implicit demarcation).
    Auto { own: Xid },
}

fn send_control(control: &mut UnixStream, m: ControlMessage) -> Result<(), String> {
    let mut frame = Vec::new();
    encode_frame(&Message::Control(m).encode(), &mut frame);
    control
        .write_all(&frame)
        .map_err(|e| format!("control socket: {e}"))
}

/// Reports a start failure to the daemon (which shows it in status) and returns it.
fn init_failed(control: &mut UnixStream, reason: String) -> String {
    match send_control(
        control,
        ControlMessage::InitFailed {
            reason: reason.clone(),
        },
    ) {
        Ok(()) => reason,
        Err(e) => format!("{reason} (and {e})"),
    }
}

fn read_setup(control: &mut UnixStream) -> Result<(Welcome, usize, usize, u16), String> {
    let mut dec = FrameDecoder::new(16 << 20);
    let mut buf = [0u8; 8192];
    loop {
        if let Some(body) = dec
            .next_frame()
            .map_err(|e| format!("control socket: {e}"))?
        {
            return match Message::decode(&body) {
                Ok(Message::Control(ControlMessage::Setup {
                    welcome,
                    server,
                    slot,
                    group,
                })) => Ok((welcome, server as usize, slot as usize, group)),
                Ok(other) => Err(format!("expected the set-up message, got {other:?}")),
                Err(e) => Err(format!("control socket: {e}")),
            };
        }
        match control.read(&mut buf) {
            Ok(0) => return Err("the daemon closed the control socket before set-up".into()),
            Ok(n) => dec.extend(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("control socket: {e}")),
        }
    }
}

impl Instance {
    fn start(mut server: Server, name: String) -> Result<ExitCode, String> {
        let max = std::env::var(ENV_MESSAGE_BYTES_MAX)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4usize << 20);
        // SAFETY: the daemon starts every server with its control socket on CONTROL_FD
        // and its queue on QUEUE_FD; nothing else in this process owns them.
        let mut control = unsafe { UnixStream::from_raw_fd(CONTROL_FD) };
        // SAFETY: as above.
        let queue = unsafe { Endpoint::from_raw_fd(QUEUE_FD, max) };
        let (welcome, server_index, slot, group) = read_setup(&mut control)?;
        let table = Arc::new(
            StatusTable::open(&Path::new(&welcome.run_dir).join("status.shm"))
                .map_err(|e| e.to_string())?,
        );
        let client = Client::local(welcome.clone(), table.clone()).map_err(|e| e.to_string())?;
        let args: Vec<String> = std::env::args().skip(1).collect();
        // XA mode: the group's resource manager is opened before tpsvrinit (tx_open).
        let rm = match open_rm() {
            Ok(rm) => rm,
            Err(reason) => return Err(init_failed(&mut control, reason)),
        };
        let auto_transaction = rm.is_some() && std::env::var(ENV_AUTO_TRANSACTION).is_ok();
        let mut ctx = Context {
            client,
            server_name: name.clone(),
            args: args.clone(),
            slot: slot as u32,
            group,
            rm,
            in_branch: false,
            own_branch: None,
            branch_seq: 0,
            suspect_session: false,
        };
        // Every service the configuration gives this server must have a routine.
        let missing: Vec<&str> = welcome
            .services
            .iter()
            .filter(|s| s.server as usize == server_index && !server.routines.contains_key(&s.name))
            .map(|s| s.name.as_str())
            .collect();
        // Every start failure is reported to the daemon, which shows it in status.
        let init_result = if !missing.is_empty() {
            Err(format!(
                "the program has no routine for service(s) {}",
                missing.join(", ")
            ))
        } else if let Some(init) = server.init.take() {
            match catch_unwind(AssertUnwindSafe(|| init(&mut ctx, &args))) {
                Ok(Ok(())) => Ok(()),
                Ok(Err(reason)) => Err(format!("tpsvrinit failed: {reason}")),
                Err(_) => Err("tpsvrinit panicked".to_string()),
            }
        } else {
            Ok(())
        };
        if let Err(reason) = init_result {
            return Err(init_failed(&mut control, reason));
        }
        send_control(
            &mut control,
            ControlMessage::Ready {
                pid: std::process::id(),
            },
        )?;
        let spin_us = welcome.spin_us;
        // This server's own entries: a service offered on several nodes appears once
        // per node in the routing table.
        let service_index = welcome
            .services
            .iter()
            .enumerate()
            .filter(|(_, s)| s.server as usize == server_index)
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        let mut inst = Instance {
            server,
            ctx,
            queue,
            control,
            table,
            welcome,
            server_index,
            slot,
            service_index,
            spin: Spin::new(Duration::from_micros(u64::from(spin_us))),
            group,
            auto_transaction,
        };
        // A transaction tpsvrinit began and left open holds its locks until cleared.
        inst.clear_leftover_transaction("after tpsvrinit");
        let code = inst.serve();
        if let Some(done) = inst.server.done.take() {
            // Nor may tpsvrdone's statements land in a branch a routine left.
            inst.clear_leftover_transaction("before tpsvrdone");
            if catch_unwind(AssertUnwindSafe(|| done(&mut inst.ctx))).is_err() {
                eprintln!(
                    "tpmon server {name}[{}]: tpsvrdone panicked",
                    std::process::id()
                );
            }
        }
        Ok(code)
    }

    fn log(&self, what: &str) {
        eprintln!(
            "tpmon server {}[{}]: {what}",
            self.ctx.server_name,
            std::process::id()
        );
    }

    /// Waits for the next message on the queue as the leader (the one instance that
    /// sits on the socket), or sleeps as a follower until it may lead.
    fn next_message(&mut self) -> Result<tpmon_ipc::Received, IpcError> {
        let (table, server, slot) = (self.table.clone(), self.server_index, self.slot);
        loop {
            if table.try_lead(server, slot) {
                let r = self
                    .queue
                    .recv_spinning_when(&mut self.spin, &*table, || table.queued(server) > 0);
                // Every datagram put in a queue was counted by its sender; give its
                // place back before deciding whether a follower must take over.
                if matches!(
                    r,
                    Ok(_) | Err(IpcError::Malformed(_)) | Err(IpcError::TooLarge { .. })
                ) {
                    table.queue_release(server);
                }
                table.unlead(server, slot);
                return r;
            }
            table.follow(server, slot);
        }
    }

    /// Serves until a Shutdown message or a restart request; returns the exit code.
    fn serve(&mut self) -> ExitCode {
        loop {
            let got = match self.next_message() {
                Ok(g) => g,
                Err(IpcError::Malformed(m)) => {
                    self.log(&format!("dropped a malformed datagram: {m}"));
                    continue;
                }
                Err(e @ IpcError::Foreign { .. }) => {
                    self.log(&format!("{e}"));
                    continue;
                }
                Err(e @ IpcError::TooLarge { .. }) => {
                    self.log(&format!("dropped a request: {e}"));
                    continue;
                }
                Err(IpcError::TimedOut) => continue,
                Err(e) => {
                    self.log(&format!("service queue failed: {e}"));
                    return ExitCode::from(1);
                }
            };
            match Message::decode(&got.body) {
                Ok(Message::Request(req)) => {
                    if let Some(reason) = self.handle(req) {
                        let _ = send_control(&mut self.control, ControlMessage::Exiting { reason });
                        return ExitCode::from(EXIT_RESTART);
                    }
                }
                Ok(Message::Shutdown) => {
                    // Let the next instance come to the socket for its own Shutdown.
                    self.table.after_send(self.server_index);
                    return ExitCode::SUCCESS;
                }
                Ok(other) => {
                    self.log(&format!(
                        "dropped an unexpected message on the queue: {other:?}"
                    ));
                }
                Err(e) => {
                    self.log(&format!("dropped a malformed request: {e}"));
                }
            }
        }
    }

    /// Runs one request; returns Some(reason) when the instance must exit afterwards.
    fn handle(&mut self, req: Request) -> Option<String> {
        let started = monotonic_us();
        let service = self.service_index.get(&req.service).copied();
        self.table.begin_request(
            self.slot,
            &BusyRequest {
                call_id: req.call_id,
                service: service.map_or(u32::MAX, |s| s as u32),
                started_us: started,
                flags: req.flags.0,
                client: req.client.0,
                reply_to: req.reply_to.clone(),
            },
        );
        let (reply, stat, exit) = self.run_routine(&req, service);
        if stat != CallOutcome::Success {
            // The failure may come from a broken database session (see
            // `Context::mariadb`); the next use outside a branch checks it.
            self.ctx.suspect_session = true;
        }
        if let Some(reply) = reply {
            self.send_reply(&req, reply);
        }
        if let Some(s) = service {
            self.table
                .record_call(s, monotonic_us().saturating_sub(started), stat);
        }
        self.table.end_request(self.slot);
        exit
    }

    /// An error reply to `req`. It carries the branches the request brought (a
    /// forward's prepared branches): the originator must learn of them whatever
    /// happens here, or they would wait for recovery's rollback at the deadline.
    fn error_reply(req: &Request, kind: ErrorKind, detail: String) -> Reply {
        Reply {
            call_id: req.call_id,
            status: ReplyStatus::Error(kind),
            urcode: 0,
            buffer: None,
            detail,
            branches: req
                .tx
                .as_ref()
                .map(|t| t.branches.clone())
                .unwrap_or_default(),
        }
    }

    fn run_routine(
        &mut self,
        req: &Request,
        service: Option<usize>,
    ) -> (Option<Reply>, CallOutcome, Option<String>) {
        let err = |kind, detail: String| {
            (
                Some(Self::error_reply(req, kind, detail)),
                CallOutcome::Error,
                None,
            )
        };
        let Some(si) =
            service.filter(|&s| self.welcome.services[s].server as usize == self.server_index)
        else {
            return err(
                ErrorKind::NoEnt,
                format!("service {} is not offered here", req.service),
            );
        };
        let route = &self.welcome.services[si];
        let buffer = match &req.buffer {
            None => None,
            Some(w) => {
                if route.buffer_types != 0
                    && route.buffer_types & (1u32 << w.type_code.min(31)) == 0
                {
                    return err(
                        ErrorKind::IType,
                        format!("service {} does not accept this buffer type", req.service),
                    );
                }
                match from_wire(w) {
                    Ok(b) => Some(b),
                    Err(e) => {
                        return err(ErrorKind::IType, format!("request buffer: {}", e.detail))
                    }
                }
            }
        };
        if !self.server.routines.contains_key(&req.service) {
            return err(ErrorKind::NoEnt, format!("no routine for {}", req.service));
        }
        let role = match self.enter_transaction(req) {
            Ok(r) => r,
            Err(reply) => return (Some(*reply), CallOutcome::Error, None),
        };
        // TPTRAN tells the routine whether it runs in a global transaction: the
        // caller's or an automatic one (never what the wire claims).
        let flags = if self.ctx.client.in_transaction() {
            req.flags | Flags::TRAN
        } else {
            req.flags.without(Flags::TRAN)
        };
        let sreq = ServiceRequest {
            service: req.service.clone(),
            flags,
            client: req.client,
            call_id: req.call_id,
            buffer,
            tx: self.ctx.client.current_context(),
        };
        let Some(routine) = self.server.routines.get_mut(&req.service) else {
            return err(ErrorKind::NoEnt, format!("no routine for {}", req.service));
        };
        let ctx = &mut self.ctx;
        let result = catch_unwind(AssertUnwindSafe(|| routine(ctx, sreq)));
        let outstanding = self.ctx.client.outstanding();
        if outstanding > 0 {
            self.ctx.client.abandon_all();
        }
        let result = match result {
            Ok(r) => r,
            Err(p) => {
                let msg = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".into());
                let reason = format!("service {} panicked: {msg}", req.service);
                self.log(&reason);
                let branches = self.leave_transaction(role, false).1;
                let mut reply = Self::error_reply(req, ErrorKind::SvcErr, reason.clone());
                reply.branches = branches;
                return (Some(reply), CallOutcome::Error, Some(reason));
            }
        };
        if outstanding > 0 {
            let branches = self.leave_transaction(role, false).1;
            let mut reply = Self::error_reply(
                req,
                ErrorKind::SvcErr,
                format!(
                    "service {} returned with {outstanding} calls outstanding",
                    req.service
                ),
            );
            reply.branches = branches;
            return (Some(reply), CallOutcome::Error, None);
        }
        match result {
            ServiceResult::Return {
                outcome,
                rcode,
                buffer,
            } => {
                let success = outcome == Outcome::Success;
                let (tx_failure, branches) = self.leave_transaction(role, success);
                let mut reply = Reply {
                    call_id: req.call_id,
                    status: if success {
                        ReplyStatus::Success
                    } else {
                        ReplyStatus::Fail
                    },
                    urcode: rcode,
                    buffer: buffer.as_ref().map(to_wire),
                    detail: String::new(),
                    branches,
                };
                let mut stat = if success {
                    CallOutcome::Success
                } else {
                    CallOutcome::Failure
                };
                if let Some(why) = tx_failure {
                    // The routine succeeded but its transaction work did not.
                    reply.status = ReplyStatus::Error(ErrorKind::SvcErr);
                    reply.buffer = None;
                    reply.detail = why;
                    stat = CallOutcome::Error;
                }
                let exit = (outcome == Outcome::Exit)
                    .then(|| format!("service {} returned TPEXIT", req.service));
                (Some(reply), stat, exit)
            }
            ServiceResult::Forward { service, buffer } => {
                if matches!(role, TxRole::Auto { .. }) {
                    self.leave_transaction(role, false);
                    return err(
                        ErrorKind::Proto,
                        format!(
                            "service {} forwarded from an automatic transaction; \
                             tpforward needs the caller's transaction",
                            req.service
                        ),
                    );
                }
                // This instance's work is done: its branch is prepared now and travels
                // with the request, so the final reply reports it.
                let in_tx = req.tx.is_some();
                let (tx_failure, branches) = self.leave_transaction(role, true);
                if let Some(why) = tx_failure {
                    let mut reply = Self::error_reply(req, ErrorKind::SvcErr, why);
                    reply.branches = branches;
                    return (Some(reply), CallOutcome::Error, None);
                }
                let fwd = Request {
                    call_id: req.call_id,
                    flags: req.flags,
                    service,
                    reply_to: req.reply_to.clone(),
                    client: req.client,
                    tx: req.tx.as_ref().filter(|_| in_tx).map(|t| TxContext {
                        format_id: t.format_id,
                        gtrid: t.gtrid.clone(),
                        deadline_ms: t.deadline_ms,
                        branches: branches.clone(),
                    }),
                    buffer: buffer.as_ref().map(to_wire),
                };
                match self.ctx.client.forward(&fwd) {
                    Ok(()) => (None, CallOutcome::Success, None),
                    Err(e) => {
                        let mut reply = Self::error_reply(
                            req,
                            e.kind,
                            format!("forward to {}: {}", fwd.service, e.detail),
                        );
                        reply.branches = branches;
                        (Some(reply), CallOutcome::Error, None)
                    }
                }
            }
        }
    }

    /// A transaction this instance may join: one of this domain and node, of the
    /// daemon's current boot, in canonical form, with a deadline within the domain's
    /// limit (branches of anything else could never be resolved).
    fn check_transaction(&self, tx: &TxContext) -> Result<(), String> {
        let w = &self.welcome;
        let g = tpmon_proto::Gtrid::parse(&tx.gtrid)
            .filter(|g| g.encode().as_bytes() == tx.gtrid.as_slice())
            .ok_or("the request's transaction id is not a tpmon gtrid")?;
        // A transaction another node of the domain coordinates comes with a call over
        // the node links: its epoch is that node's, which this one does not know.
        if g.domain != w.domain || (g.node == w.node && g.epoch != w.epoch) {
            return Err(format!(
                "the request belongs to a transaction of {}:{} (epoch {}), not of this domain's current boot",
                g.domain, g.node, g.epoch
            ));
        }
        // Only a node of the domain can ever decide the transaction: a branch prepared
        // for any other would stay prepared for good.
        if !w.is_domain_node(&g.node) {
            return Err(format!(
                "the request belongs to a transaction of node {}, which is not a node of domain {}",
                g.node, g.domain
            ));
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let limit = now_ms
            .saturating_add(u64::from(w.tx_timeout_max_ms))
            .saturating_add(2000);
        if g.deadline_s.saturating_mul(1000) > limit {
            return Err("the transaction's deadline is beyond the domain's limit".into());
        }
        Ok(())
    }

    /// Ends a transaction this instance's context began (an automatic transaction, a
    /// leftover): as its originator, unchained and with the domain's commit-return
    /// (decision logged) whatever the routine set with `tx_set_control` or
    /// `tx_set_commit_return`, which stay in force for its own transactions. The
    /// context is outside any transaction afterwards.
    fn end_own_transaction(&mut self, commit: bool) -> Result<Committed, TxError> {
        // A branch of the routine's own on the instance's session never survives the
        // runtime's end (whatever the routine did to the client's flags).
        self.ctx.end_own_branch(false);
        self.ctx.client.set_local_branch(false);
        self.ctx.client.end_automatic(commit)
    }

    /// True when the gtrid is of a transaction this instance's context began (its
    /// origin is this context's client id, in this node's current boot).
    fn began_here(&self, gtrid: &str) -> bool {
        let w = self.ctx.client.welcome();
        tpmon_proto::Gtrid::parse(gtrid.as_bytes()).is_some_and(|g| {
            g.domain == w.domain
                && g.node == w.node
                && g.epoch == w.epoch
                && g.origin == (w.client_id.0 & 0xFFFF_FFFF) as u32
        })
    }

    /// Clears a transaction left on the instance's context by an earlier request (a
    /// bug: the runtime ends every transaction before replying), so that it cannot
    /// make every later request fail: rolled back if this instance began it, else
    /// left.
    fn clear_leftover_transaction(&mut self, when: &str) {
        self.ctx.end_own_branch(false);
        let Some(gtrid) = self.ctx.client.current_gtrid() else {
            return;
        };
        if self.ctx.client.is_originator() || self.began_here(&gtrid) {
            let r = self.end_own_transaction(false);
            self.log(&format!(
                "transaction {gtrid} was still open on this instance's context {when}; \
                 rolled back ({})",
                match r {
                    Ok(_) => "done".to_string(),
                    Err(e) => e.to_string(),
                }
            ));
        } else {
            self.ctx.client.take_transaction();
            self.log(&format!(
                "transaction {gtrid} was still joined on this instance's context {when}; left"
            ));
        }
    }

    /// Joins the request's transaction (or begins one for an automatic-transaction
    /// group) and starts this instance's branch in the resource manager.
    fn enter_transaction(&mut self, req: &Request) -> Result<TxRole, Box<Reply>> {
        self.clear_leftover_transaction("before a new request");
        // As with Tuxedo's AUTOTRAN, a request made with TPNOTRAN from inside a
        // transaction arrives without one, so it too runs in a new transaction.
        let auto = self.auto_transaction && req.tx.is_none();
        if let Some(tx) = &req.tx {
            if let Err(why) = self.check_transaction(tx) {
                return Err(Box::new(Self::error_reply(req, ErrorKind::Tran, why)));
            }
        }
        if !auto {
            self.ctx.client.set_transaction(req.tx.clone());
        } else if let Err(e) = self.ctx.client.begin_automatic() {
            return Err(Box::new(Self::error_reply(
                req,
                ErrorKind::Tran,
                format!("cannot begin the automatic transaction: {e}"),
            )));
        } else {
            // The runtime ends it, not the routine.
            self.ctx.client.set_originator(false);
        }
        let Some(gtrid) = self.ctx.client.current_gtrid() else {
            return Ok(TxRole::None);
        };
        if self.ctx.rm.is_none() {
            return Ok(TxRole::Join { own: None });
        }
        let xid = self.ctx.next_xid(gtrid);
        let Some(rm) = self.ctx.rm.as_mut() else {
            return Ok(TxRole::Join { own: None });
        };
        if let Err(e) = tpmon_xa::with_reconnect(rm.as_mut(), |rm| rm.begin(&xid)) {
            let why = format!("cannot start the transaction branch: {e}");
            let _ = rm.rollback_active(&xid);
            self.log(&why);
            if auto {
                // Before the routine the context is not the originator: end it as one,
                // or it stays attached and every later automatic transaction fails.
                let _ = self.end_own_transaction(false);
            } else {
                self.ctx.client.take_transaction();
            }
            let mut reply = Self::error_reply(req, ErrorKind::SvcErr, why);
            reply.branches.push(Branch {
                group: self.group,
                bqual: xid.bqual.into_bytes(),
                vote: Vote::Failed,
                cpn: 0,
            });
            return Err(Box::new(reply));
        }
        self.ctx.in_branch = true;
        Ok(if auto {
            TxRole::Auto { own: xid }
        } else {
            TxRole::Join { own: Some(xid) }
        })
    }

    /// Ends this instance's part of the transaction: prepares its branch when the
    /// routine succeeded, else rolls it back; for an automatic transaction, commits or
    /// rolls back the whole. Returns why the transaction work failed (when the
    /// routine succeeded but it did not) and the branches to report to the caller.
    fn leave_transaction(&mut self, role: TxRole, success: bool) -> (Option<String>, Vec<Branch>) {
        // The branch of a transaction the routine began and left open (its rollback
        // follows below).
        self.ctx.end_own_branch(false);
        self.ctx.in_branch = false;
        let own = match &role {
            TxRole::None => None,
            TxRole::Join { own } => own.clone(),
            TxRole::Auto { own } => Some(own.clone()),
        };
        let mut failure = None;
        let mut own_branch = None;
        let mut prepare_failed = None;
        if let (Some(xid), Some(rm)) = (own, self.ctx.rm.as_mut()) {
            let doomed = self.ctx.client.transaction_doomed();
            if success && !doomed {
                failpoint::hit("server.before_prepare");
                match rm.prepare_cpn(&xid) {
                    Ok((vote, cpn)) => {
                        failpoint::hit("server.after_prepare");
                        own_branch = Some(Branch {
                            group: self.group,
                            bqual: xid.bqual.clone().into_bytes(),
                            vote,
                            cpn,
                        });
                    }
                    Err(e) => {
                        let _ = rm.rollback_active(&xid);
                        // Logged too: the reason may concern the operator (a service
                        // that committed its work outside the global transaction).
                        prepare_failed = Some(format!("branch {xid} failed to prepare: {e}"));
                        failure = Some(format!("the branch failed to prepare: {e}"));
                        own_branch = Some(Branch {
                            group: self.group,
                            bqual: xid.bqual.clone().into_bytes(),
                            vote: Vote::Failed,
                            cpn: 0,
                        });
                    }
                }
            } else {
                let _ = rm.rollback_active(&xid);
                own_branch = Some(Branch {
                    group: self.group,
                    bqual: xid.bqual.clone().into_bytes(),
                    vote: Vote::Failed,
                    cpn: 0,
                });
            }
        }
        if let Some(why) = prepare_failed {
            self.log(&why);
        }
        match role {
            TxRole::None => {
                // A transaction the routine began itself and did not end: its branches
                // would wait for the deadline, and the routine's caller would never
                // learn that its work was not committed.
                let Some(gtrid) = self.ctx.client.current_gtrid() else {
                    return (None, Vec::new());
                };
                if !self.ctx.client.is_originator() {
                    self.ctx.client.take_transaction();
                    return (None, Vec::new());
                }
                let outcome = match self.end_own_transaction(false) {
                    Ok(_) => "rolled back".to_string(),
                    Err(e) => format!("its rollback failed: {e}"),
                };
                let why = format!(
                    "the service returned while the transaction {gtrid} it began itself \
                     was still open; {outcome}"
                );
                self.log(&why);
                (Some(why), Vec::new())
            }
            TxRole::Join { .. } => {
                let mut branches = self
                    .ctx
                    .client
                    .take_transaction()
                    .map(|t| {
                        let mut b = t.branches;
                        if t.doomed.is_some() && own_branch.is_none() {
                            // A nested call failed: tell the originator.
                            b.push(Branch {
                                group: self.group,
                                bqual: b"doomed".to_vec(),
                                vote: Vote::Failed,
                                cpn: 0,
                            });
                        }
                        b
                    })
                    .unwrap_or_default();
                branches.extend(own_branch);
                (failure, branches)
            }
            TxRole::Auto { .. } => {
                if let Some(b) = own_branch {
                    self.ctx.client.join_branch(b);
                }
                if success && failure.is_none() {
                    if let Err(e) = self.end_own_transaction(true) {
                        failure = Some(format!("the automatic transaction did not commit: {e}"));
                    }
                } else {
                    let _ = self.end_own_transaction(false);
                }
                (failure, Vec::new())
            }
        }
    }

    fn send_reply(&mut self, req: &Request, reply: Reply) {
        if req.flags.contains(Flags::NOREPLY) || req.reply_to.is_empty() {
            return;
        }
        let msg = Message::Reply(reply);
        let mut body = msg.encode();
        let max = self.welcome.message_bytes_max as usize;
        if max > 0 && body.len() > max {
            let detail = format!(
                "service {} replied {} bytes; the domain accepts at most {max} (frame_bytes_max)",
                req.service,
                body.len()
            );
            self.log(&detail);
            let mut short = Self::error_reply(req, ErrorKind::SvcErr, detail);
            if let Message::Reply(r) = msg {
                // The branches this call made, so that the originator rolls them back.
                short.branches = r.branches;
            }
            body = Message::Reply(short).encode();
        }
        let give_up = Instant::now() + REPLY_SEND_PATIENCE;
        loop {
            match self.queue.send_to_abstract(&req.reply_to, &body, true) {
                Ok(()) => return,
                Err(IpcError::WouldBlock) if Instant::now() < give_up => {
                    std::thread::sleep(Duration::from_micros(500));
                }
                Err(IpcError::Gone(_)) => return, // the caller is gone: nobody to tell
                Err(e) => {
                    self.log(&format!("reply to call {} dropped: {e}", req.call_id));
                    return;
                }
            }
        }
    }
}
