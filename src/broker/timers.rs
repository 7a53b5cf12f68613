//! Time: CONNECT, keep-alive and credential deadlines, session expiry, delayed wills,
//! retention sweeps and the periodic `$SYS` and metrics figures.

use super::*;

/// When each periodic task last ran (core clock, ms).
#[derive(Debug, Default)]
pub(super) struct Timers {
    pub(super) start_ms: u64,
    pub(super) last_sys_ms: u64,
    pub(super) last_report_ms: u64,
    /// Last retention sweep (maximum ages of stored messages, `[org.retention]`).
    pub(super) last_retention_ms: u64,
    /// The earliest connection or session deadline the last sweep saw, lowered by deadlines
    /// set since ([`Timers::note`]); `u64::MAX`: none.
    pub(super) next_deadline_ms: u64,
}

impl Timers {
    /// A deadline was set at `at_ms` (one less than a second away would otherwise wait for
    /// the next sweep).
    pub(super) fn note(&mut self, at_ms: u64) {
        self.next_deadline_ms = self.next_deadline_ms.min(at_ms);
    }
}

/// The longest the core waits between sweeps: figures for `/metrics` go out every second.
const SWEEP_EVERY_MS: u64 = 1000;

impl ShardCore {
    /// When [`ShardCore::handle_timeout`] next has work (core clock, ms): the earliest
    /// connection or session deadline, a pressured writer's stall, `$SYS`, and at most
    /// a second after the last sweep. The shell sleeps until then (or until other input).
    pub fn poll_timeout(&self) -> u64 {
        let mut at = (self.timers.last_report_ms + SWEEP_EVERY_MS).min(self.timers.next_deadline_ms);
        if self.cfg.sys_interval_ms > 0 {
            at = at.min(self.timers.last_sys_ms + self.cfg.sys_interval_ms);
        }
        for id in &self.pressure {
            if let Some(since) = self.conn(*id).and_then(|c| c.link.pressure_since) {
                at = at.min(since + limits::OUTPUT_STALL_MS);
            }
        }
        at
    }

    /// Advances time: keep-alive and CONNECT deadlines, session expiry, delayed wills, `$SYS`.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.expire_pressure(now_ms);
        let mut next = u64::MAX;
        let mut expired_conns = Vec::new();
        for (id, c) in self.conns.iter() {
            if c.link.closing {
                continue;
            }
            // A deadline already due closes the connection below: not one to wake up for.
            next = next.min(Some(conn_deadline(c)).filter(|t| *t > now_ms).unwrap_or(u64::MAX));
            match c.phase {
                Phase::AwaitConnect { deadline_ms } if now_ms >= deadline_ms => {
                    expired_conns.push((id, CloseCause::ConnectTimeout));
                }
                // [MQTT-3.1.2-22]: one and a half times the keep alive.
                Phase::Active
                    if c.link.keep_alive_ms > 0
                        && now_ms > c.link.last_rx_ms + c.link.keep_alive_ms * 3 / 2 =>
                {
                    expired_conns.push((id, CloseCause::KeepAliveTimeout));
                }
                // The token or JWT it authenticated with has expired (SPEC §2).
                Phase::Active | Phase::AwaitSession
                    if c.login.auth_deadline_ms.is_some_and(|t| now_ms >= t) =>
                {
                    expired_conns.push((id, CloseCause::CredentialExpired));
                }
                _ => {}
            }
        }
        for (id, cause) in expired_conns {
            self.close_conn(id, cause, now_ms);
        }
        let mut ended = Vec::new();
        let mut wills = Vec::new();
        for (sref, s) in self.sessions.iter_mut() {
            if s.conn.is_some() {
                continue;
            }
            if s.delayed_will.as_ref().is_some_and(|(at, _)| *at <= now_ms) {
                let (_, w) = s.delayed_will.take().expect("checked");
                wills.push((s.org.clone(), w));
            }
            if s.expires_at_ms.is_some_and(|at| at <= now_ms) {
                ended.push(sref);
            }
            let will_at = s.delayed_will.as_ref().map(|(at, _)| *at);
            let ends_at = s.expires_at_ms.filter(|at| *at > now_ms); // a due one ends below
            next = next.min(will_at.unwrap_or(u64::MAX)).min(ends_at.unwrap_or(u64::MAX));
        }
        self.timers.next_deadline_ms = next;
        for (org, w) in wills {
            self.publish_internal(&org, w, now_ms);
        }
        for s in ended {
            self.end_session(s, now_ms);
        }
        if now_ms >= self.timers.last_retention_ms + 1000 {
            self.timers.last_retention_ms = now_ms;
            self.expire_retention(now_ms);
        }
        self.expire_origins(now_ms);
        if now_ms >= self.timers.last_report_ms + 1000 {
            // Figures for /metrics every second, whether or not $SYS is published.
            self.timers.last_report_ms = now_ms;
            self.report_figures();
        }
        if self.cfg.sys_interval_ms > 0 && now_ms >= self.timers.last_sys_ms + self.cfg.sys_interval_ms {
            self.timers.last_sys_ms = now_ms;
            self.publish_sys(now_ms);
        }
        self.drain_self(now_ms);
    }

    /// Drops what is older than its org's `[org.retention]` maximum ages: the head of offline
    /// queues, and retained messages (in the replica here and, once per message, in the store).
    fn expire_retention(&mut self, now_ms: u64) {
        let dir = self.cfg.auth.directory.load();
        if dir.orgs.values().all(|o| o.retention == crate::quota::Retention::default()) {
            return;
        }
        let mut trimmed = Vec::new();
        for (sref, s) in self.sessions.iter_mut() {
            if s.conn.is_some() {
                continue; // a connected session's queue is checked as it is sent (pump)
            }
            let Some(max) = dir.orgs.get(&s.org).and_then(|o| o.retention.queued_max_age_ms) else {
                continue;
            };
            while let Some(d) = s.state.queue.front() {
                if now_ms.saturating_sub(d.msg.received_ms) <= max {
                    break;
                }
                trimmed.push((sref, s.state.queue.pop_front().expect("checked")));
            }
        }
        let mut touched: Vec<SessionRef> = Vec::new();
        for (sref, d) in trimmed {
            self.persist_unqueued(sref, &d);
            if touched.last() != Some(&sref) {
                touched.push(sref);
            }
        }
        for sref in touched {
            self.count_offline(sref);
        }
        let orgs: Vec<(Arc<str>, u64)> = dir
            .orgs
            .iter()
            .filter_map(|(o, d)| d.retention.retained_max_age_ms.map(|m| (o.clone(), m)))
            .collect();
        for (org, max) in orgs {
            for (topic, seq) in self.retained.expire(&org, now_ms.saturating_sub(max)) {
                self.persist_retain_expired(&org, topic, seq);
            }
        }
    }
}

/// The earliest time a sweep has something to do about `c`: its CONNECT deadline, the end of
/// one and a half keep-alives [MQTT-3.1.2-22], its credential's expiry.
fn conn_deadline(c: &Conn) -> u64 {
    let mut at = c.login.auth_deadline_ms.unwrap_or(u64::MAX);
    match c.phase {
        Phase::AwaitConnect { deadline_ms } => at = at.min(deadline_ms),
        Phase::Active if c.link.keep_alive_ms > 0 => {
            at = at.min(c.link.last_rx_ms + c.link.keep_alive_ms * 3 / 2 + 1);
        }
        _ => {}
    }
    at
}
