//! A clock shared by every process on the machine.

/// Microseconds of CLOCK_MONOTONIC: comparable across processes of one boot.
pub fn monotonic_us() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => (ts.tv_sec() as u64) * 1_000_000 + (ts.tv_nsec() as u64) / 1_000,
        // CLOCK_MONOTONIC cannot fail on Linux; a zero keeps callers total.
        Err(_) => 0,
    }
}
