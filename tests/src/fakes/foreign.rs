//! Third-party registry clients, run as child processes: the scripts in
//! `tests/registry-clients/`, on `python3` (py-consul, py-eureka-client)
//! and `node` (eureka-js-client).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// How long a foreign client may take to register, look up or leave.
pub const FOREIGN_TIMEOUT: Duration = Duration::from_secs(30);

/// What to run to get the clients.
pub const INSTALL: &str = "python3 -m pip install -r tests/registry-clients/requirements.txt \
     and npm ci --prefix tests/registry-clients";

/// The path of script `name` in `tests/registry-clients`.
pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("registry-clients").join(name)
}

/// The command that runs script `name` (`.py` on python3, `.js` on node).
fn command(name: &str, args: &[String], env: &[(&str, &str)]) -> Command {
    let program = if name.ends_with(".js") { "node" } else { "python3" };
    let mut command = Command::new(program);
    command.arg(script(name)).args(args).envs(env.iter().copied()).kill_on_drop(true);
    command
}

/// Runs script `name` to its end and returns the JSON of its last line.
///
/// # Panics
///
/// If it cannot start, fails, or prints no JSON: with its output and how
/// to install the clients.
pub async fn run(name: &str, args: &[String], env: &[(&str, &str)]) -> serde_json::Value {
    let output = command(name, args, env).stdin(Stdio::null()).output();
    let output = tokio::time::timeout(FOREIGN_TIMEOUT, output)
        .await
        .unwrap_or_else(|_| panic!("{name} {args:?} did not finish within {FOREIGN_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}; install the clients: {INSTALL}"));
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "{name} {args:?} failed ({}); install the clients if missing: {INSTALL}\n{stderr}",
        output.status
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{name} printed no JSON ({e}):\n{stdout}\n{stderr}"))
}

/// A foreign client that registered an instance and keeps it alive until
/// [`leave`](Self::leave) (or until dropped, when it is killed).
#[derive(Debug)]
pub struct Registrant {
    name: String,
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Registrant {
    /// Starts script `name` in its `register` mode and waits until it says
    /// it registered.
    ///
    /// # Panics
    ///
    /// If it does not register in time: with its errors and how to install
    /// the clients.
    pub async fn start(name: &str, args: &[String], env: &[(&str, &str)]) -> Registrant {
        let mut child = command(name, args, env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {name}: {e}; install the clients: {INSTALL}"));
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let registered = tokio::time::timeout(FOREIGN_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.trim() == "registered" {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        if !registered {
            let _ = child.start_kill();
            let mut stderr = String::new();
            if let Some(mut err) = child.stderr.take() {
                let _ = tokio::time::timeout(Duration::from_secs(5), err.read_to_string(&mut stderr)).await;
            }
            panic!("{name} {args:?} did not register; install the clients if missing: {INSTALL}\n{stderr}");
        }
        Registrant { name: name.to_owned(), child, lines }
    }

    /// Closes its input, which makes it deregister, and waits until it did.
    ///
    /// # Panics
    ///
    /// If it does not say it deregistered, or fails.
    pub async fn leave(mut self) {
        drop(self.child.stdin.take());
        let said = tokio::time::timeout(FOREIGN_TIMEOUT, async {
            while let Ok(Some(line)) = self.lines.next_line().await {
                if line.trim() == "deregistered" {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        let status = tokio::time::timeout(FOREIGN_TIMEOUT, self.child.wait()).await;
        assert!(said, "{} did not deregister", self.name);
        assert!(matches!(status, Ok(Ok(s)) if s.success()), "{} ended with {status:?}", self.name);
    }
}
