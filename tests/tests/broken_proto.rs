//! A broken proto, a `(trellis.method)` option out of range or unsafe, or a
//! `google.api.http` rule that is malformed or collides with another, fails
//! the build with `file:line:column: message`, and
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

/// A service whose one method `Get` (request `shop.v1.Req`) has `method_body`
/// as its options; `Get` is on line 7, its body from line 8.
fn policy_proto(method: &str, method_body: &str) -> String {
    format!(
        "syntax = \"proto3\";\npackage shop.v1;\n\nimport \"trellis/options.proto\";\n\n\
         service Shop {{\n  rpc {method} {{\n{method_body}  }}\n}}\n\n\
         message Req {{\n  string id = 1;\n  repeated string tags = 2;\n  double weight = 3;\n}}\n"
    )
}

/// The error for `policy_proto(method, body)`, with checks that it names the
/// file and the method.
fn policy_error(method: &str, method_body: &str) -> String {
    let text = error_of(&[("shop/v1/shop.proto", &policy_proto(method, method_body))]).to_string();
    assert!(text.contains("shop/v1/shop.proto:"), "{text}");
    assert!(text.contains("method shop.v1.Shop.Get: "), "{text}");
    text
}

const UNARY: &str = "Get(Req) returns (Req)";

#[test]
fn a_policy_compiles_with_no_include_setup() {
    let proto = policy_proto(
        UNARY,
        "    option idempotency_level = IDEMPOTENT;\n    option (trellis.method) = { timeout: \"2s\" hedge: { delay: \"50ms\" } hash_key: \"id\" };\n",
    );
    compile(&[("shop/v1/shop.proto", &proto)]).expect("compiles");
}

#[test]
fn hedging_a_method_not_safe_to_repeat_says_how_to_mark_it() {
    let text =
        policy_error(UNARY, "    option (trellis.method) = {\n      hedge: { delay: \"50ms\" }\n    };\n");
    assert!(text.contains("shop/v1/shop.proto:8:5: "), "{text}");
    assert!(text.contains("hedging sends a call twice"), "{text}");
    assert!(
        text.contains("`option idempotency_level = IDEMPOTENT;` (or NO_SIDE_EFFECTS), or remove the hedge"),
        "{text}"
    );
}

#[test]
fn a_hedge_without_delay_asks_for_one() {
    let text = policy_error(
        UNARY,
        "    option idempotency_level = NO_SIDE_EFFECTS;\n    option (trellis.method).hedge.max_attempts = 3;\n",
    );
    assert!(text.contains("shop/v1/shop.proto:9:"), "{text}");
    assert!(text.contains("the hedge has no `delay`") && text.contains("`delay: \"50ms\"`"), "{text}");
}

#[test]
fn a_zero_hedge_delay_is_rejected() {
    let text = policy_error(
        UNARY,
        "    option idempotency_level = IDEMPOTENT;\n    option (trellis.method).hedge.delay = \"0s\";\n",
    );
    assert!(text.contains("shop/v1/shop.proto:9:"), "{text}");
    assert!(
        text.contains("hedge `delay: \"0s\"` is not a positive duration; write one like \"50ms\""),
        "{text}"
    );
}

#[test]
fn too_many_hedged_attempts_give_the_range() {
    let text = policy_error(
        UNARY,
        "    option idempotency_level = IDEMPOTENT;\n    option (trellis.method).hedge = { delay: \"10ms\" max_attempts: 5 };\n",
    );
    assert!(text.contains("hedge `max_attempts: 5` is out of range; set 2 to 4"), "{text}");
}

#[test]
fn a_timeout_that_is_not_a_duration_shows_the_form() {
    let text = policy_error(UNARY, "    option (trellis.method).timeout = \"soon\";\n");
    assert!(text.contains("shop/v1/shop.proto:8:"), "{text}");
    assert!(
        text.contains("`timeout: \"soon\"` is not a positive duration; write one like \"2s\" or \"250ms\""),
        "{text}"
    );
}

#[test]
fn more_than_ten_attempts_are_rejected() {
    let text = policy_error(UNARY, "    option (trellis.method).max_attempts = 11;\n");
    assert!(text.contains("shop/v1/shop.proto:8:"), "{text}");
    assert!(text.contains("`max_attempts: 11` is more than 10") && text.contains("set at most 10"), "{text}");
}

#[test]
fn a_hash_key_naming_no_field_lists_the_fields() {
    let text = policy_error(UNARY, "    option (trellis.method).hash_key = \"user_id\";\n");
    assert!(text.contains("shop/v1/shop.proto:8:"), "{text}");
    assert!(text.contains("`hash_key: \"user_id\"` names no field of the request `shop.v1.Req`"), "{text}");
    assert!(text.contains("`id`, `tags`, `weight`"), "{text}");
}

