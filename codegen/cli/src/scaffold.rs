//! `trellis new`, `trellis add` and `trellis upgrade`: render the template
//! into a crate and keep it up to date without touching what its owner
//! changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use heck::{ToShoutySnakeCase, ToSnakeCase};

use crate::deploy::{self, DeployValues};
use crate::error::Error;
use crate::manifest::{self, Manifest, Planned, ServiceRecord};
use crate::names::{self, ServiceNames};
use crate::template::{self, Template, Vars};

/// Arguments of `trellis new`.
#[derive(Debug, clap::Args)]
pub(crate) struct NewArgs {
    /// The crate's name, such as `greeter` or `order-billing`
    name: String,
    /// Where to make it [default: ./NAME]
    #[arg(long, value_name = "DIR")]
    path: Option<PathBuf>,
    /// The proto package of its service, ending in a version [default: NAME.v1, in snake case]
    #[arg(long, value_name = "PROTO_PACKAGE")]
    package: Option<String>,
    /// The Trellis checkout to depend on by path [default: the one this trellis was built from]
    #[arg(long, value_name = "DIR")]
    trellis_path: Option<PathBuf>,
    /// The port it listens on in containers
    #[arg(long, default_value_t = 50051)]
    port: u16,
    /// One line saying what the service does
    #[arg(long)]
    description: Option<String>,
}

/// Arguments of `trellis upgrade`.
#[derive(Debug, clap::Args)]
pub(crate) struct UpgradeArgs {
    /// The service crate [default: .]
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Depend on this Trellis checkout from now on
    #[arg(long, value_name = "DIR")]
    trellis_path: Option<PathBuf>,
    /// Print what would change, change nothing
    #[arg(long)]
    dry_run: bool,
}

/// Arguments of `trellis add proto`.
#[derive(Debug, clap::Args)]
pub(crate) struct AddProtoArgs {
    /// The new service's name, such as `billing`
    name: String,
    /// Its proto package, ending in a version [default: NAME.v1, in snake case]
    #[arg(long, value_name = "PROTO_PACKAGE")]
    package: Option<String>,
    /// The service crate [default: .]
    #[arg(long, value_name = "DIR", default_value = ".")]
    path: PathBuf,
}

/// Arguments of `trellis add service`.
#[derive(Debug, clap::Args)]
pub(crate) struct AddServiceArgs {
    /// The .proto file to copy in
    proto_file: PathBuf,
    /// The service crate [default: .]
    #[arg(long, value_name = "DIR", default_value = ".")]
    path: PathBuf,
}

/// `trellis new`.
pub(crate) fn new(args: &NewArgs) -> Result<ExitCode, Error> {
    names::check_crate_name(&args.name)?;
    let dir = args.path.clone().unwrap_or_else(|| PathBuf::from(&args.name));
    if let Some(existing) = Manifest::read(&dir)? {
        if existing.service.name != args.name {
            return Err(Error::usage(format!(
                "{} holds the service `{}`, not `{}`; choose another --path",
                dir.display(),
                existing.service.name,
                args.name
            )));
        }
        println!("{} was made by trellis new; updating it as trellis upgrade does", dir.display());
        return upgrade(&UpgradeArgs { dir, trellis_path: args.trellis_path.clone(), dry_run: false });
    }
    refuse_non_empty(&dir)?;
    let names = ServiceNames::new(&args.name, args.package.as_deref())?;
    let description = match &args.description {
        Some(d) => check_description(d)?,
        None => format!("The {} service", args.name),
    };
    if args.port == 0 {
        return Err(Error::usage(
            "--port 0 picks a random port, which containers cannot expose; give a fixed one",
        ));
    }
    let checkout = Checkout::find(args.trellis_path.as_deref())?;
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
    let abs = dir.canonicalize().map_err(|e| Error::io("resolve", &dir, e))?;
    let parent_workspace = enclosing_workspace(&abs);
    let record = ServiceRecord {
        name: args.name.clone(),
        package: names.package.clone(),
        description,
        port: args.port,
        trellis_root: checkout.root.clone(),
        standalone: parent_workspace.is_none(),
    };
    let mut manifest =
        Manifest { trellis_version: checkout.version.clone(), service: record, files: Vec::new() };
    let plan = render_service(&dir, &manifest)?;
    let outcome = manifest::apply(&dir, &mut manifest, plan, false)?;
    manifest.write(&dir)?;
    // The checkout's lock file: the same dependency versions Trellis was
    // tested with, available offline. Cargo owns it from now on.
    let lock = checkout.root.join("Cargo.lock");
    if manifest.service.standalone && lock.is_file() {
        std::fs::copy(&lock, dir.join("Cargo.lock")).map_err(|e| Error::io("copy", &lock, e))?;
    }
    println!("created {} ({} files) from Trellis {}", dir.display(), outcome.created.len(), checkout.version);
    println!("  service  {}", names.full_service());
    println!("  proto    proto/{}/{}.proto", names.package_path(), args.name.to_snake_case());
    if let Some(workspace) = parent_workspace {
        println!(
            "  note     {} is inside the workspace {}: add it to its `members`",
            dir.display(),
            workspace.display()
        );
    }
    println!("\nnext:\n  cd {}\n  cargo test\n  cargo run -- --config config.toml", dir.display());
    Ok(ExitCode::SUCCESS)
}

