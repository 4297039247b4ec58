//! Which connections a server takes: a pure state machine the server loop asks at each step
//! of a connection's life (no sockets, no clock: times come in as milliseconds).
//!
//! A server's connection slots are shared by peers it cannot tell apart before their
//! handshake ends, and by anyone who can send a UDP datagram. So:
//! - Handshakes have a pool of their own (`max_handshakes`). Past `retry_above` handshakes in
//!   flight, a peer whose address is not yet validated is sent a QUIC Retry: a spoofed source
//!   never answers it, so spoofed Initials cannot hold handshake slots.
//! - Once the handshake has shown who the peer is, it joins one of two pools: cluster nodes
//!   (a certificate from the cluster CA) or clients. A node always finds room against clients:
//!   whatever clients do, workers and masters keep reaching each other.
//! - A client source (IP address) holds at most `max_client_per_source` connections, so one
//!   host cannot take the whole client pool.
//! - A full client pool takes a new client by closing the client connection idle longest (no
//!   call in flight); only when every client connection is busy is the new one refused.
//!
//! Invariants (checked by the property test below):
//! - handshakes in flight ≤ `max_handshakes`; node connections ≤ `max_nodes`; client
//!   connections ≤ `max_clients`; client connections of any source ≤ `max_client_per_source`.
//! - Every count returns to zero once every connection it counted has ended.

use std::collections::HashMap;
use std::net::IpAddr;

/// The limits a server admits connections by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Handshakes in flight at once.
    pub max_handshakes: usize,
    /// Handshakes in flight above which unvalidated peers get a QUIC Retry first.
    pub retry_above: usize,
    /// Connections of cluster nodes.
    pub max_nodes: usize,
    /// Connections of clients (executors, drivers, the CLI).
    pub max_clients: usize,
    /// Client connections from one IP address.
    pub max_client_per_source: usize,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        AdmissionLimits {
            max_handshakes: 512,
            retry_above: 64,
            max_nodes: 1024,
            max_clients: 16_384,
            max_client_per_source: 1024,
        }
    }
}

impl AdmissionLimits {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_handshakes == 0 || self.max_nodes == 0 || self.max_clients == 0 || self.max_client_per_source == 0 {
            return Err("connection limits must be positive".into());
        }
        Ok(())
    }
}

/// What to do with a new connection attempt, before its handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnIncoming {
    /// Run the handshake; call [`Admission::handshake_ended`] when it ends.
    Handshake,
    /// Send a QUIC Retry (the peer proves its address, then comes again).
    Retry,
    /// Refuse it.
    Refuse,
}

/// What to do with a connection whose handshake succeeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnEstablished {
    /// Serve it; call [`Admission::closed`] when it ends.
    Serve,
    /// Serve it once connection `victim` (an idle client) is closed to make room; the slot is
    /// already moved, so the victim's own [`Admission::closed`] releases nothing.
    ServeReplacing(u64),
    /// Close it.
    Refuse,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    Node,
    Client,
}

#[derive(Clone, Debug)]
struct Conn {
    source: IpAddr,
    pool: Pool,
    /// Calls in flight.
    active: usize,
    /// When its last call ended (or it was established).
    idle_since_ms: u64,
}

/// The server's admission state.
#[derive(Debug, Default)]
pub struct Admission {
    limits: AdmissionLimits,
    handshakes: usize,
    nodes: usize,
    clients: usize,
    per_source: HashMap<IpAddr, usize>,
    conns: HashMap<u64, Conn>,
    next_id: u64,
}

impl Admission {
    pub fn new(limits: AdmissionLimits) -> Admission {
        Admission { limits, ..Default::default() }
    }

    pub fn limits(&self) -> &AdmissionLimits {
        &self.limits
    }

    /// A connection attempt arrived; `validated`: its source address is proven (it answered a
    /// Retry), `may_retry`: a Retry can still be sent to it.
    pub fn incoming(&mut self, validated: bool, may_retry: bool) -> OnIncoming {
        if self.handshakes >= self.limits.max_handshakes {
            return OnIncoming::Refuse;
        }
        if self.handshakes >= self.limits.retry_above && !validated && may_retry {
            return OnIncoming::Retry;
        }
        self.handshakes += 1;
        OnIncoming::Handshake
    }

