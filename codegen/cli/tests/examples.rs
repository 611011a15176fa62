//! The order services in `examples/` have the shape `trellis new` writes,
//! so the template is exercised by the services the demo runs every day:
//! the files it owns are what it renders for them now, `trellis doctor`
//! finds nothing wrong, and their deployment files pass the independent
//! validators of `check_deploy.py` (as workspace members: no workflow of
//! their own, images built from the repository root).
//!
//! Needs python3 with `pip install -r codegen/cli/tests/requirements.txt`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{run, text, workspace};

/// Each order service: its crate, its proto package, its port.
const SERVICES: [(&str, &str, u16); 3] = [
    ("order-payment", "order.payment.v1", 50051),
    ("order-shipping", "order.shipping.v1", 50052),
    ("order-status", "order.status.v1", 50053),
];

/// Where the service's own settings start in `config.toml`: everything above
/// is the template's.
const OWN_SETTINGS: &str = "# This service's own settings";

fn example(name: &str) -> PathBuf {
    workspace().join("examples").join(name)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// What `trellis new` writes for `name` now.
fn rendered(parent: &Path, name: &str, package: &str, port: u16) -> PathBuf {
    let dir = parent.join(name);
    let port = port.to_string();
    let out = run(&["new", name, "--package", package, "--port", &port, "--path", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    dir
}

/// `text` with the ConfigMap's copy of config.toml left out.
fn without_config_map(text: &str) -> String {
    let start = text.find("  config.toml: |\n").expect("a ConfigMap with config.toml");
    let end = text[start..].find("\n---").map_or(text.len(), |i| start + i);
    format!("{}{}", &text[..start], &text[end..])
}

#[test]
fn the_order_services_have_the_files_the_template_writes() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, package, port) in SERVICES {
        let ours = example(name);
        let template = rendered(tmp.path(), name, package, port);
        for (path, from) in [
            ("src/main.rs", "src/main.rs"),
            ("build.rs", "build.rs"),
            ("deploy/nginx.conf", "deploy/nginx.conf"),
            // Built from the repository root: the ignore file beside the Dockerfile.
            ("Dockerfile.dockerignore", ".dockerignore"),
        ] {
            assert_eq!(read(&ours.join(path)), read(&template.join(from)), "{name}/{path}: render it again");
        }
        let (ours_k8s, template_k8s) =
            (read(&ours.join("deploy/kubernetes.yaml")), read(&template.join("deploy/kubernetes.yaml")));
        assert_eq!(
            without_config_map(&ours_k8s),
            without_config_map(&template_k8s),
            "{name}: kubernetes.yaml"
        );
        let (ours_config, template_config) =
            (read(&ours.join("config.toml")), read(&template.join("config.toml")));
        let shared = |config: &str| config.split(OWN_SETTINGS).next().unwrap_or_default().to_owned();
        assert_eq!(
            shared(&ours_config),
            shared(&template_config),
            "{name}/config.toml above its own settings"
        );
        // The sources: the App in lib.rs, the binary in main.rs, tests on trellis::testing.
        let lib = read(&ours.join("src/lib.rs"));
        for item in [
            "pub mod proto",
            "pub struct Settings",
            "pub fn main<I, T>(args: I) -> ExitCode",
            "trellis::App::new",
        ] {
            assert!(lib.contains(item), "{name}/src/lib.rs has {item}");
        }
        assert!(read(&ours.join("tests/service.rs")).contains("trellis::testing"), "{name}/tests/service.rs");
    }
}

#[test]
fn the_order_services_pass_doctor_and_the_deployment_checks() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/check_deploy.py");
    for (name, _, port) in SERVICES {
        let dir = example(name);
        let out = run(&["doctor", dir.to_str().unwrap()]);
        let output = text(&out);
        // The listen check needs the port free; anything else must be clean.
        let busy = output.contains(&format!("0.0.0.0:{port} is in use"));
        assert!(out.status.success() || busy, "{name}: {output}");
        assert!(output.contains("ok       Dockerfile") && output.contains("ok       protos"), "{output}");

        let out = Command::new("python3").arg(&script).arg(&dir).arg("--member").output().expect(
            "python3 runs the deployment checks: install python3 and `pip install -r codegen/cli/tests/requirements.txt`",
        );
        let output = text(&out);
        assert!(out.status.success(), "{name}: {output}");
        assert!(output.contains("all deployment checks passed"), "{output}");
    }
}
