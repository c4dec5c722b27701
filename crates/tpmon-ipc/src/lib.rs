//! tpmon-ipc
