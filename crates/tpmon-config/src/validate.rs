//! From the raw structures to the typed model: defaults, ranges, names, references.
//!
//! Owns every rule that the TOML schema alone cannot express: which keys are required,
//! the default and the accepted range of every number, the syntax of names and
//! addresses, uniqueness of names within a section, the resolution of references into
//! indices, `${VAR}` expansion of the keys that allow it, and the resolution of relative
//! paths against the configuration file's directory. Sections are checked in file-schema
//! order (domain, limits, nodes, groups, servers, services) and the first problem found is
//! returned, located at the offending value (or, for a missing key, at the table header).
//! Nothing a file contains can make this module panic: every number is range-checked
//! before it is narrowed, and every index it stores was produced by a lookup.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_spanned::Spanned;

use crate::error::{ConfigError, ErrorKind, Position};
use crate::expand::{expand, Var};
use crate::model::{
    Domain, DomainConfig, Group, Limits, Node, Password, ResourceManager, RestartPolicy, RmKind,
    Server, Service, TxSettings, Unresolved, XaResource, BUFFER_TYPES, DEFAULT_GROUP,
    GTRID_NAMES_BYTES_MAX, NAME_LEN_MAX,
};
use crate::raw::{
    Int, RawDomain, RawFile, RawGroup, RawLimits, RawNode, RawRm, RawServer, RawService, RawTx, Str,
};

/// The default, smallest and largest accepted value of an integer key.
#[derive(Clone, Copy, Debug)]
struct Bound {
    default: u64,
    min: u64,
    max: u64,
}

const fn bound(default: u64, min: u64, max: u64) -> Bound {
    Bound { default, min, max }
}

// `[domain.limits]`. Each upper bound is far above any sane setting; it exists so that a
// typo (an extra digit or three) is caught here instead of exhausting memory later.
const CLIENTS: Bound = bound(1024, 1, 65_536);
const FRAME_BYTES: Bound = bound(4 * 1024 * 1024, 1, 1 << 30);
// The default is capped at frame_bytes_max (see `limits`).
const UNAUTHENTICATED_FRAME_BYTES: Bound = bound(4096, 1, 1 << 30);
const PENDING_CALLS: Bound = bound(128, 1, 65_536);
const LINK_CALLS: Bound = bound(4096, 1, 65_536);
const HANDSHAKE_TIMEOUT_MS: Bound = bound(5000, 1, 600_000);
const BLOCKING_TIMEOUT_S: Bound = bound(60, 1, 86_400);
const SPIN_US: Bound = bound(20, 0, 1_000);

// `[[server]]`. The default of max_instances is min_instances; the default of
// restart_backoff_max_ms is at least restart_backoff_ms (see `server`).
const INSTANCES: Bound = bound(1, 1, 1024);
const RESTART_MAX: Bound = bound(5, 1, 1000);
const RESTART_WINDOW_S: Bound = bound(60, 1, 86_400);
const RESTART_BACKOFF_MS: Bound = bound(100, 1, 3_600_000);
const RESTART_BACKOFF_MAX_MS: Bound = bound(5000, 1, 3_600_000);
const QUEUE: Bound = bound(256, 1, 1_000_000);
const SHUTDOWN_TIMEOUT_S: Bound = bound(10, 1, 3600);
const START_TIMEOUT_S: Bound = bound(30, 1, 3600);

// `[[service]]`: 0 means no time limit.
const SERVICE_TIMEOUT_S: Bound = bound(0, 0, 86_400);

/// Longest domain password, in bytes.
const PASSWORD_BYTES_MAX: usize = 255;
/// Shortest node-link secret, in bytes (128 bits).
const LINK_SECRET_BYTES_MIN: usize = 16;
/// Longest node-link secret, in bytes.
const LINK_SECRET_BYTES_MAX: usize = 1024;
/// Longest node host name (the DNS limit).
const HOST_LEN_MAX: usize = 253;

// `[domain.tx]`.
const TX_TIMEOUT_S: Bound = bound(30, 1, 86_400);
const TX_TIMEOUT_MAX_S: Bound = bound(300, 1, 86_400);
const RECOVERY_INTERVAL_MS: Bound = bound(1000, 10, 600_000);
const TX_ENTRIES: Bound = bound(65_536, 16, 10_000_000);
const LOG_COMMIT_DELAY_US: Bound = bound(100, 0, 10_000);
const LOG_PREALLOCATE_KIB: Bound = bound(1024, 0, 65_536);
// `[group.rm]`.
const RM_POOL: Bound = bound(8, 1, 1024);
/// An embedded site's checkpoint interval (delta), in ms: 10 ms to a day.
const RM_CHECKPOINT_INTERVAL: Bound =
    bound(crate::model::DEFAULT_CHECKPOINT_INTERVAL_MS, 10, 86_400_000);
/// An embedded site's lock-wait timeout, in ms.
const RM_LOCK_TIMEOUT: Bound = bound(crate::model::DEFAULT_LOCK_TIMEOUT_MS, 1, 3_600_000);

/// The label of the `index`-th entry (0-based) of a section in messages: `server "qsrv"`
/// if the entry has a valid name, else `server #2` (numbered from 1).
pub(crate) fn label(section: &str, index: usize, name: Option<&str>) -> String {
    match name {
        Some(name) if name_problem(name).is_none() => format!("{section} \"{name}\""),
        _ => format!("{section} #{}", index + 1),
    }
}

/// What is wrong with a name, if anything.
fn name_problem(name: &str) -> Option<(usize, String)> {
    if name.is_empty() {
        return Some((0, "must not be empty".to_string()));
    }
    if let Some((at, c)) = name
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Some((
            at,
            format!("contains {c:?}; names may contain only letters, digits, `_`, `.` and `-`"),
        ));
    }
    if name.len() > NAME_LEN_MAX {
        return Some((
            0,
            format!(
                "must be at most {NAME_LEN_MAX} characters long (is {})",
                name.len()
            ),
        ));
    }
    None
}

