//! One connection: a reader loop feeding the core and a writer task draining its output.
//! Output written during one read batch is coalesced and flushed once.

use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use futures_lite::future::{poll_fn, FutureExt};
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;

use super::{Deadline, ListenerRt, Shard};
use crate::broker::ConnId;
use crate::broker::{CloseCause, ListenerCtx, OutputPoll, ReadVerdict};
use crate::clock::mono_ms;
use crate::config::ListenerKind;
use crate::limits;
use crate::transport::{proxy, tls, ws, PeerInfo};

/// Runs `f` under the pre-MQTT deadline (PROXY header, TLS handshake, WebSocket upgrade), so a
/// stalled handshake (slowloris) holds its slot for a bounded time.
async fn with_deadline<T>(
    shard: &Rc<Shard>,
    f: impl Future<Output = Result<T, String>>,
) -> Result<T, String> {
    let deadline = Deadline::after(shard, limits::CONNECT_TIMEOUT_SECS * 1000);
    f.or(async {
        deadline.await;
        Err("handshake did not complete in time".to_string())
    })
    .await
}

/// Sets up one accepted socket according to its listener, then serves MQTT over it.
pub(crate) async fn accept(shard: Rc<Shard>, mut tcp: TcpStream, rt: Arc<ListenerRt>) {
    // Latency must never depend on Nagle: output is coalesced per loop turn instead.
    let _ = tcp.set_nodelay(true);
    let mut peer = PeerInfo {
        remote: tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default(),
        transport: rt.cfg.kind.name(),
        tls: None,
    };
    if rt.cfg.proxy_protocol {
        match with_deadline(&shard, proxy::read_v2(&mut tcp)).await {
            Ok(Some(addr)) => peer.remote = addr,
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(remote = %peer.remote, error = %e, "PROXY header refused");
                return;
            }
        }
    }
    let ctx = rt.ctx.clone();
    let remote = peer.remote.clone();
    // Every branch is boxed: an async fn's state is as large as its largest branch, and the
    // TLS handshake's (rustls state inline) would otherwise make every plain TCP connection's
    // task cost ~34 KB instead of the few hundred bytes `serve` needs.
    let outcome: Result<(), String> = match rt.cfg.kind {
        ListenerKind::Tcp => {
            Box::pin(serve(shard.clone(), tcp, ctx, peer)).await;
            Ok(())
        }
        ListenerKind::Ws => {
            Box::pin(async {
                let s = with_deadline(&shard, async {
                    ws::accept(tcp, &rt.cfg.path, rt.max_packet).await.map_err(|e| e.0)
                })
                .await?;
                Box::pin(serve(shard.clone(), s, ctx, peer)).await;
                Ok(())
            })
            .await
        }
        ListenerKind::Tls | ListenerKind::Wss => {
            Box::pin(async {
                let cfg = rt.tls.clone().expect("tls listeners have a TLS config");
                let s = with_deadline(&shard, async {
                    futures_rustls::TlsAcceptor::from(cfg).accept(tcp).await.map_err(|e| format!("TLS: {e}"))
                })
                .await?;
                peer.tls = Some(tls::info(s.get_ref().1));
                if rt.cfg.kind == ListenerKind::Tls {
                    Box::pin(serve(shard.clone(), s, ctx, peer)).await;
                } else {
                    let s = with_deadline(&shard, async {
                        ws::accept(s, &rt.cfg.path, rt.max_packet).await.map_err(|e| e.0)
                    })
                    .await?;
                    Box::pin(serve(shard.clone(), s, ctx, peer)).await;
                }
                Ok(())
            })
            .await
        }
    };
    if let Err(e) = outcome {
        // A peer that closed without a byte (a health check's TCP probe) is not a failure.
        let probe = e.contains("handshake eof") || e.contains("closed during the HTTP request");
        let folded = if probe { None } else { shard.refused_log.borrow_mut().tick(mono_ms()) };
        match folded {
            Some(n) => {
                // A TLS record that is not one: most likely a plain MQTT client on a TLS port.
                let hint = if e.contains("InvalidContentType") || e.contains("corrupt message") {
                    "plain (non-TLS) traffic on a TLS listener?"
                } else {
                    ""
                };
                tracing::info!(transport = rt.cfg.kind.name(), %remote, error = %e, hint, more_since_last_line = n,
                    "connection refused before MQTT");
            }
            None => {
                tracing::debug!(transport = rt.cfg.kind.name(), %remote, error = %e, "connection refused before MQTT")
            }
        }
    }
}