#[test]
fn a_hash_key_of_the_wrong_type_names_the_type() {
    let text = policy_error(UNARY, "    option (trellis.method).hash_key = \"weight\";\n");
    assert!(text.contains("`hash_key: \"weight\"` is a double field of `shop.v1.Req`"), "{text}");
    assert!(text.contains("name a singular string, bytes or integer field"), "{text}");
    let text = policy_error(UNARY, "    option (trellis.method).hash_key = \"tags\";\n");
    assert!(text.contains("is a repeated string field"), "{text}");
}

#[test]
fn a_hash_key_on_a_client_stream_is_rejected() {
    let text =
        policy_error("Get(stream Req) returns (Req)", "    option (trellis.method).hash_key = \"id\";\n");
    assert!(text.contains("client-streaming method") && text.contains("remove the hash_key"), "{text}");
}

/// A service whose method `Get` has `get_body` as its options and whose
/// method `Other` has `other_body`; `Get` is on line 7, its body from line 8.
fn http_proto(get_body: &str, other_body: &str) -> String {
    format!(
        "syntax = \"proto3\";\npackage shop.v1;\n\nimport \"google/api/annotations.proto\";\n\n\
         service Shop {{\n  rpc Get(Req) returns (Req) {{\n{get_body}  }}\n  rpc Other(Req) returns (Req) {{\n{other_body}  }}\n}}\n\n\
         message Req {{\n  string id = 1;\n  repeated string tags = 2;\n  Address address = 3;\n  double weight = 4;\n}}\n\n\
         message Address {{\n  string city = 1;\n}}\n"
    )
}

/// The error for a `google.api.http` option on `Get`, with checks that it
/// names the file and the method.
fn http_error(option: &str) -> String {
    http_error_with(option, "")
}

fn http_error_with(get_body: &str, other_body: &str) -> String {
    let text = error_of(&[("shop/v1/shop.proto", &http_proto(get_body, other_body))]).to_string();
    assert!(text.contains("shop/v1/shop.proto:"), "{text}");
    assert!(text.contains("method shop.v1.Shop."), "{text}");
    text
}

#[test]
fn http_rules_compile_with_no_include_setup() {
    let proto = http_proto(
        "    option (google.api.http) = { get: \"/v1/{id}\" additional_bindings { get: \"/v1/cities/{address.city}\" } };\n",
        "    option (google.api.http) = { post: \"/v1/items\" body: \"*\" };\n",
    );
    compile(&[("shop/v1/shop.proto", &proto)]).expect("compiles");
}

#[test]
fn http_bad_templates_are_located_and_explained() {
    for (template, expected) in [
        ("v1/{id}", "path `v1/{id}` does not start with `/`; write it as `/v1/{id}`"),
        ("/v1/**/items", "path `/v1/**/items` has `**` before its last segment; `**` matches the rest"),
        ("/v1/{name=shelves/**}/books", "has `**` before its last segment"),
        ("/v1/it*ms", "a wildcard is a whole segment, `*` for one segment or `**` for the rest"),
        ("/v1/{id}:", "ends with `:` and no verb; write a verb after it, like `:cancel`"),
        ("/v1/{id", "has a `{` that is never closed; end the variable with `}`"),
        ("/v1/{name={id}}", "variables do not nest"),
        ("/v1//{id}", "has an empty segment"),
    ] {
        let text = http_error(&format!("    option (google.api.http).get = \"{template}\";\n"));
        assert!(text.contains("shop/v1/shop.proto:8:5: method shop.v1.Shop.Get: "), "{text}");
        assert!(text.contains(expected), "{template}: {text}");
    }
}

#[test]
fn http_path_variables_must_name_singular_scalar_fields() {
    for (template, expected) in [
        (
            "/v1/{user_id}",
            "path variable `{user_id}` names no field of `shop.v1.Req`: it has no `user_id`; name one of its \
             fields: `id`, `tags`, `address`, `weight`",
        ),
        (
            "/v1/{tags}",
            "path variable `{tags}` is a repeated string field of `shop.v1.Req`; a path segment binds one value",
        ),
        (
            "/v1/{address}",
            "is a message `shop.v1.Address` field; a path segment binds one value, so name one of its scalar fields, like `{address.city}`",
        ),
        (
            "/v1/{address.zip}",
            "path variable `{address.zip}` names no field of `shop.v1.Address`: it has no `zip`",
        ),
        ("/v1/{id.x}", "`id` is a string field of `shop.v1.Req`, not a message"),
    ] {
        let text = http_error(&format!("    option (google.api.http) = {{ get: \"{template}\" }};\n"));
        assert!(text.contains("shop/v1/shop.proto:8:5: method shop.v1.Shop.Get: "), "{text}");
        assert!(text.contains(expected), "{template}: {text}");
    }
}