/// Where errors go: the entry label (`None` for the `[domain]` table) and the prefix of
/// key paths (`domain.` inside `[domain]`).
struct Scope {
    item: Option<String>,
    prefix: &'static str,
}

impl Scope {
    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

/// Shared state of one validation run.
struct Ctx<'a> {
    text: &'a str,
    source: &'a Path,
    env: &'a dyn Fn(&str) -> Var,
    base_dir: PathBuf,
    /// Read as a tool ([`crate::Reader::Tool`]): values only the daemon uses whose
    /// variables are not set go here instead of failing.
    unresolved: Option<RefCell<Vec<Unresolved>>>,
}

impl Ctx<'_> {
    fn line(&self, offset: usize) -> usize {
        Position::from_offset(self.text, offset).line
    }

    fn err(
        &self,
        scope: &Scope,
        key: &str,
        offset: usize,
        kind: ErrorKind,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::at(
            kind,
            self.source,
            Position::from_offset(self.text, offset),
            scope.item.clone(),
            Some(scope.key(key)),
            message,
        )
    }

    /// The offset of byte `inner` of the string value at `span`, if the value is written
    /// as a simple quoted string without escapes; else the start of the value.
    fn offset_in(&self, span: &Range<usize>, value: &str, inner: usize) -> usize {
        let written = self.text.get(span.clone()).unwrap_or("");
        let plain = ['"', '\''].into_iter().any(|q| {
            written.len() >= 2
                && written.starts_with(q)
                && written.ends_with(q)
                && written.get(1..written.len() - 1) == Some(value)
        });
        if plain {
            span.start + 1 + inner
        } else {
            span.start
        }
    }

    fn required<'r>(
        &self,
        scope: &Scope,
        key: &str,
        value: Option<&'r Str>,
        table_span: &Range<usize>,
    ) -> Result<&'r Str, ConfigError> {
        value.ok_or_else(|| {
            self.err(
                scope,
                key,
                table_span.start,
                ErrorKind::MissingKey,
                "required key is missing",
            )
        })
    }

    fn name(&self, scope: &Scope, key: &str, value: &Str) -> Result<String, ConfigError> {
        let name = value.get_ref();
        match name_problem(name) {
            None => Ok(name.clone()),
            Some((at, message)) => {
                let offset = self.offset_in(&value.span(), name, at);
                Err(self.err(scope, key, offset, ErrorKind::InvalidValue, message))
            }
        }
    }

    fn int(
        &self,
        scope: &Scope,
        key: &str,
        value: Option<&Int>,
        bound: Bound,
    ) -> Result<u64, ConfigError> {
        let Some(value) = value else {
            return Ok(bound.default);
        };
        let n = *value.get_ref();
        let fail = |message: String| {
            self.err(
                scope,
                key,
                value.span().start,
                ErrorKind::InvalidValue,
                message,
            )
        };
        let n = u64::try_from(n).map_err(|_| fail(format!("must be at least {}", bound.min)))?;
        if n < bound.min {
            return Err(fail(format!("must be at least {}", bound.min)));
        }
        if n > bound.max {
            return Err(fail(format!("must be at most {}", bound.max)));
        }
        Ok(n)
    }

    fn addr(&self, scope: &Scope, key: &str, value: &Str) -> Result<SocketAddr, ConfigError> {
        let written = value.get_ref();
        let fail = |message: String| {
            self.err(
                scope,
                key,
                value.span().start,
                ErrorKind::InvalidValue,
                message,
            )
        };
        let addr: SocketAddr = written.trim().parse().map_err(|_| {
            fail(format!(
                "{written:?} is not a socket address (expected IP:PORT such as \
                 127.0.0.1:7480 or [::1]:7480)"
            ))
        })?;
        if addr.port() == 0 {
            return Err(fail("port must not be 0".to_string()));
        }
        Ok(addr)
    }

    /// Expands a value only the daemon uses (`rm.open`, `link_secret`, a server's
    /// `args` and `env`). Read as a tool, a variable that is not set is no error: the
    /// value is recorded as unresolved and `None` returned.
    fn daemon_only(
        &self,
        scope: &Scope,
        key: &str,
        value: &Str,
    ) -> Result<Option<String>, ConfigError> {
        match (self.expanded(scope, key, value), &self.unresolved) {
            (Ok(v), _) => Ok(Some(v)),
            (Err(e), Some(list)) if e.kind() == ErrorKind::UnsetVariable => {
                // Expansion stops at the first problem: check the rest of the value
                // with unset variables taken as empty, so that a later bad name is
                // still reported.
                let lenient = |name: &str| match (self.env)(name) {
                    Var::Unset => Var::Set(String::new()),
                    other => other,
                };
                Ctx {
                    env: &lenient,
                    unresolved: None,
                    base_dir: PathBuf::new(),
                    ..*self
                }
                .expanded(scope, key, value)?;
                list.borrow_mut().push(Unresolved {
                    item: scope.item.clone(),
                    key: scope.key(key),
                    message: e.to_string(),
                });
                Ok(None)
            }
            (Err(e), _) => Err(e),
        }
    }

    /// Expands `${VAR}` references and rejects NUL characters (they cannot be passed to
    /// a process).
    fn expanded(&self, scope: &Scope, key: &str, value: &Str) -> Result<String, ConfigError> {
        let written = value.get_ref();
        let span = value.span();
        let out = expand(written, self.env).map_err(|(at, e)| {
            let kind = match e {
                crate::expand::ExpandError::Unset(_) => ErrorKind::UnsetVariable,
                _ => ErrorKind::InvalidValue,
            };
            let offset = self.offset_in(&span, written, at);
            self.err(scope, key, offset, kind, e.message())
        })?;
        if out.contains('\0') {
            return Err(self.err(
                scope,
                key,
                span.start,
                ErrorKind::InvalidValue,
                "must not contain a NUL character",
            ));
        }
        Ok(out)
    }

    fn non_empty(&self, scope: &Scope, key: &str, value: &Str) -> Result<String, ConfigError> {
        let out = self.expanded(scope, key, value)?;
        if out.is_empty() {
            return Err(self.err(
                scope,
                key,
                value.span().start,
                ErrorKind::InvalidValue,
                "must not be empty",
            ));
        }
        Ok(out)
    }

    fn path(&self, scope: &Scope, key: &str, value: &Str) -> Result<PathBuf, ConfigError> {
        Ok(self.base_dir.join(self.non_empty(scope, key, value)?))
    }
}