    /// A handshake admitted by [`Admission::incoming`] ended: `Some(pool)` with the peer's
    /// identity, `None` if it failed. Returns the connection's id with what to do.
    pub fn handshake_ended(&mut self, source: IpAddr, pool: Option<Pool>, now_ms: u64) -> (u64, OnEstablished) {
        self.handshakes = self.handshakes.saturating_sub(1);
        let Some(pool) = pool else { return (0, OnEstablished::Refuse) };
        let mut verdict = OnEstablished::Serve;
        match pool {
            Pool::Node if self.nodes >= self.limits.max_nodes => return (0, OnEstablished::Refuse),
            Pool::Node => self.nodes += 1,
            Pool::Client => {
                if self.per_source.get(&source).copied().unwrap_or(0) >= self.limits.max_client_per_source {
                    return (0, OnEstablished::Refuse);
                }
                if self.clients >= self.limits.max_clients {
                    let Some(victim) = self.idlest_client() else { return (0, OnEstablished::Refuse) };
                    self.release(victim);
                    verdict = OnEstablished::ServeReplacing(victim);
                }
                self.clients += 1;
                *self.per_source.entry(source).or_insert(0) += 1;
            }
        }
        self.next_id += 1;
        let id = self.next_id;
        self.conns.insert(id, Conn { source, pool, active: 0, idle_since_ms: now_ms });
        (id, verdict)
    }

