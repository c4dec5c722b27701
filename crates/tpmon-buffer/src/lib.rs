//! tpmon-buffer
