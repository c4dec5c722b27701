//! The file as written: serde structures that mirror the TOML schema one to one.
//!
//! Owns the shape of the file and nothing else: which sections and keys exist and their
//! TOML types. Every struct denies unknown keys, every value the validator may complain
//! about keeps its byte span ([`Spanned`]) so that errors can name a line and column, and
//! every key is optional here; defaults, required keys, ranges and references are the
//! business of `validate`. Integers are read as `i64` (TOML's integer type) so that
//! negative and oversized values reach the validator and get a precise message instead
//! of a generic type error.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_spanned::Spanned;

/// A spanned string value.
pub(crate) type Str = Spanned<String>;
/// A spanned integer value.
pub(crate) type Int = Spanned<i64>;

/// The whole document.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawFile {
    pub domain: Option<Spanned<RawDomain>>,
    #[serde(default)]
    pub node: Vec<Spanned<RawNode>>,
    #[serde(default)]
    pub group: Vec<Spanned<RawGroup>>,
    #[serde(default)]
    pub server: Vec<Spanned<RawServer>>,
    #[serde(default)]
    pub service: Vec<Spanned<RawService>>,
}

/// `[domain]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawDomain {
    pub name: Option<Str>,
    pub listen: Option<Str>,
    pub run_dir: Option<Str>,
    pub password: Option<Str>,
    pub link_secret: Option<Str>,
    #[serde(default)]
    pub field_tables: Vec<Str>,
    pub log_file: Option<Str>,
    pub limits: Option<Spanned<RawLimits>>,
    pub tx: Option<Spanned<RawTx>>,
}

/// `[domain.tx]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawTx {
    pub log_dir: Option<Str>,
    pub timeout_s: Option<Int>,
    pub timeout_max_s: Option<Int>,
    pub one_phase_commit: Option<bool>,
    pub recovery_interval_ms: Option<Int>,
    pub entries_max: Option<Int>,
    pub log_commit_delay_us: Option<Int>,
    pub log_preallocate_kib: Option<Int>,
}

/// `[domain.limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawLimits {
    pub clients_max: Option<Int>,
    pub frame_bytes_max: Option<Int>,
    pub unauthenticated_frame_bytes_max: Option<Int>,
    pub pending_calls_max: Option<Int>,
    pub link_calls_max: Option<Int>,
    pub handshake_timeout_ms: Option<Int>,
    pub blocking_timeout_s: Option<Int>,
    pub spin_us: Option<Int>,
}

/// One `[[node]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawNode {
    pub name: Option<Str>,
    pub host: Option<Str>,
    pub listen: Option<Str>,
    pub link: Option<Str>,
}

/// One `[[group]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawGroup {
    pub name: Option<Str>,
    pub node: Option<Str>,
    pub rm: Option<Spanned<RawRm>>,
    pub auto_transaction: Option<bool>,
}

/// A group's `rm`: a kind alone (`rm = "none"`) or a table.
#[derive(Debug)]
pub(crate) enum RawRm {
    Kind(String),
    Table(RawRmTable),
}

/// Told apart by the value's TOML type (not `#[serde(untagged)]`, which would replace
/// every error inside the table, an unknown or missing key, a wrong type, with one
/// generic message, and lose the spans of its values).
impl<'de> Deserialize<'de> for RawRm {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Shape;
        impl<'de> serde::de::Visitor<'de> for Shape {
            type Value = RawRm;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a resource manager kind (\"none\", \"postgres\", ...) or a [group.rm] table",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawRm, E> {
                Ok(RawRm::Kind(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawRm, A::Error> {
                RawRmTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawRm::Table)
            }
        }
        d.deserialize_any(Shape)
    }
}

/// `[group.rm]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawRmTable {
    pub kind: Option<Str>,
    pub open: Option<Str>,
    pub pool_max: Option<Int>,
    pub checkpoint_interval_ms: Option<Int>,
    pub lock_timeout_ms: Option<Int>,
}

/// One `[[server]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawServer {
    pub name: Option<Str>,
    pub group: Option<Str>,
    pub executable: Option<Str>,
    #[serde(default)]
    pub args: Vec<Str>,
    #[serde(default)]
    pub env: BTreeMap<Str, Str>,
    pub min_instances: Option<Int>,
    pub max_instances: Option<Int>,
    pub restart: Option<Str>,
    pub restart_max: Option<Int>,
    pub restart_window_s: Option<Int>,
    pub restart_backoff_ms: Option<Int>,
    pub restart_backoff_max_ms: Option<Int>,
    pub queue_max: Option<Int>,
    pub shutdown_timeout_s: Option<Int>,
    pub start_timeout_s: Option<Int>,
}

/// One `[[service]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawService {
    pub name: Option<Str>,
    pub server: Option<Str>,
    pub timeout_s: Option<Int>,
    pub conversational: Option<bool>,
    pub buffer_types: Option<Spanned<Vec<Str>>>,
}