    /// A call on connection `id` began.
    pub fn call_started(&mut self, id: u64) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.active += 1;
        }
    }

    /// A call on connection `id` ended.
    pub fn call_ended(&mut self, id: u64, now_ms: u64) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.active = c.active.saturating_sub(1);
            if c.active == 0 {
                c.idle_since_ms = now_ms;
            }
        }
    }

    /// Connection `id` ended (idempotent; a reclaimed one was released already).
    pub fn closed(&mut self, id: u64) {
        self.release(id);
    }

    fn release(&mut self, id: u64) {
        let Some(c) = self.conns.remove(&id) else { return };
        match c.pool {
            Pool::Node => self.nodes = self.nodes.saturating_sub(1),
            Pool::Client => {
                self.clients = self.clients.saturating_sub(1);
                if let Some(n) = self.per_source.get_mut(&c.source) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.per_source.remove(&c.source);
                    }
                }
            }
        }
    }

    /// The client connection with no call in flight that has been idle longest.
    fn idlest_client(&self) -> Option<u64> {
        self.conns
            .iter()
            .filter(|(_, c)| c.pool == Pool::Client && c.active == 0)
            .min_by_key(|(id, c)| (c.idle_since_ms, **id))
            .map(|(id, _)| *id)
    }

    /// (handshakes, node connections, client connections) now.
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.handshakes, self.nodes, self.clients)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, n])
    }

    fn small() -> AdmissionLimits {
        AdmissionLimits { max_handshakes: 4, retry_above: 2, max_nodes: 2, max_clients: 3, max_client_per_source: 2 }
    }

    #[test]
    fn unvalidated_peers_are_retried_under_load_and_refused_when_full() {
        let mut a = Admission::new(small());
        assert_eq!(a.incoming(false, true), OnIncoming::Handshake);
        assert_eq!(a.incoming(false, true), OnIncoming::Handshake);
        assert_eq!(a.incoming(false, true), OnIncoming::Retry, "above retry_above: prove the address");
        assert_eq!(a.incoming(true, false), OnIncoming::Handshake);
        assert_eq!(a.incoming(false, false), OnIncoming::Handshake, "a retried peer is not retried twice");
        assert_eq!(a.incoming(true, false), OnIncoming::Refuse, "handshake pool full");
        a.handshake_ended(ip(1), None, 0);
        assert_eq!(a.incoming(true, false), OnIncoming::Handshake);
    }

    #[test]
    fn nodes_get_in_whatever_clients_hold_and_idle_clients_make_room() {
        let mut a = Admission::new(small());
        let est = |a: &mut Admission, src, pool, now| {
            assert_eq!(a.incoming(true, false), OnIncoming::Handshake);
            a.handshake_ended(src, Some(pool), now)
        };
        let (c1, v) = est(&mut a, ip(1), Pool::Client, 10);
        assert_eq!(v, OnEstablished::Serve);
        let (c2, _) = est(&mut a, ip(1), Pool::Client, 20);
        assert_eq!(est(&mut a, ip(1), Pool::Client, 30).1, OnEstablished::Refuse, "per-source cap");
        let (c3, _) = est(&mut a, ip(2), Pool::Client, 40);
        assert_eq!(est(&mut a, ip(9), Pool::Node, 50).1, OnEstablished::Serve, "nodes have their own pool");
        // Pool full: the idlest client without a call goes (c1 is busy, c2 idle since 20).
        a.call_started(c1);
        let (_, v) = est(&mut a, ip(3), Pool::Client, 60);
        assert_eq!(v, OnEstablished::ServeReplacing(c2));
        a.closed(c2); // the victim's own close releases nothing more
        assert_eq!(a.counts(), (0, 1, 3));
        // Every client busy: refused.
        a.call_started(c3);
        let c4 = a.conns.iter().find(|(_, c)| c.source == ip(3)).map(|(id, _)| *id).unwrap();
        a.call_started(c4);
        assert_eq!(est(&mut a, ip(4), Pool::Client, 70).1, OnEstablished::Refuse);
        a.call_ended(c3, 80);
        assert_eq!(est(&mut a, ip(4), Pool::Client, 90).1, OnEstablished::ServeReplacing(c3));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Incoming(bool, bool),
        Ended(u8, Option<bool>),
        Start(u8),
        Stop(u8),
        Close(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<bool>(), any::<bool>()).prop_map(|(v, r)| Op::Incoming(v, r)),
            (0u8..4, proptest::option::of(any::<bool>())).prop_map(|(s, p)| Op::Ended(s, p)),
            (0u8..16).prop_map(Op::Start),
            (0u8..16).prop_map(Op::Stop),
            (0u8..16).prop_map(Op::Close),
        ]
    }

    proptest! {
        #[test]
        fn limits_hold_over_any_history_and_counts_return_to_zero(ops in proptest::collection::vec(op(), 1..300)) {
            let mut a = Admission::new(small());
            let mut handshaking = 0usize;
            let mut open: Vec<u64> = Vec::new();
            let mut now = 0;
            for o in ops {
                now += 1;
                match o {
                    Op::Incoming(v, r) => {
                        if a.incoming(v, r) == OnIncoming::Handshake {
                            handshaking += 1;
                        }
                    }
                    Op::Ended(s, p) if handshaking > 0 => {
                        handshaking -= 1;
                        let pool = p.map(|n| if n { Pool::Node } else { Pool::Client });
                        match a.handshake_ended(ip(s), pool, now) {
                            (id, OnEstablished::Serve) => open.push(id),
                            (id, OnEstablished::ServeReplacing(victim)) => {
                                prop_assert!(open.contains(&victim));
                                open.retain(|x| *x != victim);
                                open.push(id);
                            }
                            (_, OnEstablished::Refuse) => {}
                        }
                    }
                    Op::Ended(..) => {}
                    Op::Start(i) => if let Some(id) = open.get(i as usize) { a.call_started(*id) },
                    Op::Stop(i) => if let Some(id) = open.get(i as usize) { a.call_ended(*id, now) },
                    Op::Close(i) => if (i as usize) < open.len() { a.closed(open.remove(i as usize)) },
                }
                let l = a.limits().clone();
                let (h, n, c) = a.counts();
                prop_assert!(h <= l.max_handshakes && n <= l.max_nodes && c <= l.max_clients);
                prop_assert!(a.per_source.values().all(|&x| x <= l.max_client_per_source));
                prop_assert_eq!(h, handshaking);
                prop_assert_eq!(n + c, open.len());
            }
            for id in open {
                a.closed(id);
            }
            for _ in 0..handshaking {
                a.handshake_ended(ip(0), None, now);
            }
            prop_assert_eq!(a.counts(), (0, 0, 0));
            prop_assert!(a.per_source.is_empty());
        }
    }
}