/// `trellis upgrade`.
pub(crate) fn upgrade(args: &UpgradeArgs) -> Result<ExitCode, Error> {
    let dir = &args.dir;
    let mut manifest = Manifest::read(dir)?.ok_or_else(|| {
        Error::usage(format!(
            "{} has no {}: it was not made by trellis new, so there is nothing to upgrade",
            dir.display(),
            manifest::PATH
        ))
    })?;
    let checkout = Checkout::find(args.trellis_path.as_deref().or(Some(&manifest.service.trellis_root)))
        .or_else(|_| Checkout::find(None))?;
    let from = manifest.trellis_version.clone();
    manifest.service.trellis_root = checkout.root.clone();
    manifest.trellis_version = checkout.version.clone();
    let mut plan = render_service(dir, &manifest)?;
    for file in manifest.files.clone() {
        let Some(name) = &file.template else { continue };
        if plan.iter().any(|p| p.path == file.path) {
            continue;
        }
        let Some(template) = template::find(name) else {
            // Dropped from the template (such as src/health.rs, now in every
            // binary): the file is the user's now.
            println!("keep    {} (no longer written by trellis; delete it if nothing uses it)", file.path);
            manifest.files.retain(|f| f.path != file.path);
            continue;
        };
        let proto = file.vars.get("proto").cloned().unwrap_or_default();
        let names = ServiceNames::new(&proto, file.vars.get("package").map(String::as_str))?;
        let description = file.vars.get("description").unwrap_or(&manifest.service.description).clone();
        plan.push(render_one(template, &proto_vars(&names, &proto, &description), file.vars)?);
    }
    let outcome = manifest::apply(dir, &mut manifest, plan, args.dry_run)?;
    if !args.dry_run {
        manifest.write(dir)?;
    }
    let verb = if args.dry_run { "would " } else { "" };
    for path in &outcome.created {
        println!("{verb}create  {path}");
    }
    for path in &outcome.updated {
        println!("{verb}update  {path}");
    }
    println!(
        "{} file(s) already up to date; Trellis {from} -> {}",
        outcome.unchanged.len(),
        manifest.trellis_version
    );
    if outcome.conflicts.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for (path, diff) in &outcome.conflicts {
        println!(
            "\nleft alone: {path} was changed since trellis wrote it; the template's version differs:\n{diff}"
        );
    }
    eprintln!(
        "trellis: {} edited file(s) left alone: merge the differences above by hand, or delete a file and rerun \
         trellis upgrade to take the template's version",
        outcome.conflicts.len()
    );
    Ok(ExitCode::FAILURE)
}

