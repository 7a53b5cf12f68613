//! One client connection as the core sees it, split by concern: `Link` (the transport and
//! its output), `Negotiated` (what CONNECT settled), `Login` (who it is and what it may
//! do), `OrgShare` (its org's quota, rate and turns) and `Attach` (its session); and the
//! table of a shard's connections (`ConnTable`), which hands out [`ConnId`]s.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::task::Waker;

use ahash::RandomState;
use bytes::BytesMut;

use super::close::CloseCause;
use super::fair::FairSlot;
use super::mesh::SessionKey;
use super::msg::Msg;
use crate::acl::CompiledAcl;
use crate::auth::directory::Identity;
use crate::auth::VerifyTicket;
use crate::codec::{Connect, MqStr, PacketId, Protocol, QoS, ReasonCode};
use crate::limits;
use crate::router::SessionRef;

/// Identifies a connection on its shard: slot index plus a generation so a reused slot is never
/// mistaken for the old connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    /// Slot in the shard's connection table.
    pub idx: u32,
    /// Slot generation.
    pub gen: u32,
}

/// Settings of the listener a connection arrived on.
#[derive(Debug, Clone)]
pub struct ListenerCtx {
    /// Organization for clients without a user name; `None` refuses them.
    pub anonymous_org: Option<Arc<str>>,
    /// Transport name for logs and audit (`tcp`, `tls`, `ws`, `wss`).
    pub transport: &'static str,
}

/// What every transport reports about a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerInfo {
    /// Remote address (the client's, behind a PROXY v2 load balancer).
    pub remote: String,
    /// `tcp`, `tls`, `ws` or `wss`.
    pub transport: &'static str,
    /// TLS details, for `tls` and `wss`.
    pub tls: Option<TlsInfo>,
}

/// Negotiated TLS parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1_3` or `TLSv1_2`.
    pub version: String,
    /// Cipher suite name.
    pub cipher: String,
    /// Server name the client asked for (SNI).
    pub sni: Option<String>,
    /// Negotiated ALPN protocol.
    pub alpn: Option<String>,
    /// Common name of a verified client certificate (the identity layer's `{cert_cn}`).
    pub client_cn: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Phase {
    AwaitConnect {
        deadline_ms: u64,
    },
    /// CONNECT read; its password is being verified by the hashing pool.
    AwaitAuth,
    AwaitSession,
    Active,
}

#[derive(Debug)]
pub(super) struct PendingSubAck {
    pub(super) token: u64,
    pub(super) waiting: u32,
    pub(super) packet_id: PacketId,
    pub(super) reasons: Vec<ReasonCode>,
    pub(super) retained: Vec<(Box<str>, QoS, Option<u32>)>,
}

/// A superseded pending claim: where its session must go when it is granted.
#[derive(Debug, Clone)]
pub(super) struct Supersede {
    pub(super) to_shard: u8,
    pub(super) conn: ConnId,
    pub(super) generation: u64,
    pub(super) clean_start: bool,
}

/// A CONNECT held while its password is verified off the reactor (`ticket`) or its JWT's
/// provider keys are refreshed (`None`).
#[derive(Debug)]
pub(super) struct PendingAuth {
    pub(super) ticket: Option<VerifyTicket>,
    pub(super) connect: Connect,
    pub(super) client_id: MqStr,
}

