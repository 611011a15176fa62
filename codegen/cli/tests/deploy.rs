//! The deployment files of a new crate, checked by parsers that owe nothing
//! to trellis (`check_deploy.py`: BuildKit's Dockerfile parser, the official
//! Kubernetes models, YAML), and its Nginx file by a real `nginx -t`.
//!
//! Needs python3 with `pip install -r codegen/cli/tests/requirements.txt`,
//! and nginx (Debian `nginx-light`).

mod support;

use std::path::Path;
use std::process::Command;

use support::{run, scaffold, text};

fn check_deploy(dir: &Path) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/check_deploy.py");
    let out = Command::new("python3").arg(script).arg(dir).output().expect(
        "python3 runs the deployment checks: install python3 and `pip install -r codegen/cli/tests/requirements.txt`",
    );
    let output = text(&out);
    assert!(
        !output.contains("install with: pip"),
        "the checks' Python packages are missing: pip install -r codegen/cli/tests/requirements.txt\n{output}"
    );
    (out.status.success(), output)
}

#[test]
fn the_deployment_files_pass_independent_validators_and_follow_the_config() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = scaffold(tmp.path(), "greeter");
    let (ok, output) = check_deploy(&dir);
    assert!(ok, "{output}");
    assert!(output.contains("ok    kubernetes: Deployment matches the V1Deployment schema"), "{output}");
    assert!(
        output.contains("terminationGracePeriodSeconds 16 > propagation_delay + drain_timeout = 11.0s"),
        "{output}"
    );

    // Another port and a longer drain: the files follow the config.
    let tmp2 = tempfile::tempdir().unwrap();
    let other = tmp2.path().join("billing");
    let out = run(&[
        "new",
        "billing",
        "--path",
        other.to_str().unwrap(),
        "--port",
        "7000",
        "--package",
        "acme.billing.v2",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let config = other.join("config.toml");
    let edited = std::fs::read_to_string(&config)
        .unwrap()
        .replace("drain_timeout = \"10s\"", "drain_timeout = \"1m30s\"");
    std::fs::write(&config, edited).unwrap();
    run(&["upgrade", other.to_str().unwrap()]);
    let (ok, output) = check_deploy(&other);
    assert!(ok, "{output}");
    for expected in [
        "EXPOSE 7000",
        "containerPort 7000",
        "terminationGracePeriodSeconds 96 > propagation_delay + drain_timeout = 91.0s",
        "readiness asks for the service 'acme.billing.v2.Billing'",
        "the Service is named for dns://{service} (acme-billing-v2-billing)",
    ] {
        assert!(output.contains(expected), "{expected}:\n{output}");
    }

    // The validators catch what they should: a misspelt field, a grace
    // period shorter than the drain, a root user.
    let k8s = dir.join("deploy/kubernetes.yaml");
    let good = std::fs::read_to_string(&k8s).unwrap();
    std::fs::write(&k8s, good.replace("periodSeconds: 5", "periodSecond: 5")).unwrap();
    let (ok, output) = check_deploy(&dir);
    assert!(!ok && output.contains("readinessProbe.periodSecond: not a field of V1Probe"), "{output}");
    std::fs::write(
        &k8s,
        good.replace("terminationGracePeriodSeconds: 16", "terminationGracePeriodSeconds: 5"),
    )
    .unwrap();
    let (ok, output) = check_deploy(&dir);
    assert!(!ok && output.contains("FAIL  kubernetes: terminationGracePeriodSeconds 5"), "{output}");
    std::fs::write(&k8s, good).unwrap();
    let dockerfile = dir.join("Dockerfile");
    let good = std::fs::read_to_string(&dockerfile).unwrap();
    std::fs::write(&dockerfile, good.replace("USER 10001:10001", "USER root")).unwrap();
    let (ok, output) = check_deploy(&dir);
    assert!(!ok && output.contains("FAIL  Dockerfile: runs as non-root"), "{output}");
}

#[test]
fn the_static_nginx_file_is_valid_nginx() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = scaffold(tmp.path(), "greeter");
    let snippet = std::fs::read_to_string(dir.join("deploy/nginx.conf")).unwrap();
    assert!(snippet.contains("server 127.0.0.1:50051 max_fails=1"), "{snippet}");
    assert!(snippet.contains("location ^~ /greeter.v1.Greeter/"), "{snippet}");
    let prefix = tmp.path().join("nginx");
    std::fs::create_dir_all(prefix.join("logs")).unwrap();
    let conf = format!(
        "pid nginx.pid;\nerror_log stderr;\nevents {{}}\nhttp {{\n    access_log off;\n    include {};\n}}\n",
        dir.join("deploy/nginx.conf").display()
    );
    std::fs::write(prefix.join("nginx.conf"), conf).unwrap();
    let out = Command::new("/usr/sbin/nginx")
        .args(["-t", "-q", "-p", prefix.to_str().unwrap(), "-c", "nginx.conf", "-e", "stderr"])
        .output()
        .expect("nginx is installed (Debian: nginx-light)");
    assert!(out.status.success(), "nginx -t: {}", text(&out));
}
