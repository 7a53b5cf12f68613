//! One connection: a reader loop feeding the core and a writer task draining its output.
//! Output written during one read batch is coalesced and flushed once.

use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use futures_lite::future::{poll_fn, FutureExt};
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use super::{now_ms, Shard};
use crate::broker::{ListenerCtx, OutputPoll, ReadVerdict};
use crate::limits;

/// Initial read buffer: small, so idle connections stay cheap; grows to the packet in flight.
const READ_BUF_INITIAL: usize = 2048;

enum Woke {
    Read(std::io::Result<usize>),
    Closing,
}

/// Serves one accepted TCP connection until it closes.
pub(crate) async fn serve(shard: Rc<Shard>, stream: TcpStream, ctx: Arc<ListenerCtx>) {
    // Latency must never depend on Nagle: output is coalesced per loop turn instead.
    let _ = stream.set_nodelay(true);
    let remote = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let id = shard.core.borrow_mut().open_conn(now_ms(), ctx, &remote);
    let (mut rd, mut wr) = futures_lite::io::split(stream);
    let writer_shard = shard.clone();
    let writer = glommio::spawn_local(async move {
        let mut spare = BytesMut::with_capacity(1024);
        loop {
            let r =
                poll_fn(|cx| match writer_shard.core.borrow_mut().poll_output(id, &mut spare, cx.waker()) {
                    OutputPoll::Pending => Poll::Pending,
                    other => Poll::Ready(other),
                })
                .await;
            match r {
                OutputPoll::Data => {
                    if wr.write_all(&spare).await.is_err() {
                        writer_shard.core.borrow_mut().close_conn(id, None, now_ms());
                        writer_shard.flush_mesh();
                        return;
                    }
                    spare.clear();
                    if spare.capacity() > 256 * 1024 {
                        spare = BytesMut::with_capacity(1024); // give back a burst's memory
                    }
                    writer_shard.core.borrow_mut().handle_output_drained(id, now_ms());
                    writer_shard.flush_mesh();
                }
                _ => {
                    let _ = wr.flush().await;
                    return;
                }
            }
        }
    });
    let mut buf = BytesMut::with_capacity(READ_BUF_INITIAL);
    loop {
        // Wait while the core asks us to (session claim in progress, mesh backpressure).
        poll_fn(|cx| {
            if shard.core.borrow_mut().can_read(id, now_ms(), cx.waker()) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        if shard.core.borrow().is_closing(id) {
            break;
        }
        if !buf.is_empty() {
            // Bytes read before a wait may hold complete packets.
            let v = shard.core.borrow_mut().handle_read(id, now_ms(), &mut buf);
            shard.flush_mesh();
            match v {
                ReadVerdict::Close => break,
                ReadVerdict::Wait => continue,
                ReadVerdict::Continue => {}
            }
        }
        let len = buf.len();
        let room = (buf.capacity() - len).clamp(512, limits::READ_CHUNK_BYTES);
        buf.resize(len + room, 0);
        let closing = poll_fn(|cx| {
            let mut core = shard.core.borrow_mut();
            if core.is_closing(id) {
                Poll::Ready(Woke::Closing)
            } else {
                core.register_reader(id, cx.waker());
                Poll::Pending
            }
        });
        let woke = async { Woke::Read(rd.read(&mut buf[len..]).await) }.or(closing).await;
        let n = match woke {
            Woke::Read(Ok(n)) if n > 0 => n,
            Woke::Read(_) => {
                buf.truncate(len);
                shard.core.borrow_mut().close_conn(id, None, now_ms());
                shard.flush_mesh();
                break;
            }
            Woke::Closing => break,
        };
        buf.truncate(len + n);
        let v = shard.core.borrow_mut().handle_read(id, now_ms(), &mut buf);
        shard.flush_mesh();
        if v == ReadVerdict::Close {
            break;
        }
    }
    // Let the writer flush what is queued (a DISCONNECT with a reason, say), bounded in time.
    let _ = writer
        .or(async {
            glommio::timer::sleep(Duration::from_secs(2)).await;
        })
        .await;
    shard.core.borrow_mut().handle_closed(id, now_ms());
    shard.flush_mesh();
}
