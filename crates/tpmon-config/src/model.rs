//! The typed, validated domain configuration.
//!
//! Owns [`DomainConfig`] and the types it is made of. A value of these types has passed
//! validation: every default is filled in, every name is valid and unique in its section,
//! every reference is an index that is in range, every path that the file gives relative
//! to its directory is absolute, and every `${VAR}` is expanded (read as a tool, those
//! only the daemon uses may instead be left empty and listed in
//! [`DomainConfig::unresolved`], which the daemon refuses to run on). Code that receives a
//! `DomainConfig` can therefore index `servers[service.server]` without checking. The
//! only ways to change a loaded configuration are the override setters and
//! [`DomainConfig::select_node`], which keep these invariants. Nothing here reads the
//! file system except [`DomainConfig::resolve_executable`], which looks for the server
//! program.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{ConfigError, ErrorKind};

/// Longest name of a domain, node, group, server or service, in bytes.
///
/// XATMI's `XATMI_SERVICE_NAME_LENGTH` is 32 including the terminating NUL; tpmon uses
/// the same bound for every kind of name. Names consist of `[A-Za-z0-9_.-]`.
pub const NAME_LEN_MAX: usize = 31;

/// The request buffer types a service may restrict itself to, in their canonical
/// (uppercase) spelling.
pub const BUFFER_TYPES: [&str; 5] = ["STRING", "CARRAY", "X_OCTET", "FIELD", "RECORD"];

/// Name of the server group that is created when the file has no `[[group]]`.
pub const DEFAULT_GROUP: &str = "DEFAULT";

/// A complete, validated domain configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainConfig {
    /// The configuration file as the caller named it (used in messages).
    pub source: PathBuf,
    /// The absolute directory of the configuration file; relative paths in the file are
    /// resolved against it.
    pub base_dir: PathBuf,
    /// The `[domain]` table.
    pub domain: Domain,
    /// The `[domain.limits]` table, defaults filled in.
    pub limits: Limits,
    /// The nodes; never empty (a file without `[[node]]` gets one node named after the
    /// domain, listening on the domain's address).
    pub nodes: Vec<Node>,
    /// The server groups; never empty (a file without `[[group]]` gets one group named
    /// [`DEFAULT_GROUP`] on the first node).
    pub groups: Vec<Group>,
    /// The servers, in file order.
    pub servers: Vec<Server>,
    /// The services, in file order.
    pub services: Vec<Service>,
    /// The node whose daemon this configuration was narrowed to by
    /// [`DomainConfig::select_node`] (an index into `nodes`), if any.
    pub selected_node: Option<usize>,
    /// Values only the daemon uses that were left empty because a `${VAR}` in them is
    /// not set; only ever non-empty when a tool read the file
    /// ([`Reader::Tool`](crate::Reader::Tool)).
    pub unresolved: Vec<Unresolved>,
}

/// A value a tool read without expanding it, because a variable in it is not set
/// ([`Reader::Tool`](crate::Reader::Tool)): the daemon would refuse the file with
/// `message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unresolved {
    /// The item holding the value (`group "db1"`, `server "bank1"`), if any.
    pub item: Option<String>,
    /// The key (`rm.open`, `domain.link_secret`, `args[0]`, `env.NAME`).
    pub key: String,
    /// The error the daemon would report, with file, line and column.
    pub message: String,
}

/// Longest domain name plus node name: every global transaction id starts with both
/// and must fit the 64 bytes XA allows (the rest holds four numbers).
pub const GTRID_NAMES_BYTES_MAX: usize = 24;

/// The `[domain]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Domain {
    /// The domain's name.
    pub name: String,
    /// The address the daemon accepts client connections on.
    pub listen: SocketAddr,
    /// Absolute directory for the daemon's sockets, pid file, status table and logs.
    pub run_dir: PathBuf,
    /// The domain password clients must present (system access control), if any.
    pub password: Option<Password>,
    /// The secret the nodes' daemons authenticate one another's links with (16 to
    /// 1024 bytes); present whenever the domain has more than one node.
    pub link_secret: Option<Password>,
    /// Absolute paths of the field table files.
    pub field_tables: Vec<PathBuf>,
    /// The daemon's log file as written (after `${VAR}` expansion); relative to
    /// [`Domain::run_dir`] unless absolute. `None`: the daemon logs to stderr. Use
    /// [`Domain::log_path`] for the resolved path.
    pub log_file: Option<PathBuf>,
    /// Transaction manager settings (`[domain.tx]`).
    pub tx: TxSettings,
}