/// The transport side: where it came from, its pending output, and its liveness.
#[derive(Debug)]
pub(super) struct Link {
    pub(super) listener: Arc<ListenerCtx>,
    pub(super) remote: Arc<str>,
    /// Common name of the verified TLS client certificate (for `{cert_cn}` in ACL v2).
    pub(super) client_cn: Option<Arc<str>>,
    /// Encoded output waiting for the writer; bounded by `CONN_OUTPUT_BYTES_MAX` for QoS 0.
    pub(super) out: BytesMut,
    pub(super) writer: Option<Waker>,
    pub(super) reader: Option<Waker>,
    pub(super) closing: bool,
    pub(super) last_rx_ms: u64,
    pub(super) keep_alive_ms: u64,
    /// In the shard's pressure list since this time (ms), or since its writer last made
    /// progress, whichever is later: the stall clock.
    pub(super) pressure_since: Option<u64>,
    /// Made no write progress for `OUTPUT_STALL_MS` under pressure: no longer slows other
    /// readers until its output drains.
    pub(super) stalled: bool,
    /// Its acknowledgements held for durability (later ones wait behind them).
    pub(super) held_acks: u32,
    /// Its output waits until store writes up to this sequence are durable (a CONNACK,
    /// SUBACK or UNSUBACK that depends on a session record, and what follows it); 0: none.
    pub(super) out_gate: u64,
    /// Why the broker closes it (`None`: it has not, or the client went away).
    pub(super) cause: Option<CloseCause>,
    pub(super) rx_msgs: u64,
    pub(super) tx_msgs: u64,
    pub(super) dropped: u64,
}

/// What CONNECT settled: protocol level, windows, sizes and topic aliases.
#[derive(Debug)]
pub(super) struct Negotiated {
    pub(super) protocol: Option<Protocol>,
    /// Outbound window: min(client Receive Maximum, INFLIGHT_MAX).
    pub(super) send_window: u16,
    pub(super) client_max_packet: u32,
    pub(super) client_alias_max: u16,
    pub(super) aliases_in: Vec<Option<MqStr>>,
    pub(super) aliases_out: HashMap<MqStr, u16, RandomState>,
    pub(super) assigned_id: Option<MqStr>,
    /// Largest packet this client may send (listener's, lowered by the org's quota).
    pub(super) max_packet: u32,
}

/// Who it is and what it may do.
#[derive(Debug, Default)]
pub(super) struct Login {
    /// Who it authenticated as (set from CONNECT on).
    pub(super) identity: Option<Arc<Identity>>,
    /// A CONNECT waiting for its password check.
    pub(super) pending_auth: Option<Box<PendingAuth>>,
    /// When its credential expires (core clock, ms): closed then with 0xA0.
    pub(super) auth_deadline_ms: Option<u64>,
    /// Connected with Authentication Method `jwt`: may re-authenticate with AUTH.
    pub(super) auth_jwt: bool,
    /// The org's policy bound to this identity (SPEC §3), compiled at CONNECT.
    pub(super) acl: Option<Arc<CompiledAcl>>,
    /// ACL denials not yet reported, and when the last report went out (ms).
    pub(super) acl_denials: u32,
    pub(super) acl_reported_ms: u64,
}

/// Its org's quota, message rate and share of the shard's turns.
#[derive(Debug, Default)]
pub(super) struct OrgShare {
    /// The org's quota (`None`: unlimited org).
    pub(super) quota: Option<Arc<crate::quota::OrgQuota>>,
    /// Holds one of the org's connection slots (released on close).
    pub(super) quota_slot: bool,
    /// Found the org at its connection limit at CONNECT: admitted only if the session it
    /// claims comes with a live connection's slot (a takeover), or a slot frees meanwhile.
    pub(super) slot_wait: bool,
    /// Leased message tokens.
    pub(super) lease: crate::quota::Lease,
    /// 3.1.1 connection over its org's rate: not read before this time (shard clock).
    pub(super) throttled_until_ms: u64,
    /// Its org's share of the shard's turns (set once logged in).
    pub(super) fair: Option<FairSlot>,
    /// Stopped reading because its org spent its share of this turn.
    pub(super) fair_yielded: bool,
}

/// Its session: which one, how it asked for it, its will, and what waits on the claim.
#[derive(Debug)]
pub(super) struct Attach {
    pub(super) key: Option<SessionKey>,
    pub(super) session: Option<SessionRef>,
    pub(super) clean_start: bool,
    pub(super) expiry_req: u32,
    pub(super) will: Option<Msg>,
    pub(super) will_delay_secs: u32,
    pub(super) pending_subacks: VecDeque<PendingSubAck>,
    pub(super) superseded: Option<Supersede>,
}