/// Names seen so far in one section, with the line of their first definition.
#[derive(Default)]
struct Names {
    seen: HashMap<String, (usize, usize)>,
}

impl Names {
    /// Records `name` as entry `index`; on a duplicate returns the first entry's line.
    fn insert(&mut self, name: &str, index: usize, line: usize) -> Result<(), usize> {
        if let Some(&(_, first_line)) = self.seen.get(name) {
            return Err(first_line);
        }
        self.seen.insert(name.to_string(), (index, line));
        Ok(())
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.seen.get(name).map(|&(index, _)| index)
    }
}

/// Validates `raw` and builds the model.
pub(crate) fn build(
    raw: RawFile,
    text: &str,
    source: &Path,
    base_dir: PathBuf,
    env: &dyn Fn(&str) -> Var,
    reader: crate::Reader,
) -> Result<DomainConfig, ConfigError> {
    let ctx = Ctx {
        text,
        source,
        env,
        base_dir,
        unresolved: (reader == crate::Reader::Tool).then(|| RefCell::new(Vec::new())),
    };
    let Some(raw_domain) = raw.domain.as_ref() else {
        return Err(ConfigError::at(
            ErrorKind::MissingKey,
            source,
            Position { line: 1, column: 1 },
            None,
            Some("domain".to_string()),
            "the [domain] table is missing",
        ));
    };
    let domain = domain(&ctx, raw_domain)?;
    let limits = limits(&ctx, raw_domain.get_ref().limits.as_ref())?;
    let (nodes, node_names) = nodes(&ctx, &raw.node, &domain)?;
    if nodes.len() > 1 && domain.link_secret.is_none() {
        return Err(ctx.err(
            &Scope {
                item: None,
                prefix: "domain.",
            },
            "link_secret",
            raw_domain.span().start,
            ErrorKind::MissingKey,
            format!(
                "required key is missing (the {} nodes' daemons authenticate their links \
                 with it)",
                nodes.len()
            ),
        ));
    }
    if nodes.len() > 1 && limits.frame_bytes_max > crate::LINK_FRAME_BYTES_MAX {
        // Calls and replies between nodes travel in node-link packets: a frame that
        // fits locally but not in a packet would fail only when it is sent.
        let raw_limits = raw_domain.get_ref().limits.as_ref();
        let offset = raw_limits
            .and_then(|l| l.get_ref().frame_bytes_max.as_ref())
            .map_or(raw_domain.span().start, |v| v.span().start);
        return Err(ctx.err(
            &Scope {
                item: None,
                prefix: "domain.limits.",
            },
            "frame_bytes_max",
            offset,
            ErrorKind::InvalidValue,
            format!(
                "must be at most {} in a domain of {} nodes (calls between nodes travel \
                 in node-link packets of at most 16 MiB)",
                crate::LINK_FRAME_BYTES_MAX,
                nodes.len()
            ),
        ));
    }
    let (groups, group_names) = groups(&ctx, &raw.group, &nodes, &node_names)?;
    if groups.iter().any(|g| g.rm.xa().is_some()) {
        for node in &nodes {
            if domain.name.len() + node.name.len() > GTRID_NAMES_BYTES_MAX {
                let at = raw_domain
                    .get_ref()
                    .name
                    .as_ref()
                    .map_or(0, |n| n.span().start);
                return Err(ctx.err(
                    &Scope {
                        item: None,
                        prefix: "domain.",
                    },
                    "name",
                    at,
                    ErrorKind::InvalidValue,
                    format!(
                        "the domain name and the name of node {:?} are {} bytes together; \
                         with resource managers configured they must fit in \
                         {GTRID_NAMES_BYTES_MAX} (both start every 64-byte XA transaction id)",
                        node.name,
                        domain.name.len() + node.name.len()
                    ),
                ));
            }
        }
    }
    let implicit_group = raw.group.is_empty();
    let mut servers = Vec::with_capacity(raw.server.len());
    let mut server_names = Names::default();
    for (index, raw_server) in raw.server.iter().enumerate() {
        let server = server(&ctx, index, raw_server, &group_names, implicit_group)?;
        let name_span = raw_server
            .get_ref()
            .name
            .as_ref()
            .map_or(raw_server.span(), |n| n.span());
        if let Err(first) = server_names.insert(&server.name, index, ctx.line(name_span.start)) {
            return Err(duplicate(
                &ctx,
                "server",
                &server.name,
                name_span.start,
                first,
            ));
        }
        servers.push(server);
    }
    let mut services: Vec<Service> = Vec::with_capacity(raw.service.len());
    // A service may be offered once per node: by several servers only when they run
    // on different nodes (calls are routed to one of them, the caller's node first).
    let mut service_lines: HashMap<String, Vec<(usize, usize)>> = HashMap::new();
    for (index, raw_service) in raw.service.iter().enumerate() {
        let service = service(&ctx, index, raw_service, &server_names)?;
        let name_span = raw_service
            .get_ref()
            .name
            .as_ref()
            .map_or(raw_service.span(), |n| n.span());
        let node_of = |s: &Service| groups[servers[s.server].group].node;
        let node = node_of(&service);
        let seen = service_lines.entry(service.name.clone()).or_default();
        if let Some(&(first, first_line)) =
            seen.iter().find(|&&(i, _)| node_of(&services[i]) == node)
        {
            let message = if nodes.len() > 1 {
                format!(
                    "duplicate service name on node \"{}\" (first defined at line {first_line}, \
                     server \"{}\"); a service may be offered once per node",
                    nodes[node].name, servers[services[first].server].name
                )
            } else {
                format!("duplicate service name (first defined at line {first_line})")
            };
            let scope = Scope {
                item: Some(format!("service \"{}\"", service.name)),
                prefix: "",
            };
            return Err(ctx.err(
                &scope,
                "name",
                name_span.start,
                ErrorKind::DuplicateName,
                message,
            ));
        }
        seen.push((index, ctx.line(name_span.start)));
        services.push(service);
    }
    Ok(DomainConfig {
        source: source.to_path_buf(),
        base_dir: ctx.base_dir,
        domain,
        limits,
        nodes,
        groups,
        servers,
        services,
        selected_node: None,
        unresolved: ctx.unresolved.map(RefCell::into_inner).unwrap_or_default(),
    })
}

