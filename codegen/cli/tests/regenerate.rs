//! Refusals, safe regeneration, and `trellis doctor` on broken crates. No
//! crate is compiled here: these are about what trellis writes and says.

mod support;

use sha2::{Digest, Sha256};

use support::{run, scaffold, text};

#[test]
fn names_that_cannot_be_a_crate_and_a_proto_package_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, says) in [
        ("Greeter", "perhaps `greeter`"),
        ("my.service", "contains `.`"),
        ("2fast", "does not start with a lowercase letter"),
        ("type", "Rust keyword"),
        ("trellis", "reserved"),
        ("a--b", "doubled separator"),
    ] {
        let out = run(&["new", name, "--path", tmp.path().join("x").to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{name}: {}", text(&out));
        let output = text(&out);
        assert!(output.contains(says), "{name}: {output}");
        assert!(
            output.contains("lowercase") || output.contains("choose another"),
            "it says what is allowed: {output}"
        );
    }
    let out =
        run(&["new", "greeter", "--package", "greeter", "--path", tmp.path().join("x").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("has no version: end it with `.v1`"), "{}", text(&out));
    assert!(!tmp.path().join("x").exists(), "nothing was written");

    let out = run(&[
        "new",
        "greeter",
        "--path",
        tmp.path().join("x").to_str().unwrap(),
        "--trellis-path",
        "/nonexistent",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("is not a Trellis checkout"), "{}", text(&out));
}

#[test]
fn a_folder_with_files_of_its_own_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("notes.txt"), "mine").unwrap();
    let out = run(&["new", "greeter", "--path", tmp.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let output = text(&out);
    assert!(output.contains("already has files of its own (notes.txt)"), "{output}");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1, "nothing was added");

    // An empty folder is fine.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert!(run(&["new", "greeter", "--path", empty.to_str().unwrap()]).status.success());
    // Another service cannot be made over it.
    let out = run(&["new", "billing", "--path", empty.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("holds the service `greeter`, not `billing`"), "{}", text(&out));
}

fn sha256(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    format!("sha256:{}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

#[test]
fn upgrade_updates_untouched_files_and_never_overwrites_edited_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = scaffold(tmp.path(), "greeter");
    let dir_arg = dir.to_str().unwrap();
    let manifest_path = dir.join(".trellis/manifest.toml");

    // Right after `new`, nothing to do.
    let out = run(&["upgrade", dir_arg]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("update "), "{}", text(&out));

    // README.md as an older trellis wrote it (recorded with that content's
    // hash), untouched since: upgrade replaces it.
    let old_readme = "# greeter\n\nAn older template.\n";
    std::fs::write(dir.join("README.md"), old_readme).unwrap();
    let manifest = std::fs::read_to_string(&manifest_path).unwrap();
    let current = sha256(&std::fs::read_to_string(dir.join("Dockerfile")).unwrap());
    let readme_hash = manifest
        .split("[[file]]")
        .find(|block| block.contains("path = \"README.md\""))
        .and_then(|block| block.lines().find_map(|l| l.strip_prefix("hash = ")))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    std::fs::write(&manifest_path, manifest.replace(&readme_hash, &sha256(old_readme))).unwrap();

    // src/service.rs edited by its owner.
    let service = dir.join("src/service.rs");
    let edited = std::fs::read_to_string(&service).unwrap().replace("Hello", "Howdy");
    std::fs::write(&service, &edited).unwrap();
    // A deleted file comes back.
    std::fs::remove_file(dir.join("compose.yaml")).unwrap();

    // A dry run says what it would do and changes nothing.
    let out = run(&["upgrade", dir_arg, "--dry-run"]);
    let output = text(&out);
    assert_eq!(out.status.code(), Some(1), "{output}");
    assert!(output.contains("would update  README.md"), "{output}");
    assert!(output.contains("would create  compose.yaml"), "{output}");
    assert_eq!(std::fs::read_to_string(dir.join("README.md")).unwrap(), old_readme);
    assert!(!dir.join("compose.yaml").exists());

    let out = run(&["upgrade", dir_arg]);
    let output = text(&out);
    assert_eq!(out.status.code(), Some(1), "an edited file that differs is reported: {output}");
    assert!(output.contains("update  README.md"), "{output}");
    assert!(output.contains("create  compose.yaml"), "{output}");
    assert!(output.contains("left alone: src/service.rs was changed"), "{output}");
    assert!(
        output.contains("src/service.rs (yours)") && output.contains("src/service.rs (template)"),
        "{output}"
    );
    assert!(output.contains("-") && output.contains("Howdy"), "the difference is printed: {output}");
    assert_eq!(std::fs::read_to_string(&service).unwrap(), edited, "the edited file is untouched");
    assert!(std::fs::read_to_string(dir.join("README.md")).unwrap().contains("trellis new"));
    assert!(dir.join("compose.yaml").is_file());
    assert_eq!(current, sha256(&std::fs::read_to_string(dir.join("Dockerfile")).unwrap()));

    // A rerun of `trellis new` on the crate is an upgrade: it still refuses.
    let out = run(&["new", "greeter", "--path", dir_arg]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&service).unwrap(), edited);

    // Undo the edit, and the crate is clean again.
    std::fs::write(&service, edited.replace("Howdy", "Hello")).unwrap();
    let out = run(&["upgrade", dir_arg]);
    assert!(out.status.success(), "{}", text(&out));

    // A config change flows into the deployment files derived from it (the
    // edited config itself is left alone, with its difference from the template).
    let config = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    std::fs::write(
        dir.join("config.toml"),
        config.replace("drain_timeout = \"10s\"", "drain_timeout = \"40s\""),
    )
    .unwrap();
    let out = run(&["upgrade", dir_arg]);
    let output = text(&out);
    assert!(output.contains("update  deploy/kubernetes.yaml"), "{output}");
    assert!(
        output.contains("left alone: config.toml") && output.contains("+drain_timeout = \"10s\""),
        "{output}"
    );
    let k8s = std::fs::read_to_string(dir.join("deploy/kubernetes.yaml")).unwrap();
    assert!(k8s.contains("terminationGracePeriodSeconds: 46"), "1s + 40s + 5s margin:\n{k8s}");
    assert!(k8s.contains("drain_timeout = \"40s\""), "the ConfigMap follows");

    // A proto added with `trellis add proto` is re-rendered as it was made.
    let out = run(&["add", "proto", "billing", "--path", dir_arg]);
    assert!(out.status.success(), "{}", text(&out));
    let out = run(&["upgrade", dir_arg]);
    assert!(!text(&out).contains("billing.proto"), "the added proto is up to date: {}", text(&out));
    let out = run(&["add", "proto", "billing", "--path", dir_arg]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("billing.proto already exists"), "{}", text(&out));

    let out = run(&["upgrade", tmp.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("was not made by trellis new"), "{}", text(&out));
}

#[test]
fn a_file_the_template_no_longer_writes_is_kept_as_the_users() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = scaffold(tmp.path(), "greeter");
    // src/health.rs, as the template wrote it before every binary had `health`.
    let old = "//! `greeter health`.\n";
    std::fs::write(dir.join("src/health.rs"), old).unwrap();
    let manifest_path = dir.join(".trellis/manifest.toml");
    let mut manifest = std::fs::read_to_string(&manifest_path).unwrap();
    manifest.push_str(&format!(
        "\n[[file]]\npath = \"src/health.rs\"\ntemplate = \"src/health_rs\"\nhash = \"{}\"\n",
        sha256(old)
    ));
    std::fs::write(&manifest_path, manifest).unwrap();

    let out = run(&["upgrade", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("keep    src/health.rs (no longer written by trellis"), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(dir.join("src/health.rs")).unwrap(), old, "left as it was");
    let manifest = std::fs::read_to_string(&manifest_path).unwrap();
    assert!(!manifest.contains("src/health.rs"), "no longer recorded: {manifest}");
    let out = run(&["upgrade", dir.to_str().unwrap()]);
    assert!(out.status.success() && !text(&out).contains("keep"), "{}", text(&out));
}

#[test]
fn doctor_passes_a_new_crate_and_names_each_problem_of_a_broken_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = scaffold(tmp.path(), "greeter");
    let dir_arg = dir.to_str().unwrap();
    let out = run(&["doctor", dir_arg]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("no problems"));

    // Break it in every way doctor looks at.
    let proto = dir.join("proto/greeter/v1/greeter.proto");
    let text_of = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
    std::fs::write(
        &proto,
        text_of(&proto).replace(
            "option (trellis.method).timeout = \"10s\";",
            "option (trellis.method).timeout = \"soon\";",
        ),
    )
    .unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        text_of(&config)
            .replace("listen = \"0.0.0.0:50051\"", &format!("listen = \"{busy_addr}\""))
            .replace("drain_timeout = \"10s\"", "drain_timout = \"10s\"\ndrain_timeout = \"60s\""),
    )
    .unwrap();
    let k8s = dir.join("deploy/kubernetes.yaml");
    std::fs::write(
        &k8s,
        text_of(&k8s).replace("service: \"greeter.v1.Greeter\"", "service: \"greeter.v1.Greter\""),
    )
    .unwrap();

    let out = run(&["doctor", dir_arg]);
    let output = text(&out);
    assert_eq!(out.status.code(), Some(1), "{output}");
    for expected in [
        // The proto's policy.
        "greeter.proto:",
        "HelloStream",
        // The misspelt key, with the right one.
        "`shutdown.drain_timout` (from file",
        "unknown field `drain_timout`; did you mean `drain_timeout`?",
        // The busy port.
        &format!("cannot listen on {busy_addr}"),
        "fix: stop what listens there",
        // Deployment files that no longer match the config.
        &format!("EXPOSE 50051 but config.toml listens on port {}", busy_addr.port()),
        "terminationGracePeriodSeconds is 16, but shutdown.propagation_delay + shutdown.drain_timeout take 61s",
        "fix: set terminationGracePeriodSeconds: 66",
        &format!("containerPort is Some(50051), but config.toml listens on {}", busy_addr.port()),
        "the ConfigMap's config.toml differs from config.toml",
    ] {
        assert!(output.contains(expected), "doctor says {expected:?}:\n{output}");
    }
    // The proto error stops the service check, so the readiness name is checked once it compiles.
    std::fs::write(&proto, text_of(&proto).replace("\"soon\"", "\"10s\"")).unwrap();
    let output = text(&run(&["doctor", dir_arg]));
    assert!(
        output
            .contains("readinessProbe asks for service `greeter.v1.Greter`, which the protos do not define"),
        "{output}"
    );
    assert!(output.contains("fix: set readinessProbe.grpc.service: \"greeter.v1.Greeter\""), "{output}");

    // A registry that cannot be reached.
    std::fs::write(
        &config,
        text_of(&config).replace("registry = \"local://\"", "registry = \"local:///dev/null/registry\""),
    )
    .unwrap();
    let output = text(&run(&["doctor", dir_arg]));
    assert!(output.contains("local:///dev/null/registry cannot be reached"), "{output}");
    drop(busy);

    let out = run(&["doctor", tmp.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("is not a crate"), "{}", text(&out));
}