#[test]
fn http_body_fields_must_exist_at_the_top_level() {
    let text = http_error("    option (google.api.http) = { post: \"/v1/items\" body: \"item\" };\n");
    assert!(
        text.contains("`body: \"item\"` names no field of the request `shop.v1.Req`; name one of its fields: `id`, `tags`, `address`, `weight`, or `*`"),
        "{text}"
    );
    let text = http_error("    option (google.api.http) = { post: \"/v1/items\" body: \"address.city\" };\n");
    assert!(text.contains("`body: \"address.city\"` is not a top-level field"), "{text}");
    let text = http_error("    option (google.api.http) = { post: \"/v1/items/{id}\" body: \"id\" };\n");
    assert!(text.contains("`body: \"id\"` is also bound by the path `/v1/items/{id}`"), "{text}");
    let text =
        http_error("    option (google.api.http) = { get: \"/v1/items\" response_body: \"total\" };\n");
    assert!(
        text.contains("`response_body: \"total\"` names no field of the response `shop.v1.Req`"),
        "{text}"
    );
}

#[test]
fn http_get_and_delete_have_no_body() {
    for method in ["get", "delete"] {
        let text = http_error(&format!(
            "    option (google.api.http) = {{ {method}: \"/v1/{{id}}\" body: \"*\" }};\n"
        ));
        let upper = method.to_uppercase();
        assert!(text.contains("shop/v1/shop.proto:8:5: "), "{text}");
        assert!(
            text.contains(&format!(
                "a {upper} request has no body, so `body: \"*\"` cannot be bound; remove it"
            )),
            "{text}"
        );
    }
}

#[test]
fn http_routes_that_collide_name_both_methods() {
    let text = http_error_with(
        "    option (google.api.http).get = \"/v1/items/{id}\";\n",
        "    option (google.api.http).get = \"/v1/items/{address.city}\";\n",
    );
    assert!(text.contains("shop/v1/shop.proto:11:5: method shop.v1.Shop.Other: "), "{text}");
    assert!(
        text.contains(
            "route `GET /v1/items/{address.city}` matches the same requests as `GET /v1/items/{id}` of method \
             shop.v1.Shop.Get; change the path or the HTTP method of one of them"
        ),
        "{text}"
    );
    // A different method or verb is a different route.
    let proto = http_proto(
        "    option (google.api.http).get = \"/v1/items/{id}\";\n",
        "    option (google.api.http) = { post: \"/v1/items/{id}:cancel\" body: \"*\" };\n",
    );
    compile(&[("shop/v1/shop.proto", &proto)]).expect("compiles");
    // Two bindings of one method.
    let text = http_error(
        "    option (google.api.http) = { get: \"/v1/{id}\" additional_bindings { get: \"/v1/{weight}\" } };\n",
    );
    assert!(text.contains("as `GET /v1/{id}` of another binding of this method"), "{text}");
}

#[test]
fn http_additional_bindings_do_not_nest() {
    let text = http_error(
        "    option (google.api.http) = {\n      get: \"/v1/{id}\"\n      additional_bindings {\n        get: \"/v2/{id}\"\n        additional_bindings { get: \"/v3/{id}\" }\n      }\n    };\n",
    );
    assert!(text.contains("shop/v1/shop.proto:8:5: "), "{text}");
    assert!(
        text.contains("an additional binding has `additional_bindings` of its own, which are not allowed; list every binding at the top level"),
        "{text}"
    );
}

#[test]
fn http_rules_need_a_method_and_no_selector() {
    let text = http_error("    option (google.api.http) = { body: \"*\" };\n");
    assert!(
        text.contains("the `google.api.http` rule has no HTTP method; set one of `get`, `put`"),
        "{text}"
    );
    let text =
        http_error("    option (google.api.http) = { selector: \"shop.v1.Shop.Get\" get: \"/v1\" };\n");
    assert!(text.contains("`selector` is for rules in a service config file"), "{text}");
    let text = http_error("    option (google.api.http) = { custom: { kind: \"\" path: \"/v1\" } };\n");
    assert!(text.contains("custom `kind: \"\"` is not an HTTP method"), "{text}");
}
