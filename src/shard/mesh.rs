//! The shell's side of the cross-shard mesh. What the core addressed to a peer during a turn
//! leaves as one batch — one slot in the bounded queue of that ordered pair, at most one
//! wake-up of the peer (glommio writes the peer's eventfd only when it sleeps) — and the peer
//! handles the whole batch before it flushes its output once. Drained batches go back to the
//! sender through a small free list per ordered pair, so batches are reused, not allocated.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use glommio::channels::channel_mesh::Senders;

use super::Shard;
use crate::broker::mesh::MeshMsg;
use crate::clock::mono_ms;
use crate::limits;

/// Messages from one shard to one peer, in the order the core produced them.
pub(crate) type MeshBatch = Vec<MeshMsg>;

/// What the mesh queues carry.
pub(crate) type MeshReceiver = glommio::channels::shared_channel::ConnectedReceiver<MeshBatch>;

/// Empty batches, one free list per ordered pair of shards (`from * n + to`): the receiver
/// gives a drained batch back, the sender takes it for its next batch to that peer.
#[derive(Clone)]
pub(crate) struct BatchPool {
    lists: Arc<Vec<Mutex<Vec<MeshBatch>>>>,
    nr_shards: usize,
}

impl BatchPool {
    /// Free lists for `nr_shards` shards.
    pub(crate) fn new(nr_shards: usize) -> BatchPool {
        let lists = (0..nr_shards * nr_shards).map(|_| Mutex::new(Vec::new())).collect();
        BatchPool { lists: Arc::new(lists), nr_shards }
    }

    fn list(&self, from: usize, to: usize) -> std::sync::MutexGuard<'_, Vec<MeshBatch>> {
        // A poisoned list only held empty vectors: keep using it.
        self.lists[from * self.nr_shards + to].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An empty batch for messages from `from` to `to`.
    fn take(&self, from: usize, to: usize) -> MeshBatch {
        self.list(from, to).pop().unwrap_or_else(|| Vec::with_capacity(64))
    }

    /// Gives back a drained batch of messages from `from` to `to`.
    fn give(&self, from: usize, to: usize, batch: MeshBatch) {
        debug_assert!(batch.is_empty());
        let mut list = self.list(from, to);
        if list.len() < limits::MESH_BATCH_POOL {
            list.push(batch);
        }
    }
}

/// This shard's ends of the mesh.
pub(crate) struct MeshLinks {
    senders: Senders<MeshBatch>,
    /// Peers whose queue was full: a task awaits room for the batch that did not fit, then
    /// flushes the rest (order kept; nothing else is sent to that peer meanwhile).
    waiting: RefCell<Vec<bool>>,
    pool: BatchPool,
}

impl MeshLinks {
    pub(crate) fn new(senders: Senders<MeshBatch>, pool: BatchPool) -> MeshLinks {
        let n = senders.nr_consumers();
        MeshLinks { senders, waiting: RefCell::new(vec![false; n]), pool }
    }

    /// This shard's id in the mesh.
    pub(crate) fn peer_id(&self) -> usize {
        self.senders.peer_id()
    }
}

impl Shard {
    /// Sends what the core has for each peer, batch by batch, without blocking. When a peer's
    /// queue is full, a task takes the batch that did not fit and awaits room for it: the
    /// retry starts the moment the peer drains, not at the next tick.
    pub(super) fn send_mesh(self: &Rc<Self>) {
        let me = self.mesh.peer_id();
        let mut held = Vec::new();
        {
            let mut core = self.core.borrow_mut();
            let mut waiting = self.mesh.waiting.borrow_mut();
            for peer in 0..self.mesh.senders.nr_consumers() {
                if peer == me || waiting[peer] {
                    continue;
                }
                while core.mesh_pending(peer as u8) > 0 {
                    let mut batch = self.mesh.pool.take(me, peer);
                    core.take_mesh(peer as u8, &mut batch, limits::MESH_BATCH_MAX);
                    match self.mesh.senders.try_send_to(peer, batch) {
                        Ok(()) => {}
                        Err(glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(b))) => {
                            waiting[peer] = true;
                            held.push((peer, b));
                            break;
                        }
                        Err(other) => {
                            tracing::error!(peer, error = %other, "mesh send failed");
                            break;
                        }
                    }
                }
            }
        }
        // Spawned with no borrow held: glommio may run a new task right away.
        for (peer, batch) in held {
            let shard = self.clone();
            glommio::spawn_local(async move {
                if let Err(e) = shard.mesh.senders.send_to(peer, batch).await {
                    tracing::error!(peer, error = %e, "mesh send failed");
                }
                shard.mesh.waiting.borrow_mut()[peer] = false;
                // Flush from the executor, not from inside whoever spawned us.
                futures_lite::future::yield_now().await;
                shard.drain_core();
            })
            .detach();
        }
    }
}

/// Hands each batch from `peer` to the core whole, then flushes once.
pub(super) fn spawn_receiver(shard: &Rc<Shard>, peer: usize, rx: MeshReceiver) {
    let shard = shard.clone();
    glommio::spawn_local(async move {
        let me = shard.mesh.peer_id();
        let mut batches = 0;
        loop {
            // A receive from a non-empty queue completes at once: without a yield now and
            // then, a peer that keeps this queue full would keep every other task of the
            // shard (readers, writers, accepts) from running.
            batches += 1;
            if batches >= limits::MESH_BATCHES_BEFORE_YIELD {
                batches = 0;
                futures_lite::future::yield_now().await;
            }
            // Under output pressure, leave batches in the bounded queue (backpressure).
            futures_lite::future::poll_fn(|cx| {
                if shard.core.borrow_mut().can_take_mesh(mono_ms(), cx.waker()) {
                    std::task::Poll::Ready(())
                } else {
                    std::task::Poll::Pending
                }
            })
            .await;
            let Some(mut batch) = rx.recv().await else { break };
            shard.core.borrow_mut().handle_mesh_batch(mono_ms(), &mut batch);
            shard.mesh.pool.give(peer, me, batch);
            shard.drain_core();
        }
    })
    .detach();
}
