//! What a routine can use besides its request: nested calls and server facts.

use tpmon_client::Client;

/// The server's context, passed to init, done and every routine.
pub struct Context {
    pub(crate) client: Client,
    pub(crate) server_name: String,
    pub(crate) args: Vec<String>,
    pub(crate) slot: u32,
}

impl Context {
    /// A client context for nested calls (`tpcall`, `tpacall`, `tpgetrply` from a
    /// service). Calls made inside a transaction carry it.
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }
    /// The server's name in the configuration.
    pub fn server_name(&self) -> &str {
        &self.server_name
    }
    /// The server's arguments from the configuration.
    pub fn args(&self) -> &[String] {
        &self.args
    }
    /// This instance's slot number in the domain's status table.
    pub fn instance(&self) -> u32 {
        self.slot
    }
}
