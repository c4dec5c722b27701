//! tpmon-txlog (being written)
