//! The shared command line, tried on a real service binary: help, version,
//! configuration layering (defaults < file < environment < flags) and the
//! error for each kind of bad input.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_order-payment");

fn command(dir: &tempfile::TempDir) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("TRELLIS_PAYMENT__DATABASE", dir.path().join("p.sqlite3"))
        .env("TRELLIS_LISTEN", "127.0.0.1:0");
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run order-payment")
}

/// Starts the service, returns its first log line, and stops it.
fn first_log_line(cmd: &mut Command) -> String {
    let mut child = cmd.stdin(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start");
    let mut line = String::new();
    let stderr = child.stderr.take().expect("stderr");
    BufReader::new(stderr).read_line(&mut line).expect("read a log line");
    child.kill().expect("kill");
    child.wait().expect("wait");
    line
}

fn config_file(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join("trellis.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

#[test]
fn help_lists_the_shared_flags() {
    let out = run(Command::new(BIN).arg("--help"));
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen <ADDR>",
        "--config <FILE>",
        "--registry <URL>",
        "--log-format <FORMAT>",
        "--set <KEY=VALUE>",
        "--version",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    assert!(help.contains("Takes payments for orders"));
}

#[test]
fn version_prints_name_and_version() {
    let out = run(Command::new(BIN).arg("--version"));
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("order-payment {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn layers_override_in_order_file_env_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = config_file(&dir, "[log]\nformat = \"json\"\n");

    let line = first_log_line(command(&dir).arg("--config").arg(&file));
    assert!(line.starts_with('{'), "the file asks for JSON: {line}");
    assert!(line.contains("\"message\":\"listening\"") && line.contains("127.0.0.1:"), "{line}");

    let line = first_log_line(command(&dir).arg("--config").arg(&file).env("TRELLIS_LOG__FORMAT", "text"));
    assert!(!line.starts_with('{') && line.contains("listening"), "the environment asks for text: {line}");

    let line = first_log_line(
        command(&dir)
            .arg("--config")
            .arg(&file)
            .env("TRELLIS_LOG__FORMAT", "text")
            .args(["--log-format", "json"]),
    );
    assert!(line.starts_with('{'), "the flag asks for JSON: {line}");

    let line =
        first_log_line(command(&dir).env("TRELLIS_LOG__FORMAT", "text").args(["--set", "log.format=json"]));
    assert!(line.starts_with('{'), "--set beats the environment: {line}");
}

/// Runs with a bad input; checks exit code 2 and that stderr has every needle.
fn rejects(cmd: &mut Command, needles: &[&str]) {
    let out = run(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} missing from: {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_values_name_the_key_the_source_and_what_is_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = config_file(&dir, "[shutdown]\ndrain_timeout = \"soon\"\n");
    rejects(
        command(&dir).arg("--config").arg(&file),
        &["`shutdown.drain_timeout`", "soon", "500ms, 10s or 1m", "trellis.toml"],
    );
    rejects(
        command(&dir).env("TRELLIS_LOG__FORMAT", "xml"),
        &["`log.format`", "xml", "`text`", "`json`", "TRELLIS_LOG__FORMAT"],
    );
    rejects(command(&dir).args(["--log-format", "xml"]), &["--log-format", "xml", "text, json"]);
    rejects(command(&dir).args(["--listen", "nowhere"]), &["`listen`", "nowhere", "HOST:PORT"]);
    rejects(command(&dir).args(["--set", "faults.delay=fast"]), &["`faults.delay`", "fast"]);
    rejects(command(&dir).args(["--set", "novalue"]), &["--set `novalue`", "KEY=VALUE"]);
    rejects(command(&dir).args(["--set", "log.level=info,[="]), &["`log.level`"]);
    rejects(command(&dir).args(["--set", "shutdown.drain_timout=5s"]), &["drain_timout", "unknown field"]);
    rejects(command(&dir).args(["--set", "payment.databse=x"]), &["databse", "unknown field", "database"]);
    let missing = dir.path().join("missing.toml");
    rejects(command(&dir).arg("--config").arg(&missing), &["missing.toml", "does not exist"]);
    let broken = config_file(&dir, "listen = [\n");
    rejects(command(&dir).arg("--config").arg(&broken), &["trellis.toml"]);
}

#[test]
fn misspelt_keys_and_sections_name_the_source_and_the_nearest_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    rejects(
        command(&dir).env("TRELLIS_REGISTY", "local://"),
        &["`registy` (from environment variable TRELLIS_REGISTY): unknown key; did you mean `registry`?"],
    );
    let file = config_file(&dir, "[shutdwn]\ndrain_timeout = \"30s\"\n");
    rejects(
        command(&dir).arg("--config").arg(&file),
        &[&format!("`shutdwn` (from file `{}`): unknown section; did you mean `shutdown`?", file.display())],
    );
    // The service's own section is among the known ones.
    rejects(
        command(&dir).args(["--set", "nosuch.key=1"]),
        &["`nosuch` (from the command line): unknown section; expected one of ", "`payment`", "`shutdown`"],
    );
    rejects(
        command(&dir).env("TRELLIS_PAYMNT__DATABASE", "x.sqlite3"),
        &[
            "`paymnt` (from environment variable TRELLIS_PAYMNT__DATABASE): unknown section; did you mean `payment`?",
        ],
    );
    rejects(
        command(&dir).args(["--set", "lisen=127.0.0.1:0"]),
        &["`lisen` (from the command line)", "`listen`"],
    );
}

#[test]
fn the_service_section_is_read_from_file_env_and_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let from_file = dir.path().join("file.sqlite3");
    let file = config_file(&dir, &format!("[payment]\ndatabase = {:?}\n", from_file.display().to_string()));
    let from_env = dir.path().join("env.sqlite3");
    let from_flag = dir.path().join("flag.sqlite3");
    let mut with_file = command(&dir);
    with_file.env_remove("TRELLIS_PAYMENT__DATABASE").arg("--config").arg(&file);
    let mut with_env = command(&dir);
    with_env.env("TRELLIS_PAYMENT__DATABASE", &from_env);
    let mut with_flag = command(&dir);
    with_flag.arg("--set").arg(format!("payment.database={}", from_flag.display()));
    for (mut cmd, database) in [(with_file, &from_file), (with_env, &from_env), (with_flag, &from_flag)] {
        let line = first_log_line(&mut cmd);
        assert!(line.contains("listening"), "{line}");
        assert!(database.is_file(), "{} was not opened; first line: {line}", database.display());
    }
}

#[test]
fn bad_registry_urls_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    rejects(
        command(&dir).args(["--registry", "zookeeper://x:1"]),
        &["zookeeper://x:1", "unknown registry scheme", "static://"],
    );
    rejects(command(&dir).args(["--registry", "localhost:2379"]), &["localhost:2379", "scheme"]);
}

#[test]
fn an_address_in_use_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = run(command(&dir).args(["--listen", &addr]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("cannot listen on {addr}")) && stderr.contains("--listen"), "{stderr}");
}