fn duplicate(
    ctx: &Ctx<'_>,
    section: &str,
    name: &str,
    offset: usize,
    first_line: usize,
) -> ConfigError {
    let scope = Scope {
        item: Some(format!("{section} \"{name}\"")),
        prefix: "",
    };
    ctx.err(
        &scope,
        "name",
        offset,
        ErrorKind::DuplicateName,
        format!("duplicate {section} name (first defined at line {first_line})"),
    )
}

fn domain(ctx: &Ctx<'_>, raw: &Spanned<RawDomain>) -> Result<Domain, ConfigError> {
    let span = raw.span();
    let raw = raw.get_ref();
    let scope = Scope {
        item: None,
        prefix: "domain.",
    };
    let name = ctx.name(
        &scope,
        "name",
        ctx.required(&scope, "name", raw.name.as_ref(), &span)?,
    )?;
    let listen = ctx.addr(
        &scope,
        "listen",
        ctx.required(&scope, "listen", raw.listen.as_ref(), &span)?,
    )?;
    let run_dir = match &raw.run_dir {
        Some(value) => ctx.path(&scope, "run_dir", value)?,
        None => ctx.base_dir.join("run"),
    };
    let password = match &raw.password {
        Some(value) => {
            let secret = ctx.non_empty(&scope, "password", value)?;
            if secret.len() > PASSWORD_BYTES_MAX {
                return Err(ctx.err(
                    &scope,
                    "password",
                    value.span().start,
                    ErrorKind::InvalidValue,
                    format!("must be at most {PASSWORD_BYTES_MAX} bytes long"),
                ));
            }
            Some(Password::new(secret))
        }
        None => None,
    };
    let link_secret = match &raw.link_secret {
        Some(value) => match ctx.daemon_only(&scope, "link_secret", value)? {
            // Read as a tool: no tool uses the secret.
            None => Some(Password::new(String::new())),
            Some(secret) => {
                let fail = |message: String| {
                    ctx.err(
                        &scope,
                        "link_secret",
                        value.span().start,
                        ErrorKind::InvalidValue,
                        message,
                    )
                };
                if secret.len() < LINK_SECRET_BYTES_MIN {
                    return Err(fail(format!(
                        "must be at least {LINK_SECRET_BYTES_MIN} bytes long (is {})",
                        secret.len()
                    )));
                }
                if secret.len() > LINK_SECRET_BYTES_MAX {
                    return Err(fail(format!(
                        "must be at most {LINK_SECRET_BYTES_MAX} bytes long (is {})",
                        secret.len()
                    )));
                }
                Some(Password::new(secret))
            }
        },
        None => None,
    };
    let mut field_tables = Vec::with_capacity(raw.field_tables.len());
    for (index, value) in raw.field_tables.iter().enumerate() {
        field_tables.push(ctx.path(&scope, &format!("field_tables[{index}]"), value)?);
    }
    let log_file = match &raw.log_file {
        Some(value) => Some(PathBuf::from(ctx.non_empty(&scope, "log_file", value)?)),
        None => None,
    };
    let tx = tx_settings(ctx, raw.tx.as_ref(), &run_dir)?;
    Ok(Domain {
        name,
        listen,
        run_dir,
        password,
        link_secret,
        field_tables,
        log_file,
        tx,
    })
}

fn tx_settings(
    ctx: &Ctx<'_>,
    raw: Option<&Spanned<RawTx>>,
    run_dir: &std::path::Path,
) -> Result<TxSettings, ConfigError> {
    let empty = RawTx::default();
    let raw = raw.map_or(&empty, |r| r.get_ref());
    let scope = Scope {
        item: None,
        prefix: "domain.tx.",
    };
    let log_dir = match &raw.log_dir {
        Some(value) => ctx.path(&scope, "log_dir", value)?,
        None => run_dir.join("txlog"),
    };
    let timeout_s = ctx.int(&scope, "timeout_s", raw.timeout_s.as_ref(), TX_TIMEOUT_S)?;
    let timeout_max_s = ctx.int(
        &scope,
        "timeout_max_s",
        raw.timeout_max_s.as_ref(),
        TX_TIMEOUT_MAX_S,
    )?;
    if timeout_s > timeout_max_s {
        let at = raw
            .timeout_s
            .as_ref()
            .or(raw.timeout_max_s.as_ref())
            .map_or(0, |v| v.span().start);
        return Err(ctx.err(
            &scope,
            "timeout_s",
            at,
            ErrorKind::InvalidValue,
            format!("must be at most timeout_max_s ({timeout_max_s})"),
        ));
    }
    let recovery_interval_ms = ctx.int(
        &scope,
        "recovery_interval_ms",
        raw.recovery_interval_ms.as_ref(),
        RECOVERY_INTERVAL_MS,
    )?;
    let entries_max = ctx.int(&scope, "entries_max", raw.entries_max.as_ref(), TX_ENTRIES)?;
    let log_commit_delay_us = ctx.int(
        &scope,
        "log_commit_delay_us",
        raw.log_commit_delay_us.as_ref(),
        LOG_COMMIT_DELAY_US,
    )?;
    let log_preallocate_kib = ctx.int(
        &scope,
        "log_preallocate_kib",
        raw.log_preallocate_kib.as_ref(),
        LOG_PREALLOCATE_KIB,
    )?;
    Ok(TxSettings {
        log_dir,
        timeout: Duration::from_secs(timeout_s),
        timeout_max: Duration::from_secs(timeout_max_s),
        one_phase_commit: raw.one_phase_commit.unwrap_or(true),
        recovery_interval: Duration::from_millis(recovery_interval_ms),
        entries_max: narrow(entries_max),
        log_commit_delay: Duration::from_micros(log_commit_delay_us),
        log_preallocate_bytes: log_preallocate_kib * 1024,
    })
}

