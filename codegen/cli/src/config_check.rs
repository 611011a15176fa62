//! Whether every key of a service's config file is one Trellis knows.
//!
//! [`check_file`] is the one place `trellis doctor` asks this; it compares
//! the file's keys against the keys documented in `trellis::config`. When
//! the framework offers the check itself, this function calls it instead.

use std::path::Path;

/// The framework's keys, as documented in `trellis::config`: each top-level
/// key, with the keys its table takes (`None`: a value, not a table; `*`: a
/// table keyed by any name).
const KNOWN: &[(&str, Option<&[&str]>)] = &[
    ("listen", None),
    ("registry", None),
    ("advertise", None),
    ("instance", Some(&["version", "zone", "weight"])),
    ("log", Some(&["format", "level"])),
    ("shutdown", Some(&["propagation_delay", "drain_timeout"])),
    ("server", Some(&["max_concurrent_calls"])),
    ("clients", Some(&["*"])),
    ("faults", Some(&["delay", "unavailable"])),
];

/// The keys a table under `clients."SERVICE"` takes, and under its `methods.METHOD`.
const CLIENT_KEYS: &[&str] = &["balance", "methods"];
const METHOD_KEYS: &[&str] = &["timeout", "max_attempts"];

/// Checks that every key in the TOML file at `path` is a framework key or
/// lies in one of `own_sections` (the service's own tables). The error names
/// every unknown key with the nearest known one.
pub(crate) fn check_file(path: &Path, own_sections: &[&str]) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let table: toml::Table =
        text.parse().map_err(|e| format!("{} is not valid TOML: {e}", path.display()))?;
    let mut problems = Vec::new();
    let top: Vec<&str> = KNOWN.iter().map(|(k, _)| *k).chain(own_sections.iter().copied()).collect();
    for (key, value) in &table {
        if own_sections.contains(&key.as_str()) {
            continue;
        }
        let Some((_, sub)) = KNOWN.iter().find(|(k, _)| k == key) else {
            problems.push(unknown(key, &top));
            continue;
        };
        match (sub, value.as_table()) {
            (None, Some(_)) => {
                problems.push(format!("`{key}` is a value, not a table: write {key} = \"...\""))
            }
            (Some(_), None) => {
                problems.push(format!("`{key}` is a table: write it as [{key}] with its keys"))
            }
            (Some(keys), Some(inner)) if keys != &["*"] => {
                for sub_key in inner.keys() {
                    if !keys.contains(&sub_key.as_str()) {
                        problems.push(unknown(&format!("{key}.{sub_key}"), &qualified(key, keys)));
                    }
                }
            }
            (Some(_), Some(clients)) => {
                for (service, settings) in clients {
                    let Some(settings) = settings.as_table() else { continue };
                    let prefix = format!("clients.\"{service}\"");
                    for (k, v) in settings {
                        if !CLIENT_KEYS.contains(&k.as_str()) {
                            problems
                                .push(unknown(&format!("{prefix}.{k}"), &qualified(&prefix, CLIENT_KEYS)));
                        } else if k == "methods" {
                            for (method, m) in v.as_table().into_iter().flatten() {
                                let at = format!("{prefix}.methods.{method}");
                                for mk in m.as_table().into_iter().flatten().map(|(mk, _)| mk) {
                                    if !METHOD_KEYS.contains(&mk.as_str()) {
                                        problems.push(unknown(
                                            &format!("{at}.{mk}"),
                                            &qualified(&at, METHOD_KEYS),
                                        ));
                                    }
                                }
                            }
                        }
                    }
                }
            }
            (None, None) => {}
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
}

fn qualified(prefix: &str, keys: &[&str]) -> Vec<String> {
    keys.iter().map(|k| format!("{prefix}.{k}")).collect()
}

fn unknown<S: AsRef<str>>(key: &str, known: &[S]) -> String {
    let nearest = known
        .iter()
        .map(|k| (strsim::levenshtein(key, k.as_ref()), k.as_ref()))
        .min()
        .filter(|(distance, _)| *distance <= 3.max(key.len() / 3));
    match nearest {
        Some((_, k)) => format!("unknown key `{key}`: did you mean `{k}`?"),
        None => format!("unknown key `{key}`: not a Trellis setting nor one of the service's own sections"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misspelt_keys_get_the_nearest_known_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "listen = \"0.0.0.0:1\"\nregistyr = \"local://\"\n[shutdown]\ndrain_timout = \"1s\"\n[greeter]\nx = 1\n\
             [clients.\"a.v1.A\".methods.Get]\ntimeot = \"1s\"\n",
        )
        .unwrap();
        let err = check_file(&path, &["greeter"]).unwrap_err();
        assert!(err.contains("`registyr`: did you mean `registry`?"), "{err}");
        assert!(err.contains("`shutdown.drain_timout`: did you mean `shutdown.drain_timeout`?"), "{err}");
        assert!(err.contains("did you mean `clients.\"a.v1.A\".methods.Get.timeout`?"), "{err}");
        std::fs::write(&path, "listen = \"0.0.0.0:1\"\n[greeter]\nx = 1\n").unwrap();
        check_file(&path, &["greeter"]).unwrap();
    }
}