/// `trellis add proto`.
pub(crate) fn add_proto(args: &AddProtoArgs) -> Result<ExitCode, Error> {
    names::check_crate_name(&args.name)?;
    let dir = &args.path;
    let mut manifest = service_manifest(dir)?;
    let proto = args.name.to_snake_case();
    let names = ServiceNames::new(&args.name, args.package.as_deref())?;
    let mut own = BTreeMap::new();
    own.insert("proto".to_owned(), proto.clone());
    own.insert("package".to_owned(), names.package.clone());
    let description = format!("The {} service", args.name);
    own.insert("description".to_owned(), description.clone());
    let vars = proto_vars(&names, &proto, &description);
    let planned = render_one(&template::PROTO[0], &vars, own)?;
    let path = planned.path.clone();
    if dir.join(&path).exists() {
        return Err(Error::usage(format!(
            "{} already exists; choose another name or --package",
            dir.join(&path).display()
        )));
    }
    manifest::apply(dir, &mut manifest, vec![planned], false)?;
    manifest.write(dir)?;
    println!("created {path}: the service {}", names.full_service());
    print_wiring(&names);
    Ok(ExitCode::SUCCESS)
}

/// `trellis add service`.
pub(crate) fn add_service(args: &AddServiceArgs) -> Result<ExitCode, Error> {
    let dir = &args.path;
    let mut manifest = service_manifest(dir)?;
    let text =
        std::fs::read_to_string(&args.proto_file).map_err(|e| Error::io("read", &args.proto_file, e))?;
    let package = proto_package(&text).ok_or_else(|| {
        Error::usage(format!(
            "{} has no `package` line; add one, such as `package billing.v1;`, so it has a place under proto/",
            args.proto_file.display()
        ))
    })?;
    for segment in package.split('.') {
        if segment.is_empty() || !segment.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(Error::usage(format!(
                "{}: `package {package};` is not a dotted list of identifiers",
                args.proto_file.display()
            )));
        }
    }
    let file_name = args
        .proto_file
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::usage(format!("{} has no usable file name", args.proto_file.display())))?;
    let path = format!("proto/{}/{file_name}", package.replace('.', "/"));
    if let Ok(existing) = std::fs::read_to_string(dir.join(&path))
        && existing != text
    {
        return Err(Error::usage(format!(
            "{} already exists with other contents; remove it first to replace it",
            dir.join(&path).display()
        )));
    }
    // Compile it with the crate's other protos now, rather than at the next build.
    crate::doctor::compile_protos(dir, Some((&path, &text)))?;
    let planned = Planned { path: path.clone(), content: text, template: None, vars: BTreeMap::new() };
    manifest::apply(dir, &mut manifest, vec![planned], false)?;
    manifest.write(dir)?;
    println!("copied {} to {path}; it compiles with the crate's other protos", args.proto_file.display());
    println!(
        "build.rs compiles every .proto under proto/: the code is under `proto::{}`",
        package.replace('.', "::")
    );
    Ok(ExitCode::SUCCESS)
}

fn print_wiring(names: &ServiceNames) {
    println!(
        "build.rs compiles every .proto under proto/; to serve it, implement\n  \
         proto::{module}::{snake}_server::{service}\nand add it in src/lib.rs:\n  \
         .add_service(proto::{module}::{snake}_server::{service}Server::new(handler))",
        module = names.package_mod(),
        snake = names.service_snake(),
        service = names.service,
    );
}

fn service_manifest(dir: &Path) -> Result<Manifest, Error> {
    Manifest::read(dir)?.ok_or_else(|| {
        Error::usage(format!(
            "{} has no {}: run this in a crate made by trellis new, or pass its folder with --path",
            dir.display(),
            manifest::PATH
        ))
    })
}

/// The `package` of a proto file's text.
pub(crate) fn proto_package(text: &str) -> Option<String> {
    text.lines().map(|l| l.split("//").next().unwrap_or("").trim()).find_map(|line| {
        let rest = line.strip_prefix("package")?;
        rest.starts_with(char::is_whitespace).then(|| rest.trim().trim_end_matches(';').trim().to_owned())
    })
}

