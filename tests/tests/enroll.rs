//! Enrolled network namespaces are followed by path: one named before it exists is
//! enrolled when it appears, and one deleted and made again under the same path is
//! enrolled anew, each within a second or so.

use std::time::Duration;

use sandbox::{EchoNode, Pod, node::NODE_IP4, wait_for};

const VIP: &str = "10.96.0.10:7000";
/// The follow interval (1 s) with room for a busy machine.
const FOLLOWED: Duration = Duration::from_secs(5);

fn steered(pod: &Pod) -> bool {
    let report = pod.probe(VIP.parse().unwrap(), 1, 1).unwrap();
    assert_eq!(report.failed, 0, "{report:?}");
    report.only_peer() == Some(NODE_IP4.to_string().as_str())
}

/// The agent's config with the client's namespace and one named `late`, not made yet.
fn config(node: &EchoNode) -> String {
    let echo = node.service("echo", VIP, &["b1"]);
    node.sandbox.set_kube_proxy(std::slice::from_ref(&echo)).unwrap();
    let late = format!("/var/run/netns/{}-late", node.sandbox.id());
    node.agent_config(&[echo]).replace("netns: [", &format!("netns: [{late}, "))
}

#[test]
fn a_namespace_named_before_it_exists_is_enrolled_once_it_appears() {
    let mut node = EchoNode::new(1).unwrap();
    let agent = node.sandbox.start_agent(&config(&node)).unwrap();
    assert!(agent.log().contains("-late does not exist (yet)"), "{}", agent.log());
    assert!(steered(node.client()));

    let late = node.sandbox.add_pod("late").unwrap();
    wait_for("the late namespace to be enrolled", FOLLOWED, || steered(late).then_some(()))
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
}

#[test]
fn a_namespace_made_again_under_the_same_path_is_enrolled_anew() {
    let mut node = EchoNode::new(1).unwrap();
    let agent = node.sandbox.start_agent(&config(&node)).unwrap();
    let first = node.sandbox.add_pod("late").unwrap();
    wait_for("the first namespace enrolled", FOLLOWED, || steered(first).then_some(())).unwrap();

    node.sandbox.remove_pod("late").unwrap();
    let again = node.sandbox.add_pod("late").unwrap();
    wait_for("the new namespace enrolled", FOLLOWED, || steered(again).then_some(()))
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let enrolled = agent.log().matches("-late (netns cookie").count();
    assert_eq!(enrolled, 2, "two namespaces, two cookies:\n{}", agent.log());
}
