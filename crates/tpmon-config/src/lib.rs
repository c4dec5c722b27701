//! The tpmon domain configuration: parsing and validating the TOML file an administrator
//! writes to describe a domain (its sections `[domain]`, `[[node]]`, `[[group]]`,
//! `[[server]]` and `[[service]]`).
//!
//! This crate owns the file format and its rules, and nothing else: it never starts
//! processes, opens sockets or creates the run directory. [`load`] reads a file, [`parse`]
//! works on text already in memory; both return a [`DomainConfig`] in which every default
//! is filled in, every reference is an index into the model's vectors and every relative
//! path is resolved against the file's directory. `docs/configuration.md` is the reference
//! of every key.
//!
//! Fault model: the file is untrusted input. Whatever it contains (broken TOML, unknown or
//! duplicate keys, values of the wrong type or out of range, dangling references, unset
//! environment variables) ends in a [`ConfigError`] that names the file, the line, the
//! column and the key, never in a panic.
//!
//! ```
//! use std::path::Path;
//!
//! let text = r#"
//! [domain]
//! name = "demo"
//! listen = "127.0.0.1:7480"
//!
//! [[server]]
//! name = "echo"
//! executable = "echo-server"
//!
//! [[service]]
//! name = "ECHO"
//! server = "echo"
//! "#;
//! let config = tpmon_config::parse(text, Path::new("/etc/tpmon/domain.toml")).unwrap();
//! assert_eq!(config.domain.run_dir, Path::new("/etc/tpmon/run"));
//! let echo = config.service_by_name("ECHO").unwrap();
//! assert_eq!(config.servers[echo.server].name, "echo");
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod expand;
mod locate;
mod model;
mod raw;
mod validate;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use error::{ConfigError, ErrorKind, Position};
pub use model::{
    Domain, DomainConfig, Group, Limits, Node, Password, ResourceManager, RestartPolicy, RmKind,
    Server, Service, TxSettings, Unresolved, XaResource, BUFFER_TYPES, DEFAULT_GROUP,
    GTRID_NAMES_BYTES_MAX, NAME_LEN_MAX,
};

/// Reads and validates the configuration file at `path`.
///
/// Relative paths inside the file are resolved against the file's directory; `${VAR}`
/// references are expanded from the process environment.
pub fn load(path: &Path) -> Result<DomainConfig, ConfigError> {
    load_for(path, Reader::Daemon)
}

/// Who reads the configuration, which decides what an unset `${VAR}` means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reader {
    /// The node daemon (and `tpmon boot`, which checks the file before starting it):
    /// every `${VAR}` must be set.
    Daemon,
    /// A tool or client (`tpmon call`, `status`, `down`, `tx`, `rm`, a client program):
    /// an unset variable in a value only the daemon uses (`rm.open`, `link_secret`, a
    /// server's `args` and `env`) is no error. The value is left empty and listed in
    /// [`DomainConfig::unresolved`], so that an operator's shell needs no database
    /// password to stop the domain or list its transactions. Every other value is
    /// expanded as for the daemon.
    Tool,
}

/// Like [`load`], read as `reader` (see [`Reader`]).
pub fn load_for(path: &Path, reader: Reader) -> Result<DomainConfig, ConfigError> {
    use std::io::Read;

    let read_error = |e: std::io::Error| {
        ConfigError::whole_file(
            ErrorKind::Read,
            path,
            None,
            "cannot read configuration file",
            Some(e),
        )
    };
    // Read at most one byte more than allowed, so that a huge file (or a device that never
    // ends) is refused without reading all of it.
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(FILE_BYTES_MAX as u64 + 1).read_to_end(&mut bytes))
        .map_err(read_error)?;
    let text = String::from_utf8(bytes).map_err(|e| {
        ConfigError::whole_file(
            ErrorKind::Syntax,
            path,
            None,
            format!(
                "the file is not valid UTF-8 (at byte {})",
                e.utf8_error().valid_up_to()
            ),
            None,
        )
    })?;
    parse_for(&text, path, reader)
}

/// Validates configuration `text` that was read from `source`.
///
/// `source` names the file in error messages and gives the directory that relative paths
/// are resolved against (a relative `source` is taken relative to the current directory).
/// Nothing is read from the file system; `${VAR}` references are expanded from the
/// process environment (a variable whose value is not UTF-8 is an error).
pub fn parse(text: &str, source: &Path) -> Result<DomainConfig, ConfigError> {
    parse_for(text, source, Reader::Daemon)
}

/// Like [`parse`], read as `reader` (see [`Reader`]).
pub fn parse_for(text: &str, source: &Path, reader: Reader) -> Result<DomainConfig, ConfigError> {
    parse_inner(text, source, &expand::process_env, reader)
}

/// Like [`parse`], but `${VAR}` references are looked up with `env` instead of in the
/// process environment (`None`: the variable is not set).
///
/// Useful for tests and for tools that check a file against another environment.
pub fn parse_with_env(
    text: &str,
    source: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<DomainConfig, ConfigError> {
    parse_with_env_for(text, source, env, Reader::Daemon)
}

/// Like [`parse_with_env`], read as `reader` (see [`Reader`]).
pub fn parse_with_env_for(
    text: &str,
    source: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    reader: Reader,
) -> Result<DomainConfig, ConfigError> {
    let lookup = |name: &str| match env(name) {
        Some(value) => expand::Var::Set(value),
        None => expand::Var::Unset,
    };
    parse_inner(text, source, &lookup, reader)
}

/// Largest configuration file accepted, in bytes (1 MiB; a domain with thousands of
/// servers and services fits many times over).
pub const FILE_BYTES_MAX: usize = 1024 * 1024;

/// Largest `frame_bytes_max` of a multi-node domain: a node-link packet is at most
/// 16 MiB with its 48-byte header and 16-byte tag, and a call carried in it takes a
/// few bytes of envelope (its timeout, the message kind) beyond the frame itself; 4 KiB
/// are kept for that. The daemon asserts at compile time that this fits the link's
/// limit.
pub const LINK_FRAME_BYTES_MAX: u32 = (16 << 20) - 64 - 4096;

fn parse_inner(
    text: &str,
    source: &Path,
    env: &dyn Fn(&str) -> expand::Var,
    reader: Reader,
) -> Result<DomainConfig, ConfigError> {
    if text.len() > FILE_BYTES_MAX {
        return Err(ConfigError::whole_file(
            ErrorKind::Read,
            source,
            None,
            format!("the file is larger than {FILE_BYTES_MAX} bytes"),
            None,
        ));
    }
    let raw = locate::parse_raw(text, source)?;
    let base_dir = base_dir(source)?;
    validate::build(raw, text, source, base_dir, env, reader)
}

/// The absolute directory of `source`.
fn base_dir(source: &Path) -> Result<PathBuf, ConfigError> {
    let fail = |e: std::io::Error| {
        ConfigError::whole_file(
            ErrorKind::Read,
            source,
            None,
            "cannot determine the configuration file's directory",
            Some(e),
        )
    };
    if source.as_os_str().is_empty() {
        return std::env::current_dir().map_err(fail);
    }
    let absolute = std::path::absolute(source).map_err(fail)?;
    Ok(absolute
        .parent()
        .map_or_else(|| absolute.clone(), Path::to_path_buf))
}