fn limits(ctx: &Ctx<'_>, raw: Option<&Spanned<RawLimits>>) -> Result<Limits, ConfigError> {
    let empty = RawLimits::default();
    let raw = raw.map_or(&empty, |r| r.get_ref());
    let scope = Scope {
        item: None,
        prefix: "domain.limits.",
    };
    let clients_max = ctx.int(&scope, "clients_max", raw.clients_max.as_ref(), CLIENTS)?;
    let frame_bytes_max = ctx.int(
        &scope,
        "frame_bytes_max",
        raw.frame_bytes_max.as_ref(),
        FRAME_BYTES,
    )?;
    let unauthenticated = Bound {
        default: UNAUTHENTICATED_FRAME_BYTES.default.min(frame_bytes_max),
        ..UNAUTHENTICATED_FRAME_BYTES
    };
    let unauthenticated_frame_bytes_max = ctx.int(
        &scope,
        "unauthenticated_frame_bytes_max",
        raw.unauthenticated_frame_bytes_max.as_ref(),
        unauthenticated,
    )?;
    if let Some(value) = &raw.unauthenticated_frame_bytes_max {
        if unauthenticated_frame_bytes_max > frame_bytes_max {
            return Err(ctx.err(
                &scope,
                "unauthenticated_frame_bytes_max",
                value.span().start,
                ErrorKind::InvalidValue,
                format!("must be at most frame_bytes_max ({frame_bytes_max})"),
            ));
        }
    }
    let pending_calls_max = ctx.int(
        &scope,
        "pending_calls_max",
        raw.pending_calls_max.as_ref(),
        PENDING_CALLS,
    )?;
    let link_calls_max = ctx.int(
        &scope,
        "link_calls_max",
        raw.link_calls_max.as_ref(),
        LINK_CALLS,
    )?;
    let handshake_timeout_ms = ctx.int(
        &scope,
        "handshake_timeout_ms",
        raw.handshake_timeout_ms.as_ref(),
        HANDSHAKE_TIMEOUT_MS,
    )?;
    let blocking_timeout_s = ctx.int(
        &scope,
        "blocking_timeout_s",
        raw.blocking_timeout_s.as_ref(),
        BLOCKING_TIMEOUT_S,
    )?;
    let spin_us = ctx.int(&scope, "spin_us", raw.spin_us.as_ref(), SPIN_US)?;
    Ok(Limits {
        spin: Duration::from_micros(spin_us),
        clients_max: narrow(clients_max),
        frame_bytes_max: narrow(frame_bytes_max),
        unauthenticated_frame_bytes_max: narrow(unauthenticated_frame_bytes_max),
        pending_calls_max: narrow(pending_calls_max),
        link_calls_max: narrow(link_calls_max),
        handshake_timeout: Duration::from_millis(handshake_timeout_ms),
        blocking_timeout: Duration::from_secs(blocking_timeout_s),
    })
}

/// Narrows a range-checked value; every upper bound above fits in `u32`.
fn narrow(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn nodes(
    ctx: &Ctx<'_>,
    raw: &[Spanned<RawNode>],
    domain: &Domain,
) -> Result<(Vec<Node>, Names), ConfigError> {
    let mut names = Names::default();
    if raw.is_empty() {
        let node = Node {
            name: domain.name.clone(),
            host: domain.listen.ip().to_string(),
            listen: domain.listen,
            link: None,
        };
        // The implicit node cannot clash with anything.
        let _ = names.insert(&node.name, 0, 1);
        return Ok((vec![node], names));
    }
    let several = raw.len() > 1;
    let mut nodes = Vec::with_capacity(raw.len());
    for (index, entry) in raw.iter().enumerate() {
        let span = entry.span();
        let r = entry.get_ref();
        let mut scope = Scope {
            item: Some(label(
                "node",
                index,
                r.name.as_ref().map(|n| n.get_ref().as_str()),
            )),
            prefix: "",
        };
        let name_value = ctx.required(&scope, "name", r.name.as_ref(), &span)?;
        let name = ctx.name(&scope, "name", name_value)?;
        scope.item = Some(format!("node \"{name}\""));
        if let Err(first) = names.insert(&name, index, ctx.line(name_value.span().start)) {
            return Err(duplicate(
                ctx,
                "node",
                &name,
                name_value.span().start,
                first,
            ));
        }
        let listen = match &r.listen {
            Some(value) => ctx.addr(&scope, "listen", value)?,
            None => domain.listen,
        };
        let host = match &r.host {
            Some(value) => host(ctx, &scope, value)?,
            None => listen.ip().to_string(),
        };
        let link = match &r.link {
            Some(value) => {
                let link = ctx.addr(&scope, "link", value)?;
                if link == listen {
                    return Err(ctx.err(
                        &scope,
                        "link",
                        value.span().start,
                        ErrorKind::InvalidValue,
                        format!("must differ from listen ({listen})"),
                    ));
                }
                Some(link)
            }
            None if several => {
                return Err(ctx.err(
                    &scope,
                    "link",
                    span.start,
                    ErrorKind::MissingKey,
                    "required key is missing (every node of a multi-node domain needs a link \
                     address)",
                ));
            }
            None => None,
        };
        nodes.push(Node {
            name,
            host,
            listen,
            link,
        });
    }
    Ok((nodes, names))
}

fn host(ctx: &Ctx<'_>, scope: &Scope, value: &Str) -> Result<String, ConfigError> {
    let host = value.get_ref();
    let fail = |offset: usize, message: String| {
        ctx.err(scope, "host", offset, ErrorKind::InvalidValue, message)
    };
    if host.is_empty() {
        return Err(fail(value.span().start, "must not be empty".to_string()));
    }
    if let Some((at, c)) = host
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':')))
    {
        return Err(fail(
            ctx.offset_in(&value.span(), host, at),
            format!("contains {c:?}; expected a host name or an IP address"),
        ));
    }
    if host.len() > HOST_LEN_MAX {
        return Err(fail(
            value.span().start,
            format!("must be at most {HOST_LEN_MAX} characters long"),
        ));
    }
    Ok(host.clone())
}

