//! The shard's background tasks, each feeding the core from one source: the store's commits,
//! password verdicts, control-plane commands, fair-scheduling turns,
//! and the listeners' accepts.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use glommio::net::TcpListener;

use super::{conn, ListenerRt, Shard, ShardLinks};
use crate::broker::ConnId;
use crate::clock::mono_ms;
use crate::config::Durability;
use crate::plane::ShardCommand;

/// What the stores held: this shard's sessions (those its store holds), every retained
/// message, the de-duplication rows; then the QoS 2 forwards a crash interrupted.
pub(super) fn restore(shard: &Shard, links: &ShardLinks) {
    let mut core = shard.core.borrow_mut();
    let id = core.shard as usize;
    let (sessions, owners, origins) = std::mem::take(&mut links.restored.lock().expect("restore lock")[id]);
    let now = mono_ms();
    for m in links.retained_msgs.iter() {
        core.restore_retained(&m.0, m.1.clone(), m.2);
    }
    core.restore_origins(now, origins);
    for (key, shard, generation) in owners {
        core.restore_owner(key, shard, generation);
    }
    for s in sessions {
        core.restore_session(now, s);
    }
    core.replay_forwards(now);
}

/// Commits: writes are applied at once; a persist on the blocking pool (an fsync never runs
/// on the reactor) makes them durable and releases the acknowledgements that waited. A
/// persist starts as soon as there are writes and none runs; writes arriving during an fsync
/// go into the next one (group commit without a timer: a publisher with a bounded window is
/// never held back by one). A failing store is retried from the same task (`durable.rs`).
pub(super) fn spawn_commit(shard: &Rc<Shard>) {
    let shard = shard.clone();
    glommio::spawn_local(async move {
        loop {
            futures_lite::future::poll_fn(|cx| {
                let persist = shard.store_dirty.get() && shard.durability != Durability::None;
                if persist || shard.store_failed.get() {
                    std::task::Poll::Ready(())
                } else {
                    *shard.commit_waker.borrow_mut() = Some(cx.waker().clone());
                    std::task::Poll::Pending
                }
            })
            .await;
            if shard.store_failed.get() {
                shard.recover_store().await;
                continue;
            }
            shard.persist_stores().await;
        }
    })
    .detach();
}

/// Runs one command of the control plane.
async fn run_command(shard: &Rc<Shard>, cmd: ShardCommand) {
    match cmd {
        ShardCommand::Kick { org, target, reply } => {
            let n = shard.core.borrow_mut().kick_target(mono_ms(), &org, &target);
            shard.drain_core();
            if let Some(r) = reply {
                let _ = r.try_send(n);
            }
        }
        ShardCommand::DiffPolicy { org, policy, reply } => {
            let v = shard.core.borrow().policy_diff(&org, &policy);
            let _ = reply.try_send(v);
        }
        ShardCommand::PolicyChanged { org } => {
            shard.core.borrow_mut().policy_changed(mono_ms(), &org);
            shard.drain_core();
        }
        ShardCommand::Publish { org, topic, payload, qos, retain, user_properties } => {
            shard.core.borrow_mut().publish_service(
                mono_ms(),
                &org,
                &topic,
                payload,
                qos,
                retain,
                user_properties,
            );
            shard.drain_core();
        }
        ShardCommand::PurgeOrg { org, reply } => {
            let n = shard.core.borrow_mut().purge_org(mono_ms(), &org);
            shard.drain_core();
            shard.apply_store_ops();
            shard.store_dirty.set(true);
            shard.persist_stores().await;
            let ok = !shard.store_failed.get();
            tracing::info!(org = %org, closed = n, ok, "org purged from the shard");
            let _ = reply.try_send(ok);
        }
        ShardCommand::Sessions { org, reply } => {
            let v = shard.core.borrow().live_sessions(&org);
            let _ = reply.try_send(v);
        }
    }
}

/// Password verdicts from the hashing pool.
pub(super) fn spawn_auth_results(shard: &Rc<Shard>, rx: flume::Receiver<(ConnId, bool)>) {
    let shard = shard.clone();
    glommio::spawn_local(async move {
        while let Ok((conn, ok)) = rx.recv_async().await {
            shard.core.borrow_mut().handle_auth_result(conn, mono_ms(), Some(ok));
            shard.drain_core();
        }
    })
    .detach();
}

/// Commands from the control plane, run in order.
pub(super) fn spawn_commands(shard: &Rc<Shard>, rx: flume::Receiver<ShardCommand>) {
    let shard = shard.clone();
    glommio::spawn_local(async move {
        while let Ok(cmd) = rx.recv_async().await {
            run_command(&shard, cmd).await;
        }
    })
    .detach();
}

/// Fair scheduling: when a reader waits for the next turn (its org spent its share while
/// another org has work), let the reactor poll once (a timer fires only from a poll, after
/// every runnable reader ran), then start the turn.
pub(super) fn spawn_turns(shard: &Rc<Shard>) {
    let shard = shard.clone();
    glommio::spawn_local(async move {
        loop {
            futures_lite::future::poll_fn(|cx| {
                if shard.core.borrow_mut().turn_wanted(cx.waker()) {
                    std::task::Poll::Ready(())
                } else {
                    std::task::Poll::Pending
                }
            })
            .await;
            glommio::timer::sleep(Duration::from_micros(1)).await;
            shard.core.borrow_mut().next_turn();
        }
    })
    .detach();
}

/// Listeners: every shard binds each address with SO_REUSEPORT; the kernel spreads accepts.
/// The accept tasks stop when their handles are dropped.
pub(super) fn spawn_listeners(
    shard: &Rc<Shard>,
    listeners: &[Arc<ListenerRt>],
) -> std::io::Result<Vec<glommio::Task<()>>> {
    let id = shard.core.borrow().shard as usize;
    let mut accept_tasks = Vec::new();
    for rt in listeners {
        if rt.cfg.shards.as_ref().is_some_and(|only| !only.contains(&id)) {
            continue;
        }
        let listener = TcpListener::bind(rt.cfg.bind)?;
        let shard = shard.clone();
        let rt = rt.clone();
        accept_tasks.push(glommio::spawn_local(async move {
            loop {
                match listener.accept().await {
                    Ok(stream) => {
                        glommio::spawn_local(conn::accept(shard.clone(), stream, rt.clone())).detach();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        glommio::timer::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }));
    }
    Ok(accept_tasks)
}
