//! `trellis new` end to end: the new crate builds with `-D warnings`, passes
//! its own tests, runs, answers health over gRPC, and exits cleanly on
//! SIGTERM; `trellis add` wires more protos into it.

mod support;

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use support::{cargo, run, scaffold, target_dir, text};

#[tokio::test(flavor = "multi_thread")]
async fn a_new_service_builds_tests_runs_and_stops_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = scaffold(tmp.path(), "greeter");
    let _clean = CleanOnDrop(dir.clone());
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("version = \"=0.1.0\""), "the Trellis version is pinned:\n{manifest}");
    assert!(manifest.contains(&format!("path = \"{}/framework\"", support::workspace().display())));
    // A crate of its own is its workspace's root, where profiles count: the
    // framework's crates, from a path, are built in one go, not incrementally,
    // with line tables for debug info.
    for package in ["trellis", "trellis-build"] {
        let profile =
            format!("[profile.dev.package.{package}]\nincremental = false\ndebug = \"line-tables-only\"\n");
        assert!(manifest.contains(&profile), "no `{profile}` in:\n{manifest}");
    }

    // Every target (lib, bin, test, build script), with warnings as errors.
    // Checked from cargo's messages rather than with RUSTFLAGS, which would
    // rebuild every dependency instead of reusing what the workspace built.
    build_without_warnings(&dir, &["test", "--no-run"]);
    let out = cargo(&dir, &["fmt", "--check"]);
    assert!(out.status.success(), "the new crate is rustfmt-clean:\n{}", text(&out));
    let out = cargo(&dir, &["test", "--offline"]);
    let output = text(&out);
    assert!(out.status.success(), "cargo test failed:\n{output}");
    assert!(output.contains("test result: ok. 3 passed"), "the template's tests ran:\n{output}");

    // Run it, as a user would, on its own registry.
    let bin = target_dir().join("debug/greeter");
    let registry = format!("local://{}", tmp.path().join("registry").display());
    let mut child = tokio::process::Command::new(&bin)
        .args(["--listen", "127.0.0.1:0", "--log-format", "json", "--registry", &registry])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr: std::net::SocketAddr = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if event["message"] == "listening" {
                return event["addr"].as_str().unwrap().parse().unwrap();
            }
        }
        panic!("greeter exited before listening");
    })
    .await
    .expect("greeter listens within 20 s");
    let logs = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push(line);
        }
        seen
    });

    let channel = trellis::codegen::tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "greeter.v1.Greeter"] {
        let reply = health.check(HealthCheckRequest { service: service.to_owned() }).await.unwrap();
        assert_eq!(reply.into_inner().status(), ServingStatus::Serving, "{service:?}");
    }
    // The binary's own health subcommand, which the Dockerfile's HEALTHCHECK runs.
    let out = tokio::process::Command::new(&bin)
        .args(["health", "--addr", &addr.to_string()])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "greeter health: {}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("{addr}: the server is SERVING"));

    let pid = Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
    kill(pid, Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait()).await.expect("exits").unwrap();
    assert!(status.success(), "a clean exit on SIGTERM: {status}");
    let logs = logs.await.unwrap().join("\n");
    assert!(logs.contains("received SIGTERM") && logs.contains("\"stopped\""), "it drained:\n{logs}");

    // Nothing answers any more, and the health subcommand says so.
    let out = tokio::process::Command::new(&bin)
        .args(["health", "--addr", &addr.to_string(), "--timeout", "1"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // `trellis add proto` puts a new service where build.rs finds it.
    let out = run(&["add", "proto", "billing", "--path", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(dir.join("proto/billing/v1/billing.proto").is_file());
    assert!(text(&out).contains("BillingServer::new"), "it says how to serve it:\n{}", text(&out));
    build_without_warnings(&dir, &["build", "--lib"]);
    let generated = std::fs::read_dir(target_dir().join("debug/build"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("greeter-"))
        .filter_map(|e| std::fs::read_to_string(e.path().join("out/trellis_protos.rs")).ok())
        .any(|code| code.contains("pub mod billing"));
    assert!(generated, "the added proto was compiled into the crate");
}

/// Removes the new crate's artifacts from the shared target directory when
/// the test ends, so runs do not pile them up.
struct CleanOnDrop(std::path::PathBuf);

impl Drop for CleanOnDrop {
    fn drop(&mut self) {
        let _ = cargo(&self.0, &["clean", "--offline", "-p", "greeter"]);
    }
}

/// Runs `cargo ARGS` in `dir` and fails on any warning or error of the
/// crate there (`-D warnings`).
fn build_without_warnings(dir: &std::path::Path, args: &[&str]) {
    let mut args = args.to_vec();
    args.extend_from_slice(&["--offline", "--message-format", "json"]);
    let out = cargo(dir, &args);
    let mut problems = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let ours = message["package_id"].as_str().is_some_and(|id| id.contains(dir.to_str().unwrap()));
        let level = message["message"]["level"].as_str().unwrap_or("");
        if message["reason"] == "compiler-message" && ours && (level == "warning" || level == "error") {
            problems.push(message["message"]["rendered"].as_str().unwrap_or("").to_owned());
        }
    }
    assert!(problems.is_empty(), "cargo {args:?}: warnings are errors here:\n{}", problems.join("\n"));
    assert!(out.status.success(), "cargo {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn add_service_copies_a_proto_that_compiles_and_refuses_one_that_does_not() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = scaffold(tmp.path(), "greeter");
    let good = tmp.path().join("ledger.proto");
    std::fs::write(
        &good,
        "syntax = \"proto3\";\npackage acme.ledger.v1;\nservice Ledger { rpc Get(Q) returns (Q); }\nmessage Q {}\n",
    )
    .unwrap();
    let out = run(&["add", "service", good.to_str().unwrap(), "--path", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(dir.join("proto/acme/ledger/v1/ledger.proto").is_file());
    let manifest = std::fs::read_to_string(dir.join(".trellis/manifest.toml")).unwrap();
    assert!(manifest.contains("path = \"proto/acme/ledger/v1/ledger.proto\""), "it is recorded:\n{manifest}");

    let bad = tmp.path().join("broken.proto");
    std::fs::write(&bad, "syntax = \"proto3\";\npackage acme.broken.v1;\nmessage Q { Missing m = 1; }\n")
        .unwrap();
    let out = run(&["add", "service", bad.to_str().unwrap(), "--path", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let output = text(&out);
    assert!(
        output.contains("broken.proto:3:") && output.contains("Missing"),
        "file:line and the name:\n{output}"
    );
    assert!(!dir.join("proto/acme/broken").exists(), "nothing was copied");

    let out = run(&[
        "add",
        "service",
        tmp.path().join("nope.proto").to_str().unwrap(),
        "--path",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("cannot read"), "{}", text(&out));
}
