//! Commands from the control plane (`plane::ShardCommand`): list an org's live connections,
//! close some of them, publish as a service identity.

use super::*;

impl ShardCore {
    /// Live, authenticated connections of `org` on this shard.
    pub fn live_sessions(&self, org: &str) -> Vec<crate::plane::SessionInfo> {
        self.conns
            .iter()
            .map(|(_, c)| c)
            .filter(|c| !c.link.closing && c.phase == Phase::Active)
            .filter_map(|c| {
                let ident = c.login.identity.as_ref()?;
                let key = c.attach.key.as_ref()?;
                (&*key.org == org).then(|| crate::plane::SessionInfo {
                    client_id: key.client_id.as_str().to_string(),
                    identity: ident.name.to_string(),
                    method: ident.method.as_str().to_string(),
                    transport: c.link.listener.transport.to_string(),
                    remote: c.link.remote.to_string(),
                    protocol: c.proto.protocol.map_or(0, |p| p.level()),
                    shard: self.shard,
                })
            })
            .collect()
    }

    /// Closes `org`'s connections matching `target`; how many.
    pub fn kick_target(&mut self, now_ms: u64, org: &str, target: &crate::plane::KickTarget) -> usize {
        use crate::auth::directory::Method;
        use crate::plane::KickTarget;
        match target {
            KickTarget::All => self.kick(now_ms, org, |_| true),
            KickTarget::User(u) => self.kick(now_ms, org, |i| i.method == Method::Password && &*i.name == u),
            KickTarget::Token(t) => self.kick(now_ms, org, |i| i.method == Method::Token && &*i.name == t),
            KickTarget::ClientId(cid) => self.close_admin(now_ms, |c| {
                c.phase == Phase::Active
                    && c.attach.key.as_ref().is_some_and(|k| &*k.org == org && k.client_id.as_str() == cid)
            }),
        }
    }

    /// Publishes into `org` on behalf of a service (the REST bridge); the caller has checked
    /// the ACL. Routed like a client's publish, from this shard.
    #[allow(clippy::too_many_arguments)]
    pub fn publish_service(
        &mut self,
        now_ms: u64,
        org: &str,
        topic: &str,
        payload: Bytes,
        qos: u8,
        retain: bool,
        user_properties: Vec<(String, String)>,
    ) {
        let Some(t) = MqStr::copy_from(topic) else { return };
        let mut props = Properties::default();
        for (k, v) in user_properties {
            if let (Some(k), Some(v)) = (MqStr::copy_from(&k), MqStr::copy_from(&v)) {
                props.user_properties.push((k, v));
            }
        }
        let msg = Msg {
            topic: t,
            payload,
            qos: if qos >= 1 { QoS::AtLeastOnce } else { QoS::AtMostOnce },
            retain,
            props: props.into(),
            received_ms: now_ms,
        };
        let org: Arc<str> = org.into();
        self.stats.received += 1;
        self.publish_internal(&org, msg, now_ms);
        self.drain_self(now_ms);
    }

    /// Closes every live connection of `org` whose identity `matches` (a deleted or changed
    /// user, a revoked token), with 0x98 administrative action on 5.0.
    pub fn kick(&mut self, now_ms: u64, org: &str, matches: impl Fn(&Identity) -> bool) -> usize {
        self.close_admin(now_ms, |c| c.login.identity.as_ref().is_some_and(|i| &*i.org == org && matches(i)))
    }

    /// The connections `select` picks (admin commands; a scan of this shard's connections).
    pub(super) fn conns_where(&self, select: impl Fn(&Conn) -> bool) -> Vec<ConnId> {
        self.conns.iter().filter(|(_, c)| select(c)).map(|(id, _)| id).collect()
    }

    /// Closes the live connections `select` picks, with 0x98 administrative action; how many.
    fn close_admin(&mut self, now_ms: u64, select: impl Fn(&Conn) -> bool) -> usize {
        let ids = self.conns_where(|c| !c.link.closing && select(c));
        for id in &ids {
            self.close_conn(*id, CloseCause::AdministrativeAction, now_ms);
        }
        ids.len()
    }
}
