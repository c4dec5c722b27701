//! tpmon-config
