//! The agent's listener is not an open proxy: a connection the kernel did not redirect
//! (no original destination filed for it) is reset before it reaches any backend.

use std::{
    io::Read as _,
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use sandbox::{
    EchoNode,
    node::{AGENT_IP4, AGENT_PORT},
};

/// Connects from the calling thread's namespace and returns what the agent sent.
fn direct_connect(to: SocketAddr) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut received = Vec::new();
    stream.read_to_end(&mut received)?;
    Ok(received)
}

#[test]
fn connections_the_kernel_did_not_redirect_are_refused() {
    let node = EchoNode::new(1).unwrap();
    let echo = node.service("echo", "10.96.0.10:7000", &["b1"]);
    let agent = node.start_agent(&[echo]).unwrap();
    let listener = SocketAddr::from((AGENT_IP4, AGENT_PORT));

    // From Pods and from the node itself, straight to the listener.
    for netns in [node.outsider().netns(), node.client().netns(), node.sandbox.node()] {
        let outcome = netns.run(|| direct_connect(listener)).unwrap();
        match outcome {
            Err(err) => assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}"),
            Ok(bytes) => assert!(bytes.is_empty(), "got {:?}", String::from_utf8_lossy(&bytes)),
        }
    }
    // An enrolled process in the cgroup dialing the listener itself: not a VIP, so not
    // steered, so refused.
    let report = node.client().probe(listener, 5, 1).unwrap();
    assert_eq!((report.ok, report.failed), (0, 5), "{report:?}");
    assert_eq!(agent.counters().unwrap()["steered"], 0);
}