/// The transaction manager's settings (`[domain.tx]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxSettings {
    /// Absolute directory of the global transaction log (default `RUN_DIR/txlog`).
    pub log_dir: PathBuf,
    /// Transaction timeout when the originator sets none.
    pub timeout: Duration,
    /// Longest transaction timeout an originator may ask for.
    pub timeout_max: Duration,
    /// Commit a transaction with one prepared branch without a log record.
    pub one_phase_commit: bool,
    /// How often recovery looks for unfinished and in-doubt transactions.
    pub recovery_interval: Duration,
    /// Most transactions the log holds at once.
    pub entries_max: u32,
    /// Longest wait of a log flush for decisions of transactions committing side by
    /// side (`log_commit_delay_us`; 0 turns it off).
    pub log_commit_delay: Duration,
    /// Bytes of zeros the log lays down ahead of its records, so that a flush
    /// overwrites space the file already has (`log_preallocate_kib`; 0 turns it off).
    pub log_preallocate_bytes: u64,
}

impl Domain {
    /// The absolute path of the log file, or `None` if the daemon logs to stderr.
    pub fn log_path(&self) -> Option<PathBuf> {
        self.log_file.as_ref().map(|file| self.run_dir.join(file))
    }
}

/// A secret string whose `Debug` output does not reveal it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Password {
        Password(secret.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Limits of the domain daemon (`[domain.limits]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most concurrent client connections.
    pub clients_max: u32,
    /// Largest message accepted on any socket, in bytes.
    pub frame_bytes_max: u32,
    /// Largest message accepted from a connection that has not authenticated yet.
    pub unauthenticated_frame_bytes_max: u32,
    /// Most outstanding asynchronous calls per client (also per caller for the calls a
    /// daemon routes to other nodes).
    pub pending_calls_max: u32,
    /// Most calls in flight over each node link, in each direction (multi-node
    /// domains): calls this node sent to that node and awaits, and calls that node
    /// sent here and this node is serving.
    pub link_calls_max: u32,
    /// Time a new connection has to authenticate.
    pub handshake_timeout: Duration,
    /// Default blocking timeout of client calls.
    pub blocking_timeout: Duration,
    /// How long local callers and server instances poll for a reply or the next
    /// request before they sleep (adaptive; zero disables).
    pub spin: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            clients_max: 1024,
            frame_bytes_max: 4 * 1024 * 1024,
            unauthenticated_frame_bytes_max: 4096,
            pending_calls_max: 128,
            link_calls_max: 4096,
            handshake_timeout: Duration::from_millis(5000),
            blocking_timeout: Duration::from_secs(60),
            spin: Duration::from_micros(20),
        }
    }
}

/// A machine of the domain (`[[node]]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The node's name.
    pub name: String,
    /// Host name or address of the machine (default: the IP of `listen`).
    pub host: String,
    /// The address this node accepts client connections on.
    pub listen: SocketAddr,
    /// The node-link address for multi-node domains, if any.
    pub link: Option<SocketAddr>,
}

/// How the monitor talks to a group's resource manager.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResourceManager {
    /// No resource manager: the group's servers run in non-XA mode.
    None,
    /// An XA resource manager.
    Xa(XaResource),
}

impl ResourceManager {
    /// The XA resource, if the group has one.
    pub fn xa(&self) -> Option<&XaResource> {
        match self {
            ResourceManager::None => None,
            ResourceManager::Xa(x) => Some(x),
        }
    }

    /// The XA resource, mutably (the daemon points an embedded site's open string at
    /// its socket).
    pub fn xa_mut(&mut self) -> Option<&mut XaResource> {
        match self {
            ResourceManager::None => None,
            ResourceManager::Xa(x) => Some(x),
        }
    }
}

/// Kinds of XA resource managers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RmKind {
    /// PostgreSQL (PREPARE TRANSACTION / COMMIT PREPARED).
    Postgres,
    /// MariaDB or MySQL (XA START / END / PREPARE / COMMIT).
    Mariadb,
    /// Does nothing and votes yes: measures the transaction manager alone.
    Noop,
    /// A scripted resource manager kept in a directory, for fault injection in tests.
    Fake,
    /// tpmon's embedded memory-resident store (spec 03), hosted by the node daemon.
    Embedded,
}