fn groups(
    ctx: &Ctx<'_>,
    raw: &[Spanned<RawGroup>],
    nodes: &[Node],
    node_names: &Names,
) -> Result<(Vec<Group>, Names), ConfigError> {
    let mut names = Names::default();
    if raw.is_empty() {
        let _ = names.insert(DEFAULT_GROUP, 0, 1);
        let group = Group {
            name: DEFAULT_GROUP.to_string(),
            node: 0,
            rm: ResourceManager::None,
            auto_transaction: false,
            implicit: true,
        };
        return Ok((vec![group], names));
    }
    let mut groups = Vec::with_capacity(raw.len());
    for (index, entry) in raw.iter().enumerate() {
        let span = entry.span();
        let r = entry.get_ref();
        let mut scope = Scope {
            item: Some(label(
                "group",
                index,
                r.name.as_ref().map(|n| n.get_ref().as_str()),
            )),
            prefix: "",
        };
        let name_value = ctx.required(&scope, "name", r.name.as_ref(), &span)?;
        let name = ctx.name(&scope, "name", name_value)?;
        scope.item = Some(format!("group \"{name}\""));
        if let Err(first) = names.insert(&name, index, ctx.line(name_value.span().start)) {
            return Err(duplicate(
                ctx,
                "group",
                &name,
                name_value.span().start,
                first,
            ));
        }
        let node = match &r.node {
            Some(value) => node_names.index(value.get_ref()).ok_or_else(|| {
                ctx.err(
                    &scope,
                    "node",
                    value.span().start,
                    ErrorKind::UnknownReference,
                    format!("unknown node {:?}", value.get_ref()),
                )
            })?,
            None if nodes.len() == 1 => 0,
            None => {
                return Err(ctx.err(
                    &scope,
                    "node",
                    span.start,
                    ErrorKind::MissingKey,
                    "required key is missing (the domain has more than one node)",
                ));
            }
        };
        let rm = match &r.rm {
            None => ResourceManager::None,
            Some(spanned) => rm(ctx, &scope, spanned)?,
        };
        let auto_transaction = r.auto_transaction.unwrap_or(false);
        if auto_transaction && rm.xa().is_none() {
            return Err(ctx.err(
                &scope,
                "auto_transaction",
                span.start,
                ErrorKind::InvalidValue,
                "needs a resource manager (rm) in the group",
            ));
        }
        if let Some(x) = rm
            .xa()
            .filter(|x| x.kind == crate::model::RmKind::Embedded && !x.open.expose().is_empty())
        {
            let taken = groups.iter().find(|g: &&Group| {
                g.rm.xa().is_some_and(|o| {
                    o.kind == crate::model::RmKind::Embedded && o.open.expose() == x.open.expose()
                })
            });
            if let Some(other) = taken {
                return Err(ctx.err(
                    &scope,
                    "rm.open",
                    span.start,
                    ErrorKind::InvalidValue,
                    format!(
                        "the embedded site directory {:?} is already group {:?}'s; each site needs its own",
                        x.open.expose(),
                        other.name
                    ),
                ));
            }
        }
        groups.push(Group {
            name,
            node,
            rm,
            auto_transaction,
            implicit: false,
        });
    }
    Ok((groups, names))
}

