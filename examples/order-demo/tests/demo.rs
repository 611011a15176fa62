//! The demo as a user runs it: real processes on the embedded registry, with
//! and without instances being killed under it.

use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_order-demo");

fn run(args: &[&str]) -> (bool, String) {
    let output = Command::new(BIN).args(args).stdin(Stdio::null()).output().expect("run order-demo");
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

#[test]
fn orders_flow_through_every_instance() {
    let (ok, out) = run(&["--orders", "200", "--concurrency", "8"]);
    assert!(ok, "{out}");
    assert!(out.contains("succeeded      200") && out.contains("failed         0"), "{out}");
    for instance in
        ["order-payment-1", "order-payment-2", "order-shipping-1", "order-shipping-2", "order-status-1"]
    {
        assert!(out.contains(&format!("  {instance:<18} stopped")), "{instance} did not stop cleanly: {out}");
    }
    assert!(out.contains("calls per instance"), "{out}");
}

#[test]
fn chaos_kills_and_restarts_instances_without_failing_an_order() {
    let (ok, out) = run(&["--orders", "700", "--concurrency", "8", "--chaos"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("chaos: killed") && out.contains("(SIGKILL), restarted at"),
        "no instance was killed: {out}"
    );
    assert!(out.contains("succeeded      700") && out.contains("failed         0"), "{out}");
}

#[test]
fn bad_arguments_are_rejected_with_usage() {
    let (ok, out) = run(&["--instances", "0"]);
    assert!(!ok);
    assert!(out.contains("--instances") && out.contains("1..=8"), "{out}");
}

#[test]
fn a_data_dir_that_does_not_exist_yet_is_created() {
    let parent = tempfile::tempdir().expect("tempdir");
    let dir = parent.path().join("new").join("demo");
    let (ok, out) = run(&["--orders", "20", "--instances", "1", "--data-dir", dir.to_str().expect("utf-8")]);
    assert!(ok, "{out}");
    assert!(out.contains("succeeded      20"), "{out}");
    assert!(dir.join("payments.sqlite3").is_file() && dir.join("order-payment-1.log").is_file(), "{out}");
}