impl RmKind {
    /// The spelling used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            RmKind::Postgres => "postgres",
            RmKind::Mariadb => "mariadb",
            RmKind::Noop => "noop",
            RmKind::Fake => "fake",
            RmKind::Embedded => "embedded",
        }
    }
}

/// A group's XA resource manager (`[group.rm]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XaResource {
    /// Which kind.
    pub kind: RmKind,
    /// The open string (a connection string or URL, or the fake's directory), after
    /// `${VAR}` expansion. It may hold a password, so `Debug` hides it.
    pub open: Password,
    /// Most connections the transaction manager keeps to it (phase 2, recovery).
    pub pool_max: u32,
    /// Embedded only: how often the site takes a checkpoint (delta), in ms.
    pub checkpoint_interval_ms: u64,
    /// Embedded only: longest a lock request waits, in ms.
    pub lock_timeout_ms: u64,
}

impl XaResource {
    /// A resource of `kind` with this open string and the default settings.
    pub fn new(kind: RmKind, open: impl Into<String>) -> XaResource {
        XaResource {
            kind,
            open: Password::new(open.into()),
            pool_max: 4,
            checkpoint_interval_ms: DEFAULT_CHECKPOINT_INTERVAL_MS,
            lock_timeout_ms: DEFAULT_LOCK_TIMEOUT_MS,
        }
    }
}

/// Default delta of an embedded site: a checkpoint every 10 s.
pub const DEFAULT_CHECKPOINT_INTERVAL_MS: u64 = 10_000;
/// Default lock-wait timeout of an embedded site.
pub const DEFAULT_LOCK_TIMEOUT_MS: u64 = 5_000;

/// A server group (`[[group]]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// The group's name.
    pub name: String,
    /// Index into [`DomainConfig::nodes`] of the node the group runs on.
    pub node: usize,
    /// The group's resource manager.
    pub rm: ResourceManager,
    /// Implicit demarcation: a call that arrives outside a transaction runs as its own
    /// global transaction, begun and committed by the server.
    pub auto_transaction: bool,
    /// `true` for the [`DEFAULT_GROUP`] that tpmon created because the file has no
    /// `[[group]]`.
    pub implicit: bool,
}

/// What the monitor does when a server process exits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RestartPolicy {
    /// Restart after every exit, including a clean one.
    Always,
    /// Restart after a crash or a non-zero exit status; a clean exit is final.
    #[default]
    OnFailure,
    /// Never restart.
    Never,
}

impl RestartPolicy {
    /// The spelling used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "never",
        }
    }
}

/// A server program (`[[server]]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    /// The server's name.
    pub name: String,
    /// Index into [`DomainConfig::groups`].
    pub group: usize,
    /// The program as written (after `${VAR}` expansion); see
    /// [`DomainConfig::resolve_executable`].
    pub executable: String,
    /// Command-line arguments (after `${VAR}` expansion).
    pub args: Vec<String>,
    /// Extra environment variables of the server processes (after `${VAR}` expansion).
    pub env: BTreeMap<String, String>,
    /// Instances started at boot and kept running.
    pub min_instances: u32,
    /// Most instances running at once (at least `min_instances`).
    pub max_instances: u32,
    /// What to do when an instance exits.
    pub restart: RestartPolicy,
    /// Restarts allowed within `restart_window` before the server is marked failed.
    pub restart_max: u32,
    /// The window in which `restart_max` counts restarts.
    pub restart_window: Duration,
    /// Delay before the first restart; doubles on each further restart.
    pub restart_backoff: Duration,
    /// Upper bound of the restart delay (at least `restart_backoff`).
    pub restart_backoff_max: Duration,
    /// Most requests waiting for an idle instance.
    pub queue_max: u32,
    /// Time `tpsvrdone` gets at shutdown before the process is killed.
    pub shutdown_timeout: Duration,
    /// Time `tpsvrinit` gets to finish at start.
    pub start_timeout: Duration,
}

/// A service (`[[service]]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// The service's name (at most [`NAME_LEN_MAX`] bytes).
    pub name: String,
    /// Index into [`DomainConfig::servers`] of the server that offers it.
    pub server: usize,
    /// Service time limit: an instance running one request longer is killed and the
    /// caller gets `TPESVCERR`. `None`: no limit.
    pub timeout: Option<Duration>,
    /// Whether the service is conversational.
    pub conversational: bool,
    /// Request buffer types the service accepts, uppercase, each one of
    /// [`BUFFER_TYPES`]; all of them unless the file restricts the list.
    pub buffer_types: Vec<String>,
}

