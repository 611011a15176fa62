//! The demo as a user runs it: `order-demo` starts the three services as
//! real processes and places orders through them, over gRPC and over REST,
//! and exits 0 only when every order succeeded.

use std::process::Command;

fn run_demo(args: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(env!("CARGO_BIN_EXE_order-demo"))
        .args(["--orders", "40", "--concurrency", "4", "--data-dir"])
        .arg(dir.path())
        .args(args)
        .output()
        .expect("the demo starts");
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the demo failed ({}):\n{text}", output.status);
    text
}

fn assert_all_succeeded(text: &str) {
    let line =
        |name: &str| text.lines().find(|l| l.trim_start().starts_with(name)).unwrap_or_default().to_owned();
    assert!(line("succeeded").ends_with(" 40"), "{text}");
    assert!(line("failed").ends_with(" 0"), "{text}");
    let (_, per_instance) = text.split_once("calls per instance").unwrap_or_else(|| panic!("{text}"));
    for service in ["order-payment-1", "order-payment-2", "order-shipping-1", "order-status-1"] {
        let calls: u64 = per_instance
            .lines()
            .find(|l| l.trim_start().starts_with(service))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(calls > 0, "{service} received calls: {text}");
    }
}

#[test]
fn orders_over_grpc_all_succeed() {
    let text = run_demo(&[]);
    assert_all_succeeded(&text);
    assert!(text.contains("client stack"), "{text}");
}

#[test]
fn orders_over_rest_all_succeed() {
    let text = run_demo(&["--protocol", "rest"]);
    assert_all_succeeded(&text);
    assert!(text.contains("REST/JSON"), "{text}");
}