/// One connection.
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) gen: u32,
    pub(super) phase: Phase,
    pub(super) link: Link,
    pub(super) proto: Negotiated,
    pub(super) login: Login,
    pub(super) share: OrgShare,
    pub(super) attach: Attach,
}

impl Conn {
    /// A connection just accepted: waiting for CONNECT until `now_ms` + the CONNECT timeout.
    fn new(gen: u32, now_ms: u64, listener: Arc<ListenerCtx>, peer: &PeerInfo, max_packet: u32) -> Conn {
        Conn {
            gen,
            phase: Phase::AwaitConnect { deadline_ms: now_ms + limits::CONNECT_TIMEOUT_SECS * 1000 },
            link: Link {
                listener,
                remote: peer.remote.as_str().into(),
                client_cn: peer.tls.as_ref().and_then(|t| t.client_cn.as_deref()).map(Arc::from),
                out: BytesMut::new(),
                writer: None,
                reader: None,
                closing: false,
                last_rx_ms: now_ms,
                keep_alive_ms: 0,
                pressure_since: None,
                stalled: false,
                held_acks: 0,
                out_gate: 0,
                cause: None,
                rx_msgs: 0,
                tx_msgs: 0,
                dropped: 0,
            },
            proto: Negotiated {
                protocol: None,
                send_window: limits::INFLIGHT_MAX,
                client_max_packet: u32::MAX,
                client_alias_max: 0,
                aliases_in: Vec::new(),
                aliases_out: HashMap::default(),
                assigned_id: None,
                max_packet,
            },
            login: Login::default(),
            share: OrgShare::default(),
            attach: Attach {
                key: None,
                session: None,
                clean_start: true,
                expiry_req: 0,
                will: None,
                will_delay_secs: 0,
                pending_subacks: VecDeque::new(),
                superseded: None,
            },
        }
    }
}

/// A shard's connections: slots reused under a new generation, so a stale [`ConnId`] never
/// reaches a newer connection.
#[derive(Debug, Default)]
pub(super) struct ConnTable {
    slots: Vec<Option<Conn>>,
    free: Vec<u32>,
    gens: Vec<u32>,
}

impl ConnTable {
    /// Registers a new connection.
    pub(super) fn open(
        &mut self,
        now_ms: u64,
        listener: Arc<ListenerCtx>,
        peer: &PeerInfo,
        max_packet: u32,
    ) -> ConnId {
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                self.gens.push(0);
                (self.slots.len() - 1) as u32
            }
        };
        let gen = self.gens[idx as usize].wrapping_add(1);
        self.gens[idx as usize] = gen;
        self.slots[idx as usize] = Some(Conn::new(gen, now_ms, listener, peer, max_packet));
        ConnId { idx, gen }
    }

    /// The live connection `id`, if it still is.
    pub(super) fn get(&self, id: ConnId) -> Option<&Conn> {
        self.slots.get(id.idx as usize)?.as_ref().filter(|c| c.gen == id.gen)
    }

    /// The live connection `id`, mutably.
    pub(super) fn get_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.slots.get_mut(id.idx as usize)?.as_mut().filter(|c| c.gen == id.gen)
    }

    /// Frees `id`'s slot, returning the connection.
    pub(super) fn remove(&mut self, id: ConnId) -> Option<Conn> {
        self.get(id)?;
        self.free.push(id.idx);
        self.slots[id.idx as usize].take()
    }

    /// Open connections.
    pub(super) fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Every live connection with its id.
    pub(super) fn iter(&self) -> impl Iterator<Item = (ConnId, &Conn)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (ConnId { idx: i as u32, gen: c.gen }, c)))
    }
}