/// Every file of the service template, rendered for `manifest`'s service.
fn render_service(dir: &Path, manifest: &Manifest) -> Result<Vec<Planned>, Error> {
    let record = &manifest.service;
    let names = ServiceNames::new(&record.name, Some(&record.package))?;
    let crate_ident = record.name.replace('-', "_");
    let root = &record.trellis_root;
    let mut vars = proto_vars(&names, &crate_ident, &record.description);
    let mut set = |k: &'static str, v: String| {
        vars.insert(k, v);
    };
    set("name", record.name.clone());
    set("crate_ident", crate_ident.clone());
    set("section", crate_ident.clone());
    set("section_env", crate_ident.to_shouty_snake_case());
    set("dns_service", names.dns_service());
    set("port", record.port.to_string());
    set("trellis_version", manifest.trellis_version.clone());
    set("trellis_root", root.display().to_string());
    set("trellis_path", root.join("framework").display().to_string());
    set("trellis_build_path", root.join("codegen").display().to_string());
    // Profiles count only in a workspace's root, so they come with its table.
    let workspace = if record.standalone {
        "\n# A workspace of its own; delete this to make the crate a member of an enclosing one.\n\
         [workspace]\n\
         \n\
         # Cargo compiles a dependency from a path incrementally, like your own code. The\n\
         # Trellis crates do not change under you: built in one go, a clean build is faster.\n\
         # Their debug info is line tables: backtraces keep file and line, and the build\n\
         # skips the rest (full debug info for your own code, as always).\n\
         [profile.dev.package.trellis]\n\
         incremental = false\n\
         debug = \"line-tables-only\"\n\
         \n\
         [profile.dev.package.trellis-build]\n\
         incremental = false\n\
         debug = \"line-tables-only\"\n"
    } else {
        ""
    };
    set("workspace_table", workspace.to_owned());

    let mut plan = Vec::new();
    for template in template::SERVICE {
        if template.name == "config_toml" {
            let planned = render_one(template, &vars, BTreeMap::new())?;
            // The deployment files follow the config as it is on disk, if the
            // owner changed it, else as rendered.
            let on_disk = dir.join(&planned.path);
            let config = std::fs::read_to_string(&on_disk).unwrap_or_else(|_| planned.content.clone());
            let values = DeployValues::from_config(&on_disk, &config)?;
            deploy_vars(&mut vars, &names, &values, &config);
            plan.push(planned);
            continue;
        }
        plan.push(render_one(template, &vars, BTreeMap::new())?);
    }
    Ok(plan)
}

fn deploy_vars(vars: &mut Vars, names: &ServiceNames, values: &DeployValues, config: &str) {
    vars.insert("port", values.port.to_string());
    vars.insert("grace_seconds", values.grace_secs().to_string());
    vars.insert("grace_margin", deploy::GRACE_MARGIN_SECS.to_string());
    vars.insert("propagation_delay", deploy::format_duration(values.propagation_delay));
    vars.insert("drain_timeout", deploy::format_duration(values.drain_timeout));
    let indented: Vec<String> =
        config.lines().map(|l| if l.is_empty() { String::new() } else { format!("    {l}") }).collect();
    vars.insert("config_indented", indented.join("\n"));
    let upstream = crate::nginx::Upstream {
        service: names.full_service(),
        endpoints: vec![format!("127.0.0.1:{}", values.port)],
        // The template's proto has no REST routes; `trellis nginx` reads them from a running instance.
        rest: Some(Vec::new()),
    };
    let listen = crate::nginx::Listen { grpc: "0.0.0.0:8080", rest: "0.0.0.0:8081" };
    vars.insert("nginx_config", crate::nginx::render(&[upstream], listen));
}

