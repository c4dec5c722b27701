//! tpmon-server
