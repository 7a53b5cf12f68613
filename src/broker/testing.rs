//! In-memory harness: N shard cores, a simulated clock, and clients that speak bytes. The mesh
//! is pumped by hand, so tests decide exactly when cross-shard messages arrive.

use std::sync::Arc;
use std::task::Waker;

use bytes::{Bytes, BytesMut};

use super::{ConnId, CoreConfig, ListenerCtx, OutputPoll, ReadVerdict, ShardCore};
use crate::codec::encode::to_bytes;
use crate::codec::{decode_packet, frame, Connect, MqStr, Packet, Properties, Protocol};

/// A set of shard cores wired by an in-memory mesh.
#[derive(Debug)]
pub struct Cluster {
    /// The shards.
    pub shards: Vec<ShardCore>,
    /// Simulated clock (ms).
    pub now_ms: u64,
    /// The listener new connections come through (its anonymous org decides theirs).
    pub listener: Arc<ListenerCtx>,
    /// With a store ([`Cluster::with_store`]): every shard's store writes so far, in order.
    /// Each write is durable as soon as the mesh is pumped.
    pub store_log: Option<Vec<Vec<super::persist::StoreOp>>>,
    /// With a store: writes become durable only through [`Cluster::make_durable`].
    pub hold_durable: bool,
    written_upto: Vec<u64>,
    /// The batch [`Cluster::pump_pair`] moves messages in (reused: no allocation per pump).
    batch: Vec<super::mesh::MeshMsg>,
}

/// A client attached to one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// Shard it is connected to.
    pub shard: usize,
    /// Its connection.
    pub conn: ConnId,
    /// Protocol it speaks.
    pub protocol: Protocol,
}

impl Cluster {
    /// `n` shards, anonymous clients land in org `local`.
    pub fn new(n: u8) -> Cluster {
        let cfg = CoreConfig::with_shards(n);
        Cluster::with_config(n, cfg)
    }

    /// `n` shards whose cores record store writes (`durability = "group"`, the disk
    /// instantaneous): see [`Cluster::store_log`].
    pub fn with_store(n: u8) -> Cluster {
        let mut cfg = CoreConfig::with_shards(n);
        cfg.persist = true;
        cfg.gate_acks = true;
        let mut cl = Cluster::with_config(n, cfg);
        cl.store_log = Some((0..n).map(|_| Vec::new()).collect());
        cl
    }

    fn with_config(n: u8, cfg: CoreConfig) -> Cluster {
        Cluster {
            shards: (0..n).map(|i| ShardCore::new(i, cfg.clone(), 0)).collect(),
            now_ms: 0,
            listener: Arc::new(ListenerCtx { anonymous_org: Some(Arc::from("local")), transport: "test" }),
            store_log: None,
            hold_durable: false,
            written_upto: vec![0; n as usize],
            batch: Vec::with_capacity(crate::limits::MESH_BATCH_MAX),
        }
    }

    /// Takes the store writes recorded since the last call, per shard.
    pub fn take_store_log(&mut self) -> Vec<Vec<super::persist::StoreOp>> {
        let log = self.store_log.as_mut().expect("a cluster with a store");
        log.iter_mut().map(std::mem::take).collect()
    }

    /// Makes every shard's store writes durable at once (recording them).
    fn settle_stores(&mut self) -> bool {
        let Some(log) = self.store_log.as_mut() else { return false };
        let mut any = false;
        for (i, s) in self.shards.iter_mut().enumerate() {
            let before = log[i].len();
            let upto = s.poll_store(&mut log[i]);
            any |= log[i].len() > before;
            self.written_upto[i] = upto;
            if !self.hold_durable {
                s.durable(upto, self.now_ms);
            }
        }
        any
    }

    /// Makes shard `i`'s store writes so far durable (with `hold_durable`), then pumps.
    pub fn make_durable(&mut self, i: usize) {
        self.settle_stores();
        self.shards[i].durable(self.written_upto[i], self.now_ms);
        self.pump();
    }

    /// Replaces the ACL policy of `org` (for connections made afterwards).
    pub fn set_policy(&mut self, org: &str, policy: crate::acl::Policy) {
        let shared = self.shards[0].auth_shared().clone();
        let mut dir = (**shared.directory.load()).clone();
        let mut od = dir.orgs.get(org).map(|o| (**o).clone()).unwrap_or_default();
        od.policy = Some(Arc::new(policy));
        dir.orgs.insert(Arc::from(org), Arc::new(od));
        shared.directory.store(Arc::new(dir));
    }

