//! The no-op resource manager: every call succeeds and every branch votes yes. It
//! measures the transaction manager alone (`tpmon bench tx`) and holds nothing, so it
//! never has a prepared branch to recover.

use std::any::Any;

use tpmon_config::RmKind;

use crate::{Rm, Vote, XaError, Xid};

/// See the module documentation.
#[derive(Debug, Default)]
pub struct NoopRm;

impl Rm for NoopRm {
    fn kind(&self) -> RmKind {
        RmKind::Noop
    }
    fn begin(&mut self, _: &Xid) -> Result<(), XaError> {
        Ok(())
    }
    fn prepare(&mut self, _: &Xid) -> Result<Vote, XaError> {
        Ok(Vote::Prepared)
    }
    fn rollback_active(&mut self, _: &Xid) -> Result<(), XaError> {
        Ok(())
    }
    fn commit(&mut self, _: &Xid) -> Result<(), XaError> {
        Ok(())
    }
    fn rollback(&mut self, _: &Xid) -> Result<(), XaError> {
        Ok(())
    }
    fn recover(&mut self, _: &str) -> Result<Vec<Xid>, XaError> {
        Ok(Vec::new())
    }
    fn ensure_open(&mut self) -> Result<(), XaError> {
        Ok(())
    }
    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}
