//! Start errors: each names the flag or config field at fault and what to do, is
//! printed once, exits 1 without a panic, and leaves nothing behind (no pins, so no
//! program stays attached). A second agent for a cgroup another agent serves refuses
//! to start and names the first.

use std::{path::Path, time::Duration};

use sandbox::{EchoNode, Proc};

/// Runs `sockeye run` with `config` and `args` and waits for it to fail; returns its
/// log.
fn fails(node: &EchoNode, name: &str, config: &str, args: &[&str]) -> String {
    let mut proc: Proc = node.sandbox.spawn_sockeye(name, config, args).unwrap();
    let code = proc.wait(Duration::from_secs(20)).unwrap();
    let log = proc.log();
    assert_eq!(code, Some(1), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    log
}

/// The one error line of a log, which must say `needle`.
fn error_line(log: &str, needle: &str) -> String {
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "printed once:\n{log}");
    assert!(errors[0].contains(needle), "{needle:?} not in {:?}", errors[0]);
    errors[0].to_string()
}

fn pins(node: &EchoNode) -> String {
    node.sandbox.pin_dir().display().to_string()
}

#[test]
fn each_start_error_names_its_flag_or_field_once_and_leaves_nothing_behind() {
    let node = EchoNode::new(1).unwrap();
    let echo = node.service("echo", "10.96.0.10:7000", &["b1"]);
    let good = node.agent_config(std::slice::from_ref(&echo));
    let more = node.service("more", "10.96.0.11:7000", &["b1"]);
    let cgroup = node.sandbox.cgroup().display().to_string();
    let pins = pins(&node);
    let sandbox_dir = node.sandbox.dir().display().to_string();

    let cases: Vec<(&str, String, Vec<String>, &str)> = vec![
        (
            "no-cgroup",
            good.clone(),
            vec!["--cgroup".into(), format!("{cgroup}/missing")],
            "--cgroup",
        ),
        (
            "not-cgroup2",
            good.clone(),
            vec!["--cgroup".into(), sandbox_dir.clone()],
            "not a cgroup v2 directory",
        ),
        (
            "not-bpffs",
            good.clone(),
            vec!["--bpffs".into(), format!("{sandbox_dir}/pins")],
            "--bpffs /",
        ),
        (
            "bpffs-dotdot",
            good.clone(),
            vec!["--bpffs".into(), format!("/sys/fs/bpf/../../..{sandbox_dir}/pins")],
            "--bpffs /",
        ),
        (
            "netns-file",
            good.replace("netns: [", &format!("netns: [{sandbox_dir}/no-netns.yaml, ")),
            vec![],
            "is not a network namespace",
        ),
        (
            "zero-capacity",
            format!("capacity:\n  services: 0\n{good}"),
            vec![],
            "capacity.services: 0",
        ),
        (
            "too-many",
            format!("capacity:\n  services: 1\n{}", node.agent_config(&[echo.clone(), more])),
            vec![],
            "capacity.services: 2 services do not fit the kernel map of 1",
        ),
        (
            "bad-listen",
            good.replace("listen: 169.254.77.1:15001", "listen: 169.254.77.9:15001"),
            vec![],
            "listen: cannot listen on 169.254.77.9:15001",
        ),
    ];
    for (name, config, extra, needle) in cases {
        let mut args: Vec<String> = Vec::new();
        if !extra.iter().any(|a| a == "--cgroup") {
            args.extend(["--cgroup".into(), cgroup.clone()]);
        }
        if !extra.iter().any(|a| a == "--bpffs") {
            args.extend(["--bpffs".into(), pins.clone()]);
        }
        args.extend(extra);
        std::fs::write(format!("{sandbox_dir}/no-netns.yaml"), "a plain file").unwrap();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = fails(&node, name, &config, &args);
        let line = error_line(&log, needle);
        println!("{name}: {line}");
        assert!(!Path::new(&pins).exists(), "{name} left {pins} behind:\n{log}");
    }
}

#[test]
fn a_second_agent_for_a_served_cgroup_refuses_and_names_the_first() {
    let node = EchoNode::new(1).unwrap();
    let echo = node.service("echo", "10.96.0.10:7000", &["b1"]);
    let first = node.start_agent(std::slice::from_ref(&echo)).unwrap();
    // Another pin directory and other addresses: only the cgroup is shared.
    let other = node
        .agent_config(std::slice::from_ref(&echo))
        .replace("15001", "15002")
        .replace("127.0.0.1:15090", "127.0.0.1:15091");
    let other_pins = format!("{}-other", pins(&node));
    let cgroup = node.sandbox.cgroup().display().to_string();
    let log = fails(&node, "second", &other, &["--cgroup", &cgroup, "--bpffs", &other_pins]);
    let line = error_line(&log, "another sockeye agent serves it");
    assert!(line.contains(&format!("pid {}", first.proc().pid())), "{line}");
    assert!(line.contains(&format!("--bpffs {}", pins(&node))), "{line}");
    assert!(!Path::new(&other_pins).exists(), "{log}");
    assert_eq!(first.admin_get("/readyz").unwrap().0, 200);
}
