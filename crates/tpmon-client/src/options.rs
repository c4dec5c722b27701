//! How a client finds and authenticates with its domain.

use std::time::Duration;

use tpmon_proto::UnsolMode;

/// Start information (XATMI `TPINIT`) and where the domain is.
#[derive(Clone, Default)]
pub struct ClientOptions {
    /// Primary daemon address, `host:port`.
    pub addr: Option<String>,
    /// Backup daemon address tried when the primary cannot be reached.
    pub backup_addr: Option<String>,
    /// Time allowed for connecting and authenticating.
    pub connect_timeout: Option<Duration>,
    /// Client name (`cltname`).
    pub client_name: String,
    /// User name (`usrname`).
    pub user_name: String,
    /// User password.
    pub password: String,
    /// Domain password.
    pub domain_password: String,
    /// Unsolicited-message mode.
    pub unsol: UnsolMode,
    /// Never use the local fast path; relay every call through the daemon.
    pub force_relay: bool,
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("addr", &self.addr)
            .field("backup_addr", &self.backup_addr)
            .field("connect_timeout", &self.connect_timeout)
            .field("client_name", &self.client_name)
            .field("user_name", &self.user_name)
            .field("force_relay", &self.force_relay)
            .finish_non_exhaustive()
    }
}

/// Default time to connect and authenticate.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);

impl ClientOptions {
    /// Options for the daemon at `addr`.
    pub fn new(addr: impl Into<String>) -> ClientOptions {
        ClientOptions {
            addr: Some(addr.into()),
            ..ClientOptions::default()
        }
    }

    /// Reads the environment, as Tmax and Tuxedo clients do:
    /// `TPMON_HOST_ADDR` + `TPMON_HOST_PORT` (the daemon), `TPMON_BACKUP_ADDR` +
    /// `TPMON_BACKUP_PORT` (the backup), `TPMON_CONNECT_TIMEOUT` (seconds),
    /// `TPMON_DOMAIN_PASSWORD`, `TPMON_CLIENT_NAME`, `TPMON_USER_NAME`,
    /// `TPMON_USER_PASSWORD`. Unset values stay empty.
    pub fn from_env() -> ClientOptions {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let join = |a: Option<String>, p: Option<String>| match (a, p) {
            (Some(a), Some(p)) => Some(format!("{a}:{p}")),
            (Some(a), None) => Some(a),
            (None, Some(p)) => Some(format!("127.0.0.1:{p}")),
            (None, None) => None,
        };
        ClientOptions {
            addr: join(var("TPMON_HOST_ADDR"), var("TPMON_HOST_PORT")),
            backup_addr: join(var("TPMON_BACKUP_ADDR"), var("TPMON_BACKUP_PORT")),
            connect_timeout: var("TPMON_CONNECT_TIMEOUT")
                .and_then(|s| s.parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s > 0.0)
                .map(Duration::from_secs_f64),
            client_name: var("TPMON_CLIENT_NAME").unwrap_or_default(),
            user_name: var("TPMON_USER_NAME").unwrap_or_default(),
            password: var("TPMON_USER_PASSWORD").unwrap_or_default(),
            domain_password: var("TPMON_DOMAIN_PASSWORD").unwrap_or_default(),
            unsol: UnsolMode::Ignore,
            force_relay: false,
        }
    }
}
