//! A broken proto fails the build with `file:line:column: message`, and
//! `trellis_build::compile` exits with that message rather than a panic.

use std::path::Path;
use std::process::Command;

/// Writes `files` under a temp include dir and compiles the first one.
fn compile(files: &[(&str, &str)]) -> Result<(), trellis_build::Error> {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    for (name, text) in files {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, text).expect("write proto");
    }
    trellis_build::configure()
        .out_dir(root.join("out"))
        .emit_rerun_if_changed(false)
        .compile(&[root.join(files[0].0)], &[root])
}

fn error_of(files: &[(&str, &str)]) -> trellis_build::Error {
    compile(files).expect_err("the proto is broken")
}

#[test]
fn syntax_error_names_file_line_and_column() {
    let err = error_of(&[(
        "bad/v1/bad.proto",
        "syntax = \"proto3\";\npackage bad.v1;\n\nmessage A {\n  string name = 1\n}\n",
    )]);
    let text = err.to_string();
    assert_eq!(err.line(), Some(6), "{text}");
    assert!(err.file().is_some_and(|f| f.ends_with("bad/v1/bad.proto")), "{text}");
    assert!(text.contains("bad/v1/bad.proto:6:1: "), "{text}");
    assert!(text.contains("expected ';'"), "{text}");
}

#[test]
fn unknown_type_names_the_type_and_its_line() {
    let err = error_of(&[(
        "shop/v1/shop.proto",
        "syntax = \"proto3\";\npackage shop.v1;\n\nmessage Order {\n  string id = 1;\n  Money total = 2;\n}\n",
    )]);
    let text = err.to_string();
    assert!(text.contains("shop/v1/shop.proto:6:3: "), "{text}");
    assert!(text.contains("Money"), "{text}");
}

#[test]
fn missing_import_names_the_import_and_how_to_fix_it() {
    let err = error_of(&[(
        "app/v1/app.proto",
        "syntax = \"proto3\";\npackage app.v1;\n\nimport \"common/v1/missing.proto\";\n\nmessage A {}\n",
    )]);
    let text = err.to_string();
    assert!(text.contains("app/v1/app.proto:4:1: "), "{text}");
    assert!(text.contains("common/v1/missing.proto"), "{text}");
    assert!(text.contains("help: the include paths are"), "{text}");
}

#[test]
fn valid_protos_compile_to_the_include_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let proto = dir.path().join("ok.proto");
    std::fs::write(
        &proto,
        "syntax = \"proto3\";\npackage ok.v1;\nservice S { rpc M(R) returns (R); }\nmessage R {}\n",
    )
    .expect("write");
    trellis_build::configure()
        .out_dir(dir.path().join("out"))
        .emit_rerun_if_changed(false)
        .compile(&[&proto], &[dir.path()])
        .expect("compiles");
    let code = std::fs::read_to_string(dir.path().join("out/ok.v1.rs")).expect("generated file");
    assert!(code.contains("pub const S_SERVICE_NAME: &str = \"ok.v1.S\""), "{code}");
    assert!(code.contains("impl<T: s_server::S> ::trellis::codegen::DescribedService"), "{code}");
    assert!(!code.contains(" tonic::") && !code.contains("(tonic::"), "tonic paths must go through trellis");
    assert!(Path::new(&dir.path().join("out").join(trellis_build::INCLUDE_FILE)).is_file());
}

/// Runs `trellis_build::compile` in a child process (this same test binary),
/// as a build script would, and checks what the user sees.
#[test]
fn compile_exits_with_the_message_not_a_panic() {
    if let Ok(dir) = std::env::var("TRELLIS_TEST_BROKEN_PROTO_DIR") {
        // The child: `compile` reads OUT_DIR, which the parent set for it.
        let dir = Path::new(&dir);
        trellis_build::compile(&[dir.join("broken.proto")], &[dir]);
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("broken.proto"), "syntax = \"proto3\";\nmessage A { strin x = 1; }\n")
        .expect("write");
    let output = Command::new(std::env::current_exe().expect("test exe"))
        .args(["--exact", "compile_exits_with_the_message_not_a_panic", "--nocapture"])
        .env("TRELLIS_TEST_BROKEN_PROTO_DIR", dir.path())
        .env("OUT_DIR", dir.path().join("out"))
        .output()
        .expect("run child");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("error: ") && stderr.contains("broken.proto:2:13: "), "{stderr}");
    assert!(stderr.contains("strin"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
