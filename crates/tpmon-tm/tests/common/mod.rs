//! Helpers shared by the transaction manager's tests: stopping a database server's
//! process and making sure it runs again.

/// Stops process `pid` with SIGSTOP; the returned guard continues it (SIGCONT) when
/// dropped, however the test ends.
pub fn stop(pid: u32) -> Stopped {
    signal(pid, "STOP");
    Stopped(pid)
}

/// A process stopped by [`stop`], continued when dropped.
pub struct Stopped(u32);

impl Drop for Stopped {
    fn drop(&mut self) {
        signal(self.0, "CONT");
    }
}

fn signal(pid: u32, sig: &str) {
    let st = std::process::Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .expect("kill");
    assert!(st.success(), "kill -{sig} {pid}");
}