/// The variables of the proto template for a service called `proto`.
fn proto_vars(names: &ServiceNames, proto: &str, description: &str) -> Vars {
    let mut vars = Vars::new();
    vars.insert("description", description.to_owned());
    vars.insert("package", names.package.clone());
    vars.insert("package_path", names.package_path());
    vars.insert("package_mod", names.package_mod());
    vars.insert("service", names.service.clone());
    vars.insert("service_snake", names.service_snake());
    vars.insert("full_service", names.full_service());
    vars.insert("proto_file", format!("{proto}.proto"));
    vars
}

fn render_one(template: &Template, vars: &Vars, own: BTreeMap<String, String>) -> Result<Planned, Error> {
    let path = template::render(template.name, template.output, vars)?;
    let mut content = template::render(template.name, template.text, vars)?;
    if path.ends_with(".rs") {
        content = template::format_rust(content);
    }
    Ok(Planned { path, content, template: Some(template.name.to_owned()), vars: own })
}

fn check_description(description: &str) -> Result<String, Error> {
    let description = description.trim().trim_end_matches('.');
    if description.is_empty() || description.contains(['"', '\\', '\n', '{', '}']) {
        return Err(Error::usage(
            "--description must be one non-empty line without quotes, backslashes or braces",
        ));
    }
    Ok(description.to_owned())
}

fn refuse_non_empty(dir: &Path) -> Result<(), Error> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            return Err(Error::usage(format!(
                "{} is a file, not a folder; choose another --path",
                dir.display()
            )));
        }
        Err(e) => return Err(Error::io("read", dir, e)),
    };
    let mut names: Vec<String> =
        entries.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    if names.is_empty() {
        return Ok(());
    }
    names.sort();
    let shown = names.iter().take(5).map(String::as_str).collect::<Vec<_>>().join(", ");
    let more = if names.len() > 5 { format!(" and {} more", names.len() - 5) } else { String::new() };
    Err(Error::usage(format!(
        "{} already has files of its own ({shown}{more}); trellis new writes only into an empty or new folder: \
         choose another --path",
        dir.display()
    )))
}

/// The Trellis checkout a new crate depends on.
#[derive(Debug)]
struct Checkout {
    root: PathBuf,
    version: String,
}

impl Checkout {
    fn find(given: Option<&Path>) -> Result<Checkout, Error> {
        let root = given.map(Path::to_path_buf).unwrap_or_else(crate::built_from);
        let what = if given.is_some() { "--trellis-path" } else { "the checkout trellis was built from" };
        let framework = root.join("framework/Cargo.toml");
        let manifest = std::fs::read_to_string(&framework).map_err(|_| {
            Error::usage(format!(
                "{what} {} is not a Trellis checkout (no framework/Cargo.toml); pass the folder holding \
                 framework/ and codegen/ with --trellis-path",
                root.display()
            ))
        })?;
        if !manifest.contains("name = \"trellis\"") || !root.join("codegen/Cargo.toml").is_file() {
            return Err(Error::usage(format!(
                "{what} {}: framework/ is not the `trellis` crate, or codegen/ is missing; pass a Trellis checkout",
                root.display()
            )));
        }
        let root = root.canonicalize().map_err(|e| Error::io("resolve", &root, e))?;
        let workspace = std::fs::read_to_string(root.join("Cargo.toml")).unwrap_or_default();
        let version = workspace
            .parse::<toml::Table>()
            .ok()
            .and_then(|t| t.get("workspace")?.get("package")?.get("version")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| crate::TRELLIS_VERSION.to_owned());
        Ok(Checkout { root, version })
    }
}

/// The Cargo workspace enclosing `dir`, if any.
fn enclosing_workspace(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().skip(1).find_map(|parent| {
        let text = std::fs::read_to_string(parent.join("Cargo.toml")).ok()?;
        let table: toml::Table = text.parse().ok()?;
        table.contains_key("workspace").then(|| parent.join("Cargo.toml"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_package_line_is_found() {
        let text = "syntax = \"proto3\";\n// package not.this;\npackage billing.v1; // trailing\n";
        assert_eq!(proto_package(text).as_deref(), Some("billing.v1"));
        assert_eq!(proto_package("syntax = \"proto3\";\npackaged = 1;\n"), None);
    }
}
