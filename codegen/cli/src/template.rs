//! The templates of `template/`, embedded in the binary, and their renderer.
//!
//! A template is a file with a non-compiling suffix (`main_rs`,
//! `cargo_toml`) so the folder is never built as Rust. `{{name}}` (letters
//! and `_`, no spaces) is replaced by the variable `name`; anything else,
//! such as the `${{ secrets.X }}` of a GitHub workflow, is left as is. An
//! unknown variable is an error, so a template and the code cannot drift.

use std::collections::BTreeMap;

use crate::error::Error;

/// One template: its path under `template/`, where it goes in the crate
/// (itself a template), and its text.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Template {
    pub(crate) name: &'static str,
    pub(crate) output: &'static str,
    pub(crate) text: &'static str,
}

macro_rules! templates {
    ($($name:literal => $output:literal,)*) => {
        &[$(Template {
            name: $name,
            output: $output,
            text: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../template/", $name)),
        },)*]
    };
}

/// What `trellis new` renders, in order (the config first: the deployment
/// files are derived from it).
pub(crate) const SERVICE: &[Template] = templates! {
    "config_toml" => "config.toml",
    "cargo_toml" => "Cargo.toml",
    "build_rs" => "build.rs",
    "src/main_rs" => "src/main.rs",
    "src/lib_rs" => "src/lib.rs",
    "src/service_rs" => "src/service.rs",
    "proto/service_proto" => "proto/{{package_path}}/{{proto_file}}",
    "tests/service_rs" => "tests/service.rs",
    "readme_md" => "README.md",
    "rustfmt_toml" => "rustfmt.toml",
    "gitignore" => ".gitignore",
    "dockerignore" => ".dockerignore",
    "dockerfile" => "Dockerfile",
    "compose_yaml" => "compose.yaml",
    "deploy/kubernetes_yaml" => "deploy/kubernetes.yaml",
    "deploy/nginx_conf" => "deploy/nginx.conf",
    "github/workflows/ci_yml" => ".github/workflows/ci.yml",
};

/// The options of `template/rustfmt_toml`, for rustfmt's `--config`.
const RUSTFMT_OPTIONS: &str = "edition=2024,max_width=110,use_small_heuristics=Max";

/// What `trellis add proto` renders.
pub(crate) const PROTO: &[Template] = templates! {
    "proto/service_proto" => "proto/{{package_path}}/{{proto_file}}",
};

/// The template called `name`, in either set.
pub(crate) fn find(name: &str) -> Option<&'static Template> {
    SERVICE.iter().chain(PROTO).find(|t| t.name == name)
}

/// Template variables.
pub(crate) type Vars = BTreeMap<&'static str, String>;

/// `text` with every `{{var}}` replaced.
pub(crate) fn render(template: &str, text: &str, vars: &Vars) -> Result<String, Error> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let ident_len = after.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').count();
        if ident_len > 0 && after[ident_len..].starts_with("}}") {
            let key = &after[..ident_len];
            let value = vars.get(key).ok_or_else(|| {
                Error::msg(format!(
                    "template `{template}` uses `{{{{{key}}}}}`, which this trellis does not define"
                ))
            })?;
            out.push_str(value);
            rest = &after[ident_len + 2..];
        } else {
            // Not a variable (`{{{x}}`, `${{ secrets.X }}`): keep one brace and go on.
            out.push('{');
            rest = &rest[start + 1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// `source` as `rustfmt` prints it in the style of the template's
/// `rustfmt.toml`, so a new crate passes `cargo fmt --check` whatever its
/// names; as is when rustfmt is not installed or fails.
pub(crate) fn format_rust(source: String) -> String {
    use std::io::Write as _;
    let child = std::process::Command::new("rustfmt")
        .args(["--emit", "stdout", "--quiet", "--config", RUSTFMT_OPTIONS])
        // Away from any rustfmt.toml of the folder trellis runs in.
        .current_dir(std::env::temp_dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return source };
    if let Some(mut stdin) = child.stdin.take()
        && stdin.write_all(source.as_bytes()).is_err()
    {
        return source;
    }
    match child.wait_with_output() {
        Ok(out) if out.status.success() && !out.stdout.is_empty() => {
            String::from_utf8(out.stdout).unwrap_or(source)
        }
        _ => source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&'static str, &str)]) -> Vars {
        pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
    }

    #[test]
    fn replaces_variables_and_keeps_other_braces() {
        let vars = vars(&[("name", "greeter"), ("service", "Greeter")]);
        let text = "use a::{{{service}}Client}; ${{ secrets.X }} {{name}}-{{name}} {x}";
        assert_eq!(
            render("t", text, &vars).unwrap(),
            "use a::{GreeterClient}; ${{ secrets.X }} greeter-greeter {x}"
        );
    }

    #[test]
    fn rustfmt_options_match_the_template() {
        let file = find("rustfmt_toml").unwrap().text;
        let table: toml::Table = file.parse().unwrap();
        let options: Vec<String> =
            table.iter().map(|(k, v)| format!("{k}={}", v.to_string().trim_matches('"'))).collect();
        let mut expected: Vec<&str> = RUSTFMT_OPTIONS.split(',').collect();
        expected.sort_unstable();
        let mut options: Vec<&str> = options.iter().map(String::as_str).collect();
        options.sort_unstable();
        assert_eq!(options, expected);
    }

    #[test]
    fn an_unknown_variable_is_an_error() {
        let err = render("cargo_toml", "{{nope}}", &Vars::new()).unwrap_err().to_string();
        assert!(err.contains("`cargo_toml` uses `{{nope}}`"), "{err}");
    }

    #[test]
    fn every_file_of_the_template_folder_is_embedded() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../template");
        let mut on_disk = Vec::new();
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    on_disk.push(path.strip_prefix(&root).unwrap().to_string_lossy().into_owned());
                }
            }
        }
        for file in on_disk {
            assert!(find(&file).is_some(), "template/{file} is not listed in template.rs");
        }
    }
}