fn rm(
    ctx: &Ctx<'_>,
    scope: &Scope,
    spanned: &Spanned<RawRm>,
) -> Result<ResourceManager, ConfigError> {
    let (kind_value, open, pool_max, key, interval, lock_timeout) = match spanned.get_ref() {
        RawRm::Kind(k) => (
            Spanned::new(spanned.span(), k.clone()),
            None,
            None,
            "rm",
            None,
            None,
        ),
        RawRm::Table(t) => {
            let Some(kind) = t.kind.clone() else {
                return Err(ctx.err(
                    scope,
                    "rm.kind",
                    spanned.span().start,
                    ErrorKind::MissingKey,
                    "required key is missing (\"postgres\", \"mariadb\", \"noop\", \
                     \"embedded\", \"fake\" or \"none\")",
                ));
            };
            (
                kind,
                t.open.clone(),
                t.pool_max.clone(),
                "rm.kind",
                t.checkpoint_interval_ms.clone(),
                t.lock_timeout_ms.clone(),
            )
        }
    };
    let kind = match kind_value.get_ref().as_str() {
        "none" => return Ok(ResourceManager::None),
        "postgres" => RmKind::Postgres,
        "mariadb" | "mysql" => RmKind::Mariadb,
        "noop" => RmKind::Noop,
        "fake" => RmKind::Fake,
        "embedded" => RmKind::Embedded,
        kind => {
            return Err(ctx.err(
                scope,
                key,
                kind_value.span().start,
                ErrorKind::InvalidValue,
                format!(
                    "unknown resource manager kind {kind:?} (expected \"none\", \"postgres\", \
                     \"mariadb\", \"noop\", \"fake\" or \"embedded\")"
                ),
            ));
        }
    };
    let mut unresolved = false;
    let open = match &open {
        Some(v) => {
            let out = ctx.daemon_only(scope, "rm.open", v)?.unwrap_or_else(|| {
                // Read as a tool, which never opens the resource manager (`tpmon rm
                // inspect` checks `DomainConfig::unresolved` before it reads a site).
                unresolved = true;
                String::new()
            });
            if out.trim().is_empty() && !unresolved {
                return Err(ctx.err(
                    scope,
                    "rm.open",
                    v.span().start,
                    ErrorKind::InvalidValue,
                    if v.get_ref().contains('$') {
                        "empty after expanding its variables (is one set to an empty value?)"
                    } else {
                        "must not be empty (leave the key out for an embedded site's default \
                         directory)"
                    },
                ));
            }
            out
        }
        None if kind == RmKind::Noop || kind == RmKind::Embedded => String::new(),
        None => {
            return Err(ctx.err(
                scope,
                "rm.open",
                spanned.span().start,
                ErrorKind::MissingKey,
                format!(
                    "a {} resource manager needs an open string ([group.rm] open = ...)",
                    kind.as_str()
                ),
            ))
        }
    };
    let open = if !unresolved
        && (kind == RmKind::Fake || (kind == RmKind::Embedded && !open.is_empty()))
    {
        ctx.base_dir.join(open).display().to_string()
    } else {
        open
    };
    let pool_max = ctx.int(scope, "rm.pool_max", pool_max.as_ref(), RM_POOL)?;
    let interval = ctx.int(
        scope,
        "rm.checkpoint_interval_ms",
        interval.as_ref(),
        RM_CHECKPOINT_INTERVAL,
    )?;
    let lock_timeout = ctx.int(
        scope,
        "rm.lock_timeout_ms",
        lock_timeout.as_ref(),
        RM_LOCK_TIMEOUT,
    )?;
    Ok(ResourceManager::Xa(XaResource {
        kind,
        open: Password::new(open),
        pool_max: narrow(pool_max),
        checkpoint_interval_ms: interval,
        lock_timeout_ms: lock_timeout,
    }))
}

fn server(
    ctx: &Ctx<'_>,
    index: usize,
    entry: &Spanned<RawServer>,
    group_names: &Names,
    implicit_group: bool,
) -> Result<Server, ConfigError> {
    let span = entry.span();
    let r = entry.get_ref();
    let mut scope = Scope {
        item: Some(label(
            "server",
            index,
            r.name.as_ref().map(|n| n.get_ref().as_str()),
        )),
        prefix: "",
    };
    let name = ctx.name(
        &scope,
        "name",
        ctx.required(&scope, "name", r.name.as_ref(), &span)?,
    )?;
    scope.item = Some(format!("server \"{name}\""));
    let group = match &r.group {
        Some(value) => group_names.index(value.get_ref()).ok_or_else(|| {
            let hint = if implicit_group {
                format!(" (the file has no [[group]]; leave the key out or name {DEFAULT_GROUP:?})")
            } else {
                String::new()
            };
            ctx.err(
                &scope,
                "group",
                value.span().start,
                ErrorKind::UnknownReference,
                format!("unknown group {:?}{hint}", value.get_ref()),
            )
        })?,
        None if implicit_group => 0,
        None => {
            return Err(ctx.err(
                &scope,
                "group",
                span.start,
                ErrorKind::MissingKey,
                "required key is missing (the file defines [[group]] entries)",
            ));
        }
    };
    let executable = ctx.non_empty(
        &scope,
        "executable",
        ctx.required(&scope, "executable", r.executable.as_ref(), &span)?,
    )?;
    let mut args = Vec::with_capacity(r.args.len());
    for (i, value) in r.args.iter().enumerate() {
        // Read as a tool, an unresolved argument is left empty (no tool starts servers).
        args.push(
            ctx.daemon_only(&scope, &format!("args[{i}]"), value)?
                .unwrap_or_default(),
        );
    }
    let mut env = BTreeMap::new();
    for (key, value) in &r.env {
        let var = key.get_ref();
        let path = format!("env.{var}");
        if var.is_empty() || var.contains(['=', '\0']) {
            return Err(ctx.err(
                &scope,
                &path,
                key.span().start,
                ErrorKind::InvalidValue,
                "environment variable names must be non-empty and contain neither `=` nor NUL",
            ));
        }
        env.insert(
            var.clone(),
            ctx.daemon_only(&scope, &path, value)?.unwrap_or_default(),
        );
    }

    let min_instances = ctx.int(&scope, "min_instances", r.min_instances.as_ref(), INSTANCES)?;
    let max_bound = Bound {
        default: min_instances,
        ..INSTANCES
    };
    let max_instances = ctx.int(&scope, "max_instances", r.max_instances.as_ref(), max_bound)?;
    if min_instances > max_instances {
        // Only possible when max_instances is given; blame min_instances if it is given too.
        let (key, offset, message) = match (&r.min_instances, &r.max_instances) {
            (Some(min), _) => (
                "min_instances",
                min.span().start,
                format!("must be at most max_instances ({max_instances})"),
            ),
            (None, Some(max)) => (
                "max_instances",
                max.span().start,
                format!("must be at least min_instances ({min_instances})"),
            ),
            (None, None) => ("max_instances", span.start, "inconsistent".to_string()),
        };
        return Err(ctx.err(&scope, key, offset, ErrorKind::InvalidValue, message));
    }

    let restart = match &r.restart {
        None => RestartPolicy::default(),
        Some(value) => match value.get_ref().as_str() {
            "always" => RestartPolicy::Always,
            "on-failure" => RestartPolicy::OnFailure,
            "never" => RestartPolicy::Never,
            other => {
                return Err(ctx.err(
                    &scope,
                    "restart",
                    value.span().start,
                    ErrorKind::InvalidValue,
                    format!(
                        "unknown restart policy {other:?} (expected \"always\", \"on-failure\" \
                         or \"never\")"
                    ),
                ));
            }
        },
    };
    let restart_max = ctx.int(&scope, "restart_max", r.restart_max.as_ref(), RESTART_MAX)?;
    let restart_window_s = ctx.int(
        &scope,
        "restart_window_s",
        r.restart_window_s.as_ref(),
        RESTART_WINDOW_S,
    )?;
    let restart_backoff_ms = ctx.int(
        &scope,
        "restart_backoff_ms",
        r.restart_backoff_ms.as_ref(),
        RESTART_BACKOFF_MS,
    )?;
    let backoff_max_bound = Bound {
        default: RESTART_BACKOFF_MAX_MS.default.max(restart_backoff_ms),
        ..RESTART_BACKOFF_MAX_MS
    };
    let restart_backoff_max_ms = ctx.int(
        &scope,
        "restart_backoff_max_ms",
        r.restart_backoff_max_ms.as_ref(),
        backoff_max_bound,
    )?;
    if restart_backoff_ms > restart_backoff_max_ms {
        let offset = r
            .restart_backoff_ms
            .as_ref()
            .map_or(span.start, |v| v.span().start);
        return Err(ctx.err(
            &scope,
            "restart_backoff_ms",
            offset,
            ErrorKind::InvalidValue,
            format!("must be at most restart_backoff_max_ms ({restart_backoff_max_ms})"),
        ));
    }
    let queue_max = ctx.int(&scope, "queue_max", r.queue_max.as_ref(), QUEUE)?;
    let shutdown_timeout_s = ctx.int(
        &scope,
        "shutdown_timeout_s",
        r.shutdown_timeout_s.as_ref(),
        SHUTDOWN_TIMEOUT_S,
    )?;
    let start_timeout_s = ctx.int(
        &scope,
        "start_timeout_s",
        r.start_timeout_s.as_ref(),
        START_TIMEOUT_S,
    )?;
    Ok(Server {
        name,
        group,
        executable,
        args,
        env,
        min_instances: narrow(min_instances),
        max_instances: narrow(max_instances),
        restart,
        restart_max: narrow(restart_max),
        restart_window: Duration::from_secs(restart_window_s),
        restart_backoff: Duration::from_millis(restart_backoff_ms),
        restart_backoff_max: Duration::from_millis(restart_backoff_max_ms),
        queue_max: narrow(queue_max),
        shutdown_timeout: Duration::from_secs(shutdown_timeout_s),
        start_timeout: Duration::from_secs(start_timeout_s),
    })
}