#[test]
fn an_unwritable_database_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("plain-file");
    std::fs::write(&file, "not a directory").expect("write");
    let db = file.join("p.sqlite3");
    let out = run(command(&dir).env("TRELLIS_PAYMENT__DATABASE", &db));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&db.display().to_string()), "{stderr}");
}

#[test]
fn the_health_subcommand_asks_the_running_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
    let listen = addr.to_string();
    let health = |args: &[&str]| {
        let out = run(command(&dir).args(["--listen", &listen, "health"]).args(args));
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code(), text)
    };
    let (code, text) = health(&["--timeout", "1"]);
    assert_eq!(code, Some(1), "nothing listens yet: {text}");
    assert!(text.contains(&listen) && text.contains("is the server running there?"), "{text}");

    let mut server = command(&dir).args(["--listen", &listen]).stdin(Stdio::null()).spawn().expect("start");
    let started = std::time::Instant::now();
    // The configured listen address is asked: no --addr needed.
    while health(&[]).0 != Some(0) {
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "the server turns SERVING");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (code, text) = health(&["--service", "order.payment.v1.OrderPayment"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("order.payment.v1.OrderPayment is SERVING"), "{text}");
    let (code, text) = health(&["--service", "no.such.v1.Service"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("SERVICE_UNKNOWN"), "{text}");
    let (code, text) = health(&["--addr", "not an address"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("HOST:PORT"), "{text}");
    server.kill().expect("kill");
    server.wait().expect("wait");

    // With port 0 configured there is nothing to ask: it says what to pass.
    let out = run(command(&dir).arg("health"));
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("--addr HOST:PORT"), "{text}");
}
