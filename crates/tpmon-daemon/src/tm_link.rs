//! The transaction manager's requests to the other nodes' transaction managers over
//! the node links (Prepare, Commit, Rollback, QueryAdvice, GET_MAX_SCN and RECOVER_INDOUBT_GLOBAL_TX frames, bodies of
//! `tpmon_tm::subordinate`), and the serving of theirs.
//!
//! Owns only the requests in flight (async sequence → waiter) and the framing; the
//! decisions are the transaction managers'. A request whose link is down (in either
//! direction: the answer comes back on the other node's link) fails at once; one
//! without a response fails after [`REQUEST_TIMEOUT`] (the TM then treats the node as
//! unreachable: rollback before the decision, retry after it).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tpmon_link::{Frame, Item, Mesh};
use tpmon_tm::{Links, SubItem};

use crate::domain::Domain;

/// Longest wait for another node's TM to answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Most requests of other nodes' TMs served at once. Each holds its body and may wait
/// on a database; past this, a request is dropped (its sender times out and asks
/// again later), so that a peer, or a storm of retries while a database hangs, cannot
/// make this node start tasks without limit.
pub const SERVED_MAX: usize = 64;

/// A request in flight: the node asked, the item, and where its answer goes.
type Waiting = HashMap<(u32, u64), (Item, oneshot::Sender<Vec<u8>>)>;

struct Inner {
    mesh: Arc<Mesh>,
    me: u32,
    /// Request ids: `epoch << 32` plus a counter, so that an answer to a request of an
    /// earlier boot (a node that answers late, after this one restarted) can never be
    /// taken for the answer to a new one.
    next: AtomicU64,
    waiting: Mutex<Waiting>,
    /// Places for the other nodes' requests being served ([`SERVED_MAX`]).
    serving: Arc<tokio::sync::Semaphore>,
}

/// The TM's side of the node links.
#[derive(Clone)]
pub struct TmLinks(Arc<Inner>);

fn item_of(i: SubItem) -> Item {
    match i {
        SubItem::Prepare => Item::Prepare,
        SubItem::Commit => Item::Commit,
        SubItem::Rollback => Item::Rollback,
        SubItem::QueryAdvice => Item::QueryAdvice,
        SubItem::GetMaxScn => Item::GetMaxScn,
        SubItem::RecoverInDoubt => Item::RecoverInDoubt,
    }
}

/// The TM request a link item carries, if it is one.
pub fn sub_item(i: Item) -> Option<SubItem> {
    Some(match i {
        Item::Prepare => SubItem::Prepare,
        Item::Commit => SubItem::Commit,
        Item::Rollback => SubItem::Rollback,
        Item::QueryAdvice => SubItem::QueryAdvice,
        Item::GetMaxScn => SubItem::GetMaxScn,
        Item::RecoverInDoubt => SubItem::RecoverInDoubt,
        _ => return None,
    })
}

impl TmLinks {
    /// The TM links of node `me` over `mesh`; `epoch` is this boot's (the TM's).
    pub fn new(mesh: Arc<Mesh>, me: u32, epoch: u64) -> TmLinks {
        TmLinks(Arc::new(Inner {
            mesh,
            me,
            next: AtomicU64::new((epoch << 32) | 1),
            waiting: Mutex::new(HashMap::new()),
            serving: Arc::new(tokio::sync::Semaphore::new(SERVED_MAX)),
        }))
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.0.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A response from node `from`'s TM: taken only as the answer to a request of
    /// this boot sent to that node for the same item.
    pub fn on_response(&self, from: u32, frame: Frame) {
        let mut waiting = self.waiting();
        match waiting.get(&(from, frame.async_seq)) {
            Some((item, _)) if *item == frame.item => {
                if let Some((_, tx)) = waiting.remove(&(from, frame.async_seq)) {
                    let _ = tx.send(frame.body);
                }
            }
            _ => tracing::debug!(
                peer = from,
                seq = frame.async_seq,
                item = ?frame.item,
                "an answer from another node's transaction manager that no request waits for; dropped"
            ),
        }
    }

    /// A request from node `from`'s TM: served by ours, answered on the link.
    pub fn on_request(&self, dom: &Arc<Domain>, from: u32, frame: Frame) {
        let Some(item) = sub_item(frame.item) else {
            return;
        };
        let Ok(place) = self.0.serving.clone().try_acquire_owned() else {
            tracing::warn!(
                peer = from,
                ?item,
                "another node's transaction manager sent a request while {SERVED_MAX} are \
                 being served; dropped (it asks again after its timeout)"
            );
            return;
        };
        let (tm, me) = (dom.tm.clone(), self.clone());
        tokio::spawn(async move {
            let _place = place;
            let body = tm.on_link_request(from as usize, item, &frame.body).await;
            let answer = Frame {
                response: true,
                async_seq: frame.async_seq,
                ..Frame::request(frame.item, me.0.me, body)
            };
            if let Err(e) = me.0.mesh.send(from, answer) {
                tracing::warn!(peer = from, error = %e, "could not answer another node's transaction manager");
            }
        });
    }
}

impl Links for TmLinks {
    fn request(
        &self,
        node: usize,
        item: SubItem,
        body: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send>> {
        let me = self.clone();
        Box::pin(async move {
            // The answer comes back on the other node's own link to us: without it
            // the request could only time out (the caller retries later).
            if me.0.mesh.link_state(node as u32).is_some_and(|(up, _)| !up) {
                return Err("cannot reach it: the link is not up both ways".into());
            }
            let id = me.0.next.fetch_add(1, Ordering::Relaxed);
            let key = (node as u32, id);
            let (tx, rx) = oneshot::channel();
            me.waiting().insert(key, (item_of(item), tx));
            let mut frame = Frame::request(item_of(item), me.0.me, body);
            frame.async_seq = id;
            if let Err(e) = me.0.mesh.send(node as u32, frame) {
                me.waiting().remove(&key);
                return Err(format!("cannot reach it: {e}"));
            }
            let r = tokio::time::timeout(REQUEST_TIMEOUT, rx).await;
            me.waiting().remove(&key);
            match r {
                Ok(Ok(body)) => Ok(body),
                Ok(Err(_)) => Err("no answer".into()),
                Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
            }
        })
    }
}