fn service(
    ctx: &Ctx<'_>,
    index: usize,
    entry: &Spanned<RawService>,
    server_names: &Names,
) -> Result<Service, ConfigError> {
    let span = entry.span();
    let r = entry.get_ref();
    let mut scope = Scope {
        item: Some(label(
            "service",
            index,
            r.name.as_ref().map(|n| n.get_ref().as_str()),
        )),
        prefix: "",
    };
    let name = ctx.name(
        &scope,
        "name",
        ctx.required(&scope, "name", r.name.as_ref(), &span)?,
    )?;
    scope.item = Some(format!("service \"{name}\""));
    let server_value = ctx.required(&scope, "server", r.server.as_ref(), &span)?;
    let server = server_names.index(server_value.get_ref()).ok_or_else(|| {
        ctx.err(
            &scope,
            "server",
            server_value.span().start,
            ErrorKind::UnknownReference,
            format!("unknown server {:?}", server_value.get_ref()),
        )
    })?;
    let timeout_s = ctx.int(&scope, "timeout_s", r.timeout_s.as_ref(), SERVICE_TIMEOUT_S)?;
    let buffer_types = match &r.buffer_types {
        None => BUFFER_TYPES.iter().map(|t| t.to_string()).collect(),
        Some(list) => buffer_types(ctx, &scope, list)?,
    };
    Ok(Service {
        name,
        server,
        timeout: (timeout_s > 0).then(|| Duration::from_secs(timeout_s)),
        conversational: r.conversational.unwrap_or(false),
        buffer_types,
    })
}

fn buffer_types(
    ctx: &Ctx<'_>,
    scope: &Scope,
    list: &Spanned<Vec<Str>>,
) -> Result<Vec<String>, ConfigError> {
    if list.get_ref().is_empty() {
        return Err(ctx.err(
            scope,
            "buffer_types",
            list.span().start,
            ErrorKind::InvalidValue,
            "must not be empty (leave the key out to accept every buffer type)",
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(list.get_ref().len());
    for (i, value) in list.get_ref().iter().enumerate() {
        let key = format!("buffer_types[{i}]");
        let upper = value.get_ref().to_ascii_uppercase();
        if !BUFFER_TYPES.contains(&upper.as_str()) {
            return Err(ctx.err(
                scope,
                &key,
                value.span().start,
                ErrorKind::InvalidValue,
                format!(
                    "unknown buffer type {:?} (expected one of {})",
                    value.get_ref(),
                    BUFFER_TYPES.join(", ")
                ),
            ));
        }
        if out.contains(&upper) {
            return Err(ctx.err(
                scope,
                &key,
                value.span().start,
                ErrorKind::InvalidValue,
                format!("buffer type {upper} is listed twice"),
            ));
        }
        out.push(upper);
    }
    Ok(out)
}
