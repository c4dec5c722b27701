//! tpmon-client