impl Service {
    /// Whether the service accepts requests in buffers of type `buffer_type`
    /// (compared without regard to case).
    pub fn accepts(&self, buffer_type: &str) -> bool {
        self.buffer_types
            .iter()
            .any(|t| t.eq_ignore_ascii_case(buffer_type))
    }
}

impl DomainConfig {
    /// The unresolved value of `key` in `item` (see [`Unresolved`]), if it is one.
    pub fn unresolved_value(&self, item: &str, key: &str) -> Option<&Unresolved> {
        self.unresolved
            .iter()
            .find(|u| u.item.as_deref() == Some(item) && u.key == key)
    }

    /// The index of the node named `name`.
    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The node named `name`.
    pub fn node_by_name(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The index of the group named `name`.
    pub fn group_index(&self, name: &str) -> Option<usize> {
        self.groups.iter().position(|g| g.name == name)
    }

    /// The group named `name`.
    pub fn group_by_name(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// The index of the server named `name`.
    pub fn server_index(&self, name: &str) -> Option<usize> {
        self.servers.iter().position(|s| s.name == name)
    }

    /// The server named `name`.
    pub fn server_by_name(&self, name: &str) -> Option<&Server> {
        self.servers.iter().find(|s| s.name == name)
    }

    /// The index of the first service named `name` (in a multi-node domain a service
    /// may be offered once per node, so there may be more).
    pub fn service_index(&self, name: &str) -> Option<usize> {
        self.services.iter().position(|s| s.name == name)
    }

    /// The first service named `name` (see [`DomainConfig::service_index`]).
    pub fn service_by_name(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The services offered by the server with index `server`, in file order (empty for
    /// an index out of range).
    pub fn services_of(&self, server: usize) -> impl Iterator<Item = &Service> + '_ {
        self.services.iter().filter(move |s| s.server == server)
    }

    /// The servers of the group with index `group`, in file order (empty for an index out
    /// of range).
    pub fn servers_of(&self, group: usize) -> impl Iterator<Item = &Server> + '_ {
        self.servers.iter().filter(move |s| s.group == group)
    }

    /// Where to find the program of `server`.
    ///
    /// An absolute `executable` is returned as it is; one containing a `/` is taken
    /// relative to [`DomainConfig::base_dir`]; a bare name is looked for in `search_dir`
    /// first, then in each directory of `PATH` (empty entries are skipped), and the first
    /// regular, executable file wins. If none is found the bare name is returned, so that
    /// the caller's spawn fails with a clear "not found".
    pub fn resolve_executable(&self, server: &Server, search_dir: Option<&Path>) -> PathBuf {
        let program = Path::new(&server.executable);
        if program.is_absolute() {
            return program.to_path_buf();
        }
        if server.executable.contains('/') {
            return self.base_dir.join(program);
        }
        if let Some(candidate) = search_dir
            .map(|dir| dir.join(program))
            .filter(|c| is_executable_file(c))
        {
            return candidate;
        }
        if let Some(path) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&path) {
                if dir.as_os_str().is_empty() {
                    continue;
                }
                let candidate = dir.join(program);
                if is_executable_file(&candidate) {
                    return candidate;
                }
            }
        }
        program.to_path_buf()
    }

    /// Replaces the domain's client listen address.
    ///
    /// Every node whose listen address was the domain's (in particular the implicit node
    /// of a single-node domain) moves along. Port 0 is accepted here, unlike in the file,
    /// so that tests can let the operating system pick a free port.
    pub fn set_listen(&mut self, listen: SocketAddr) {
        let old = self.domain.listen;
        for node in &mut self.nodes {
            if node.listen == old {
                node.listen = listen;
            }
        }
        self.domain.listen = listen;
    }