/// Initial read buffer: small, so idle connections stay cheap; grows to the packet in flight.
const READ_BUF_INITIAL: usize = 512;

enum Woke {
    Read(std::io::Result<usize>),
    Closing,
}

/// Writes all of `data`, telling the core after each partial write that the client is still
/// reading (its stall clock restarts).
async fn write_reporting<W: AsyncWrite + Unpin>(
    shard: &Shard,
    id: ConnId,
    wr: &mut W,
    mut data: &[u8],
) -> std::io::Result<()> {
    while !data.is_empty() {
        let n = wr.write(data).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        data = &data[n..];
        if !data.is_empty() {
            shard.core.borrow_mut().handle_output_progress(id, mono_ms());
        }
    }
    Ok(())
}

/// Serves MQTT over one byte stream until it closes.
async fn serve<S>(shard: Rc<Shard>, stream: S, ctx: Arc<ListenerCtx>, peer: PeerInfo)
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let id = shard.core.borrow_mut().open_conn(mono_ms(), ctx, &peer);
    let (mut rd, mut wr) = futures_lite::io::split(stream);
    let writer_shard = shard.clone();
    let writer = glommio::spawn_local(async move {
        let mut spare = BytesMut::new();
        loop {
            let r =
                poll_fn(|cx| match writer_shard.core.borrow_mut().poll_output(id, &mut spare, cx.waker()) {
                    OutputPoll::Pending => Poll::Pending,
                    other => Poll::Ready(other),
                })
                .await;
            match r {
                OutputPoll::Data => {
                    if write_reporting(&writer_shard, id, &mut wr, &spare).await.is_err()
                        || wr.flush().await.is_err()
                    {
                        writer_shard.core.borrow_mut().close_conn(id, CloseCause::ConnectionLost, mono_ms());
                        writer_shard.drain_core();
                        return;
                    }
                    spare.clear();
                    if spare.capacity() > 256 * 1024 {
                        spare = BytesMut::new(); // give back a burst's memory
                    }
                    writer_shard.core.borrow_mut().handle_output_drained(id, mono_ms());
                    writer_shard.drain_core();
                }
                _ => {
                    let _ = wr.flush().await;
                    return;
                }
            }
        }
    });
    let mut buf = BytesMut::with_capacity(READ_BUF_INITIAL);
    let mut reads = 0usize;
    loop {
        // glommio reads a socket that has data without waiting: a client that keeps its socket
        // full would otherwise keep this task running, and the shard's other tasks waiting.
        reads += 1;
        if reads >= limits::READS_BEFORE_YIELD {
            reads = 0;
            futures_lite::future::yield_now().await;
        }
        // Wait while the core asks us to (session claim in progress, mesh backpressure).
        poll_fn(|cx| {
            if shard.core.borrow_mut().can_read(id, mono_ms(), cx.waker()) {
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
            let v = shard.core.borrow_mut().handle_read(id, mono_ms(), &mut buf);
            shard.drain_core();
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
                shard.core.borrow_mut().close_conn(id, CloseCause::ConnectionLost, mono_ms());
                shard.drain_core();
                break;
            }
            Woke::Closing => break,
        };
        buf.truncate(len + n);
        let v = shard.core.borrow_mut().handle_read(id, mono_ms(), &mut buf);
        shard.drain_core();
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
    shard.core.borrow_mut().handle_closed(id, mono_ms());
    shard.drain_core();
}
