//! The command line: `--help` tells the truth and bad input gets a clear error.

use std::process::Command;

fn sockeye(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sockeye")).args(args).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn help_lists_the_commands_and_flags_that_exist() {
    let (ok, text) = sockeye(&["--help"]);
    assert!(ok, "{text}");
    assert!(text.contains("run"), "{text}");
    let (ok, text) = sockeye(&["run", "--help"]);
    assert!(ok, "{text}");
    for flag in ["--config", "--cgroup", "--bpffs", "--workers", "--log-level", "--log-format"] {
        assert!(text.contains(flag), "{flag} missing from:\n{text}");
    }
}

#[test]
fn a_worker_count_out_of_range_is_refused() {
    for count in ["0", "1025", "many"] {
        let (ok, text) = sockeye(&["run", "--config", "/dev/null", "--workers", count]);
        assert!(!ok);
        assert!(text.contains("--workers"), "{count}: {text}");
    }
}

#[test]
fn a_missing_or_broken_config_is_a_clear_error() {
    let (ok, text) = sockeye(&["run", "--config", "/nonexistent/sockeye.yaml"]);
    assert!(!ok);
    assert!(text.contains("cannot read config file /nonexistent/sockeye.yaml"), "{text}");

    let path = std::env::temp_dir().join(format!("sockeye-cli-{}.yaml", std::process::id()));
    std::fs::write(&path, "services:\n- name: a\n  vip: 10.96.0.1:80\n  endpoints: [x]\n").unwrap();
    let (ok, text) = sockeye(&["run", "--config", path.to_str().unwrap()]);
    std::fs::remove_file(&path).unwrap();
    assert!(!ok);
    assert!(text.contains("is not valid") && text.contains("services[0]"), "{text}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let (ok, text) =
        sockeye(&["run", "--log-format", "json", "--config", "/nonexistent/sockeye.yaml"]);
    assert!(!ok);
    let line = text.lines().find(|l| l.contains("cannot read config file")).expect("logged");
    let object: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
    assert_eq!(object["level"], "ERROR", "{line}");
}

#[test]
fn the_example_config_is_valid_and_states_the_defaults() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/static-config.example.yaml");
    let config = sockeye::config::Config::load(&path).unwrap();
    let service = &config.services[0];
    assert_eq!(
        service.policy(),
        sockeye::config::Policy::default(),
        "the example shows the defaults"
    );
}

#[test]
fn version_says_sockeye_and_check_validates_without_running() {
    let (ok, text) = sockeye(&["--version"]);
    assert!(ok && text.starts_with("sockeye "), "{text}");

    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/static-config.example.yaml");
    let (ok, text) = sockeye(&["check", "--config", example.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(text.contains("valid."), "{text}");

    let path = std::env::temp_dir().join(format!("sockeye-check-{}.yaml", std::process::id()));
    let too_many = "capacity:\n  services: 1\nservices:\n- name: a\n  vip: 10.96.0.1:80\n- name: b\n  vip: 10.96.0.2:80\n";
    std::fs::write(&path, too_many).unwrap();
    let (ok, text) = sockeye(&["check", "--config", path.to_str().unwrap()]);
    std::fs::remove_file(&path).unwrap();
    assert!(!ok);
    assert!(
        text.contains("capacity.services: 2 services do not fit the kernel map of 1"),
        "{text}"
    );
}

#[test]
fn status_without_an_agent_says_what_to_check() {
    let (ok, text) = sockeye(&["status", "--admin", "127.0.0.1:1"]);
    assert!(!ok);
    assert!(text.contains("no agent answers at 127.0.0.1:1"), "{text}");
}