    /// Replaces the run directory. A relative `run_dir` is taken relative to the current
    /// directory (as a command-line option would be), not to the configuration file. The
    /// transaction log moves with it unless `[domain.tx] log_dir` places it elsewhere.
    pub fn set_run_dir(&mut self, run_dir: impl Into<PathBuf>) -> Result<(), ConfigError> {
        let run_dir = run_dir.into();
        let absolute = std::path::absolute(&run_dir).map_err(|e| {
            ConfigError::whole_file(
                ErrorKind::InvalidValue,
                &self.source,
                Some("domain.run_dir".to_string()),
                format!("cannot use override {:?}", run_dir.display().to_string()),
                Some(e),
            )
        })?;
        // A node selected already keeps its own directory inside the new one.
        let absolute = match self.selected_node_name() {
            Some(node) => absolute.join(node),
            None => absolute,
        };
        // The transaction log follows the run directory unless placed explicitly.
        if self.domain.tx.log_dir == self.domain.run_dir.join("txlog") {
            self.domain.tx.log_dir = absolute.join("txlog");
        }
        self.domain.run_dir = absolute;
        Ok(())
    }

    /// The name of the node selected by [`DomainConfig::select_node`] when the domain
    /// has more than one node (in a single-node domain selecting changes nothing).
    fn selected_node_name(&self) -> Option<String> {
        let index = self.selected_node?;
        if self.nodes.len() < 2 {
            return None;
        }
        self.nodes.get(index).map(|n| n.name.clone())
    }

    /// Narrows the configuration to the daemon of node `name` (`None`: the node
    /// selected already, else the first node) and returns the node's index.
    ///
    /// In a multi-node domain each node's daemon keeps files of its own, so that the
    /// daemons of several nodes can share a machine and one configuration file: its
    /// run directory becomes `run_dir/<node name>`; its transaction log follows it
    /// (`txlog/` in the node's run directory) or, when `[domain.tx] log_dir` is set,
    /// becomes `log_dir/<node name>`; and the domain's client address becomes the
    /// node's `listen`. A single-node domain is left as it is.
    ///
    /// Selecting the node that is selected already changes nothing. A name that no node
    /// has, or another node than the one selected, is an error. Apply the command
    /// line's overrides ([`DomainConfig::with_overrides`]) after this: `set_run_dir`
    /// then keeps the node's subdirectory and `set_listen` moves the node's address.
    pub fn select_node(&mut self, name: Option<&str>) -> Result<usize, ConfigError> {
        let names = || {
            self.nodes
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let index = match name {
            None => self.selected_node.unwrap_or(0),
            Some(n) => self.node_index(n).ok_or_else(|| {
                ConfigError::whole_file(
                    ErrorKind::UnknownReference,
                    &self.source,
                    None,
                    format!(
                        "node {n:?} is not in the configuration (nodes: {})",
                        names()
                    ),
                    None,
                )
            })?,
        };
        match self.selected_node {
            Some(done) if done == index => return Ok(index),
            Some(done) => {
                return Err(ConfigError::whole_file(
                    ErrorKind::InvalidValue,
                    &self.source,
                    None,
                    format!(
                        "the configuration is node {:?}'s already; it cannot become node \
                         {:?}'s",
                        self.nodes.get(done).map_or("?", |n| n.name.as_str()),
                        self.nodes.get(index).map_or("?", |n| n.name.as_str()),
                    ),
                    None,
                ))
            }
            None => {}
        }
        let Some(node) = self.nodes.get(index).cloned() else {
            return Err(ConfigError::whole_file(
                ErrorKind::UnknownReference,
                &self.source,
                None,
                "the configuration has no node",
                None,
            ));
        };
        self.selected_node = Some(index);
        if self.nodes.len() > 1 {
            let run_dir = self.domain.run_dir.join(&node.name);
            self.domain.tx.log_dir = if self.domain.tx.log_dir == self.domain.run_dir.join("txlog")
            {
                run_dir.join("txlog")
            } else {
                self.domain.tx.log_dir.join(&node.name)
            };
            self.domain.run_dir = run_dir;
            self.domain.listen = node.listen;
        }
        Ok(index)
    }

    /// Applies the overrides a command line may give: `listen` as [`set_listen`], and
    /// `run_dir` as [`set_run_dir`].
    ///
    /// [`set_listen`]: DomainConfig::set_listen
    /// [`set_run_dir`]: DomainConfig::set_run_dir
    pub fn with_overrides(
        mut self,
        listen: Option<SocketAddr>,
        run_dir: Option<PathBuf>,
    ) -> Result<DomainConfig, ConfigError> {
        if let Some(listen) = listen {
            self.set_listen(listen);
        }
        if let Some(run_dir) = run_dir {
            self.set_run_dir(run_dir)?;
        }
        Ok(self)
    }
}

/// Whether `path` is a regular file the current user may execute (any execute bit).
fn is_executable_file(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    if !meta.is_file() {
        return false;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        true
    }
}