    /// Gives `org` a quota with `limits` (for connections made afterwards); keeps its policy.
    pub fn set_quota(&mut self, org: &str, limits: crate::quota::QuotaLimits) {
        let shared = self.shards[0].auth_shared().clone();
        let mut dir = (**shared.directory.load()).clone();
        let mut od = dir.orgs.get(org).map(|o| (**o).clone()).unwrap_or_default();
        od.quota = Some(Arc::new(crate::quota::OrgQuota::new(&limits, self.now_ms)));
        dir.orgs.insert(Arc::from(org), Arc::new(od));
        shared.directory.store(Arc::new(dir));
    }

    /// Moves every pending mesh message to its destination until the mesh is quiet.
    pub fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut moved = self.settle_stores();
            let n = self.shards.len();
            for from in 0..n {
                for to in 0..n {
                    moved |= self.pump_pair(from, to);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("mesh never went quiet");
    }

    /// Opens a raw connection on `shard`.
    pub fn open(&mut self, shard: usize, protocol: Protocol) -> Client {
        let peer = crate::transport::PeerInfo { remote: "127.0.0.1:1".into(), transport: "test", tls: None };
        let conn = self.shards[shard].open_conn(self.now_ms, self.listener.clone(), &peer);
        Client { shard, conn, protocol }
    }

    /// Feeds raw bytes from a client; returns the verdict.
    pub fn send_raw(&mut self, c: Client, bytes: &[u8]) -> ReadVerdict {
        let v = self.send_raw_held(c, bytes);
        self.pump();
        v
    }

    /// Feeds raw bytes without moving mesh messages (to stage races).
    pub fn send_raw_held(&mut self, c: Client, bytes: &[u8]) -> ReadVerdict {
        let mut buf = BytesMut::from(bytes);
        self.shards[c.shard].handle_read(c.conn, self.now_ms, &mut buf)
    }

    /// Moves the pending mesh messages of one ordered pair only, as the shell does: in
    /// batches of at most [`limits::MESH_BATCH_MAX`]. Returns whether any moved.
    pub fn pump_pair(&mut self, from: usize, to: usize) -> bool {
        let mut batch = std::mem::take(&mut self.batch);
        let mut moved = false;
        while self.shards[from].take_mesh(to as u8, &mut batch, crate::limits::MESH_BATCH_MAX) > 0 {
            self.shards[to].handle_mesh_batch(self.now_ms, &mut batch);
            moved = true;
        }
        self.batch = batch;
        moved
    }

    /// Encodes and sends a packet.
    pub fn send(&mut self, c: Client, p: &Packet) -> ReadVerdict {
        let b = to_bytes(c.protocol, p);
        self.send_raw(c, &b)
    }

    /// Opens and connects a client; returns it after CONNACK was produced.
    pub fn connect(
        &mut self,
        shard: usize,
        protocol: Protocol,
        id: &str,
        clean: bool,
        props: Properties,
    ) -> (Client, Vec<Packet>) {
        let c = self.open(shard, protocol);
        let p = Packet::Connect(Box::new(Connect {
            protocol,
            clean_start: clean,
            keep_alive: 60,
            props,
            client_id: MqStr::copy_from(id).expect("test id"),
            will: None,
            username: None,
            password: None,
        }));
        self.send(c, &p);
        let got = self.recv(c);
        (c, got)
    }

    /// Everything the broker wrote to `c`, decoded.
    pub fn recv(&mut self, c: Client) -> Vec<Packet> {
        let raw = self.recv_raw(c);
        let mut buf = BytesMut::from(&raw[..]);
        let mut out = Vec::new();
        while let Some(f) = frame(&buf, u32::MAX).expect("broker output frames") {
            let b = buf.split_to(f.total()).freeze();
            out.push(decode_packet(b, &f, Some(c.protocol)).expect("broker output decodes"));
        }
        out
    }

    /// Raw output bytes for `c`.
    pub fn recv_raw(&mut self, c: Client) -> Bytes {
        let mut acc = BytesMut::new();
        loop {
            let mut spare = BytesMut::new();
            match self.shards[c.shard].poll_output(c.conn, &mut spare, Waker::noop()) {
                OutputPoll::Data => acc.extend_from_slice(&spare),
                _ => break,
            }
        }
        self.shards[c.shard].handle_output_drained(c.conn, self.now_ms);
        self.pump();
        acc.freeze()
    }

    /// Simulates the transport closing.
    pub fn drop_conn(&mut self, c: Client) {
        self.shards[c.shard].handle_closed(c.conn, self.now_ms);
        self.pump();
    }

    /// Advances the clock and runs timers on every shard.
    pub fn advance(&mut self, ms: u64) {
        self.now_ms += ms;
        for s in &mut self.shards {
            s.handle_timeout(self.now_ms);
        }
        self.pump();
    }
}
