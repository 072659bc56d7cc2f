//! The connect-time decision of connect4/connect6, as a pure function.

use crate::{AgentState, Counter, SockAddr, enrolled};

/// What the kernel learned about one `connect()`.
#[derive(Clone, Copy, Debug)]
pub struct Connect<'a> {
    pub is_tcp: bool,
    /// The destination is a known service VIP.
    pub is_vip: bool,
    /// The socket's network namespace's entry in the enrolled map
    /// ([`enrolled`](crate::enrolled)), if it has one.
    pub enrolled: Option<u8>,
    /// The agent's state, if the agent ever wrote one.
    pub agent: Option<&'a AgentState>,
    /// The agent's listener for the destination's family is an open socket.
    pub listening: bool,
    pub now_ns: u64,
    /// The destination's family decides which listener to use.
    pub dst: SockAddr,
}

/// Where to send the connect instead, or why it is left alone (fail open).
pub fn decide(c: Connect<'_>) -> Result<SockAddr, Counter> {
    if !c.is_tcp {
        return Err(Counter::SkipNotTcp);
    }
    if !c.is_vip {
        return Err(Counter::SkipNotVip);
    }
    let pod_full = match c.enrolled {
        Some(enrolled::STEER) => false,
        Some(enrolled::FULL) => true,
        _ => return Err(Counter::SkipNotEnrolled),
    };
    let Some(agent) = c.agent else {
        return Err(Counter::SkipAgentDead);
    };
    let listener = if c.dst.is_v4() { agent.listen4 } else { agent.listen6 };
    if listener.family == 0 {
        return Err(Counter::SkipNoListener);
    }
    // A killed agent's listener is closed at once; a hung agent's heartbeat goes stale.
    if !c.listening {
        return Err(Counter::SkipAgentDead);
    }
    if !agent.is_alive(c.now_ns) {
        return Err(Counter::SkipAgentStale);
    }
    if agent.full() {
        return Err(Counter::SkipAgentFull);
    }
    if pod_full {
        return Err(Counter::SkipPodFull);
    }
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::HEARTBEAT_MAX_AGE_NS;
    use core::net::SocketAddr;

    fn addr(s: &str) -> SockAddr {
        SockAddr::from(s.parse::<SocketAddr>().unwrap())
    }

    fn agent() -> AgentState {
        AgentState {
            heartbeat_ns: 10_000_000_000,
            max_age_ns: HEARTBEAT_MAX_AGE_NS,
            listen4: addr("169.254.77.1:15001"),
            listen6: SockAddr::default(),
            ..AgentState::default()
        }
    }

    fn connect(agent: &AgentState) -> Connect<'_> {
        Connect {
            is_tcp: true,
            is_vip: true,
            enrolled: Some(enrolled::STEER),
            agent: Some(agent),
            listening: true,
            now_ns: agent.heartbeat_ns + 1,
            dst: addr("10.96.0.10:50051"),
        }
    }

    #[test]
    fn steers_only_when_every_condition_holds() {
        let a = agent();
        assert_eq!(decide(connect(&a)), Ok(a.listen4));
        assert_eq!(decide(Connect { is_tcp: false, ..connect(&a) }), Err(Counter::SkipNotTcp));
        assert_eq!(decide(Connect { is_vip: false, ..connect(&a) }), Err(Counter::SkipNotVip));
        assert_eq!(
            decide(Connect { enrolled: None, ..connect(&a) }),
            Err(Counter::SkipNotEnrolled)
        );
        assert_eq!(
            decide(Connect { enrolled: Some(0), ..connect(&a) }),
            Err(Counter::SkipNotEnrolled),
            "an unknown value is not an enrollment"
        );
        assert_eq!(decide(Connect { agent: None, ..connect(&a) }), Err(Counter::SkipAgentDead));
    }

    #[test]
    fn a_stale_or_missing_heartbeat_fails_open() {
        let a = agent();
        let fresh = a.heartbeat_ns + HEARTBEAT_MAX_AGE_NS;
        assert!(decide(Connect { now_ns: fresh, ..connect(&a) }).is_ok());
        let stale = fresh + 1;
        assert_eq!(decide(Connect { now_ns: stale, ..connect(&a) }), Err(Counter::SkipAgentStale));
        let never = AgentState { heartbeat_ns: 0, ..a };
        assert_eq!(decide(connect(&never)), Err(Counter::SkipAgentStale));
        // A heartbeat written after `now` was read (another CPU) is still fresh.
        assert!(decide(Connect { now_ns: a.heartbeat_ns - 5, ..connect(&a) }).is_ok());
    }

    #[test]
    fn a_closed_listener_fails_open_with_a_fresh_or_stale_heartbeat() {
        let a = agent();
        let killed = Connect { listening: false, ..connect(&a) };
        assert_eq!(decide(killed), Err(Counter::SkipAgentDead));
        let long_dead = Connect { now_ns: a.heartbeat_ns + 10 * HEARTBEAT_MAX_AGE_NS, ..killed };
        assert_eq!(decide(long_dead), Err(Counter::SkipAgentDead));
    }

    #[test]
    fn ipv6_needs_an_ipv6_listener() {
        let a = agent();
        let v6 = Connect { dst: addr("[fd96::10]:50051"), ..connect(&a) };
        assert_eq!(decide(v6), Err(Counter::SkipNoListener));
        let dual = AgentState { listen6: addr("[fd77::1]:15001"), ..a };
        assert_eq!(decide(Connect { agent: Some(&dual), ..v6 }), Ok(dual.listen6));
    }

    #[test]
    fn a_full_agent_or_a_full_pod_fails_open_and_says_which() {
        let full = AgentState { flags: AgentState::FULL, ..agent() };
        assert_eq!(decide(connect(&full)), Err(Counter::SkipAgentFull));
        let a = agent();
        let pod_full = Connect { enrolled: Some(enrolled::FULL), ..connect(&a) };
        assert_eq!(decide(pod_full), Err(Counter::SkipPodFull));
        // A dead agent is dead, whatever else is true.
        assert_eq!(
            decide(Connect { listening: false, ..connect(&full) }),
            Err(Counter::SkipAgentDead)
        );
    }
}
