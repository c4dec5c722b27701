//! tpmon-daemon
