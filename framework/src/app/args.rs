//! The shared command line, parsed with `lexopt` into [`Args`], and its help
//! text.
//!
//! Flags take their value as `--flag VALUE` or `--flag=VALUE` (`-s VALUE`,
//! `-sVALUE` or `-s=VALUE` for the short one); a separate value that starts
//! with `-` is taken for a forgotten value (`--flag=-VALUE` passes one).
//! `--help` and `--version` answer at once, whatever follows.
//! Values are checked here only for their form: loading the configuration
//! checks what they say.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use lexopt::Arg::{Long, Short, Value};

use super::App;

/// The shared command line, parsed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Args {
    /// `--listen ADDR`.
    pub(super) listen: Option<String>,
    /// `--admin-listen ADDR`.
    pub(super) admin_listen: Option<String>,
    /// `--rest-listen ADDR`.
    pub(super) rest_listen: Option<String>,
    /// `--config FILE`.
    pub(super) config: Option<PathBuf>,
    /// `--registry URL`.
    pub(super) registry: Option<String>,
    /// `--log-format FORMAT`: one of [`LOG_FORMATS`].
    pub(super) log_format: Option<String>,
    /// Every `-s/--set KEY=VALUE`, in order.
    pub(super) set: Vec<String>,
    /// The `health` subcommand, when given.
    pub(super) health: Option<Health>,
}

/// The `health` subcommand's flags, with their defaults filled in.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Health {
    /// `--addr HOST:PORT`; none asks the configured listen address.
    pub(super) addr: Option<String>,
    /// `--service NAME`; empty asks about the whole server.
    pub(super) service: String,
    /// `--timeout SECONDS`, as given (`health` checks it).
    pub(super) timeout: String,
}

/// The values `--log-format` takes.
const LOG_FORMATS: [&str; 2] = ["text", "json"];

/// The command whose arguments are read: each has its own flags, usage and help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Command {
    /// The service itself: `NAME [OPTIONS] [COMMAND]`.
    Main,
    /// `NAME health [OPTIONS]`.
    Health,
}

/// How the command line ends the process before anything runs.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Exit {
    /// `--help` (or `help`) for a command: its help on stdout, exit status 0.
    Help(Command),
    /// `--version`: `NAME VERSION` on stdout, exit status 0.
    Version,
    /// Bad usage of a command: the message, the usage and a pointer to
    /// `--help` on stderr, exit status 2.
    Usage(Command, String),
}

impl Exit {
    /// Prints [`text`](Self::text) where it belongs and returns the exit status.
    pub(super) fn report(&self, app: &App) -> ExitCode {
        let text = self.text(app);
        // Not `print!`, which panics on a closed pipe (`svc --help | head -1`):
        // the text is all there is to do either way.
        if let Exit::Usage(..) = self {
            let _ = std::io::stderr().write_all(text.as_bytes());
            ExitCode::from(2)
        } else {
            let _ = std::io::stdout().write_all(text.as_bytes());
            ExitCode::SUCCESS
        }
    }

    /// What is printed for `app`.
    pub(super) fn text(&self, app: &App) -> String {
        match self {
            Exit::Help(command) => help(app, *command),
            Exit::Version => format!("{} {}\n", app.name, app.version),
            Exit::Usage(command, message) => {
                let name = app.name;
                let usage = usage(name, *command);
                let help = match command {
                    Command::Main => format!("{name} --help"),
                    Command::Health => format!("{name} health --help"),
                };
                format!("{name}: error: {message}\nUsage: {usage}\nFor more information, try '{help}'.\n")
            }
        }
    }
}

/// A flag that takes a value, as parsed and as `--help` shows it.
#[derive(Debug)]
struct Flag {
    short: Option<char>,
    long: &'static str,
    value: &'static str,
    help: &'static str,
}

impl Flag {
    /// A flag with a long name only.
    const fn long(long: &'static str, value: &'static str, help: &'static str) -> Flag {
        Flag { short: None, long, value, help }
    }
}

const LISTEN: Flag = Flag::long(
    "listen",
    "ADDR",
    "Address to listen on, HOST:PORT; port 0 picks a free port [default: 127.0.0.1:0]",
);
const ADMIN_LISTEN: Flag = Flag::long(
    "admin-listen",
    "ADDR",
    "Serve /metrics, /healthz, /readyz and the status page on HOST:PORT, apart from the gRPC port [default: off]",
);
const REST_LISTEN: Flag = Flag::long(
    "rest-listen",
    "ADDR",
    "Serve the REST routes on HOST:PORT instead of the gRPC port [default: the gRPC port]",
);
const CONFIG: Flag = Flag::long(
    "config",
    "FILE",
    "TOML file of settings; environment variables TRELLIS_* and flags override it",
);
const REGISTRY: Flag = Flag::long(
    "registry",
    "URL",
    "Where services register and find each other: local://[DIR] (default), etcd://HOST:PORT, dns://NAME:PORT or static://SERVICE=HOST:PORT",
);
const LOG_FORMAT: Flag = Flag::long(
    "log-format",
    "FORMAT",
    "Log as human-readable text or as JSON lines [default: text] [possible values: text, json]",
);
const SET: Flag = Flag {
    short: Some('s'),
    long: "set",
    value: "KEY=VALUE",
    help: "Set any configuration key, e.g. shutdown.drain_timeout=30s (repeatable)",
};
/// The service's flags, in the order `--help` lists them.
const FLAGS: [&Flag; 7] = [&LISTEN, &ADMIN_LISTEN, &REST_LISTEN, &CONFIG, &REGISTRY, &LOG_FORMAT, &SET];

/// What `health` does, for both helps.
const HEALTH_ABOUT: &str = "Ask a running server whether it is SERVING (exit status 0 if it is)";
const ADDR: Flag = Flag::long(
    "addr",
    "HOST:PORT",
    "The server to ask [default: the configured listen address, on loopback]",
);
const SERVICE: Flag =
    Flag::long("service", "NAME", "A full service name; empty asks about the whole server [default: empty]");
const TIMEOUT: Flag = Flag::long("timeout", "SECONDS", "How long to wait for the answer [default: 3]");
/// The `health` subcommand's flags, in the order its `--help` lists them.
const HEALTH_FLAGS: [&Flag; 3] = [&ADDR, &SERVICE, &TIMEOUT];

/// Parses `args` (the first is the program name).
///
/// # Errors
///
/// [`Exit`] for `--help`, `--version` and bad usage.
pub(super) fn parse<I>(args: I) -> Result<Args, Exit>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    let mut reader = Reader { parser: lexopt::Parser::from_iter(args), command: Command::Main };
    let mut args = Args::default();
    while let Some(arg) = reader.next()? {
        match arg {
            Short('h') => return Err(Exit::Help(Command::Main)),
            Long("help") => return Err(reader.no_value("--help", Exit::Help(Command::Main))),
            Short('V') => return Err(Exit::Version),
            Long("version") => return Err(reader.no_value("--version", Exit::Version)),
            Long("listen") => reader.once(&mut args.listen, &LISTEN)?,
            Long("admin-listen") => reader.once(&mut args.admin_listen, &ADMIN_LISTEN)?,
            Long("rest-listen") => reader.once(&mut args.rest_listen, &REST_LISTEN)?,
            Long("registry") => reader.once(&mut args.registry, &REGISTRY)?,
            Long("config") => {
                reader.refuse_twice(args.config.is_some(), &CONFIG)?;
                args.config = Some(reader.value(&CONFIG)?.into());
            }
            Long("log-format") => {
                reader.once(&mut args.log_format, &LOG_FORMAT)?;
                if let Some(format) = args.log_format.as_deref().filter(|f| !LOG_FORMATS.contains(f)) {
                    return Err(reader.error(format!(
                        "invalid value '{format}' for '--log-format <FORMAT>'; possible values: {}",
                        LOG_FORMATS.join(", ")
                    )));
                }
            }
            Short('s') | Long("set") => args.set.push(reader.string(&SET)?),
            Value(command) if command == "health" => {
                reader.command = Command::Health;
                args.health = Some(parse_health(&mut reader)?);
            }
            Value(command) if command == "help" => return Err(help_command(&mut reader)),
            Value(command) => {
                let command = command.to_string_lossy();
                let hint = match crate::config::nearest(&command, &["health", "help"]) {
                    Some(near) => format!("did you mean '{near}'?"),
                    None => "the only one is 'health'".to_owned(),
                };
                return Err(reader.error(format!("unrecognized subcommand '{command}'; {hint}")));
            }
            other => {
                let shown = shown(&other);
                return Err(reader.unexpected(&shown));
            }
        }
    }
    Ok(args)
}

/// The rest of the command line after `health`.
fn parse_health(reader: &mut Reader) -> Result<Health, Exit> {
    let (mut addr, mut service, mut timeout) = (None, None, None);
    while let Some(arg) = reader.next()? {
        match arg {
            Short('h') => return Err(Exit::Help(Command::Health)),
            Long("help") => return Err(reader.no_value("--help", Exit::Help(Command::Health))),
            Long("addr") => reader.once(&mut addr, &ADDR)?,
            Long("service") => reader.once(&mut service, &SERVICE)?,
            Long("timeout") => reader.once(&mut timeout, &TIMEOUT)?,
            Value(value) => {
                let value = value.to_string_lossy();
                return Err(reader.error(format!(
                    "unexpected argument '{value}'; 'health' takes only the flags its --help lists"
                )));
            }
            other => {
                let shown = shown(&other);
                return Err(reader.unexpected(&shown));
            }
        }
    }
    Ok(Health {
        addr,
        service: service.unwrap_or_default(),
        timeout: timeout.unwrap_or_else(|| "3".to_owned()),
    })
}

/// `NAME help [COMMAND]`, read after `help`: the help of the command named.
fn help_command(reader: &mut Reader) -> Exit {
    match reader.next() {
        Ok(None) => Exit::Help(Command::Main),
        Ok(Some(Value(command))) if command == "health" => Exit::Help(Command::Health),
        Ok(Some(other)) => {
            let shown = shown(&other);
            reader.error(format!("unrecognized subcommand '{shown}'; 'help' takes 'health' or nothing"))
        }
        Err(exit) => exit,
    }
}

/// An argument as the user wrote it (without an attached value).
fn shown(arg: &lexopt::Arg<'_>) -> String {
    match arg {
        Short(short) => format!("-{short}"),
        Long(long) => format!("--{long}"),
        Value(value) => value.to_string_lossy().into_owned(),
    }
}

/// The parser, and the command whose arguments it reads, for the errors.
#[derive(Debug)]
struct Reader {
    parser: lexopt::Parser,
    command: Command,
}

impl Reader {
    /// The next flag or value.
    fn next(&mut self) -> Result<Option<lexopt::Arg<'_>>, Exit> {
        let command = self.command;
        self.parser.next().map_err(|err| Exit::Usage(command, err.to_string()))
    }

    /// A usage error of the command being read.
    fn error(&self, message: String) -> Exit {
        Exit::Usage(self.command, message)
    }

    /// `exit`, unless the flag just read, which takes no value, has one
    /// attached (`--help=yes`).
    fn no_value(&mut self, flag: &str, exit: Exit) -> Exit {
        match self.parser.optional_value() {
            None => exit,
            Some(value) => {
                self.error(format!("'{flag}' takes no value, but was given '{}'", value.to_string_lossy()))
            }
        }
    }

    /// The value of `flag`: attached (`--flag=VALUE`, `-fVALUE`) or the next
    /// argument, unless that looks like a flag.
    fn value(&mut self, flag: &Flag) -> Result<OsString, Exit> {
        if let Some(value) = self.parser.optional_value() {
            return Ok(value);
        }
        match self.parser.value() {
            Ok(value) if value == "-" || !value.as_encoded_bytes().starts_with(b"-") => Ok(value),
            _ => Err(self.error(format!("'--{0}' needs a value: --{0} <{1}>", flag.long, flag.value))),
        }
    }

    /// The value of `flag`, which must be UTF-8.
    fn string(&mut self, flag: &Flag) -> Result<String, Exit> {
        self.value(flag)?.into_string().map_err(|value| {
            self.error(format!("the value of '--{}' is not UTF-8: '{}'", flag.long, value.to_string_lossy()))
        })
    }

    /// An error when `flag` was `given` before: it takes one value.
    fn refuse_twice(&self, given: bool, flag: &Flag) -> Result<(), Exit> {
        if given {
            return Err(self.error(format!("'--{}' was given twice; give it once", flag.long)));
        }
        Ok(())
    }

    /// Reads `flag`'s value into `slot`, which must be empty.
    fn once(&mut self, slot: &mut Option<String>, flag: &Flag) -> Result<(), Exit> {
        self.refuse_twice(slot.is_some(), flag)?;
        *slot = Some(self.string(flag)?);
        Ok(())
    }

    /// An unknown flag, `shown` as given, with the nearest known one, or
    /// where it belongs when it is the other command's.
    fn unexpected(&self, shown: &str) -> Exit {
        let (own, other): (&[&Flag], &[&Flag]) = match self.command {
            Command::Main => (&FLAGS, &HEALTH_FLAGS),
            Command::Health => (&HEALTH_FLAGS, &FLAGS),
        };
        let name = shown.strip_prefix("--").unwrap_or_default();
        let hint = if other.iter().any(|flag| flag.long == name) {
            match self.command {
                Command::Main => "; it is a flag of 'health': give it after 'health'".to_owned(),
                Command::Health => {
                    "; it is the service's flag, not health's: give it before 'health'".to_owned()
                }
            }
        } else {
            let mut known: Vec<&str> = own.iter().map(|flag| flag.long).collect();
            known.push("help");
            if self.command == Command::Main {
                known.push("version");
            }
            crate::config::nearest(name, &known)
                .map(|near| format!("; did you mean '--{near}'?"))
                .unwrap_or_default()
        };
        self.error(format!("unexpected argument '{shown}'{hint}"))
    }
}

/// The usage line of `command`, after `Usage: `.
fn usage(name: &str, command: Command) -> String {
    match command {
        Command::Main => format!("{name} [OPTIONS] [COMMAND]"),
        Command::Health => format!("{name} health [OPTIONS]"),
    }
}

/// The text of `--help` for `command`.
fn help(app: &App, command: Command) -> String {
    let (about, flags, version): (_, &[&Flag], _) = match command {
        Command::Main => (app.about, &FLAGS, true),
        Command::Health => (Some(HEALTH_ABOUT), &HEALTH_FLAGS, false),
    };
    let mut rows: Vec<(String, &str)> = flags
        .iter()
        .map(|flag| {
            let short = flag.short.map_or_else(|| "    ".to_owned(), |short| format!("-{short}, "));
            (format!("{short}--{} <{}>", flag.long, flag.value), flag.help)
        })
        .collect();
    rows.push(("-h, --help".to_owned(), "Print help"));
    if version {
        rows.push(("-V, --version".to_owned(), "Print version"));
    }
    let width = rows.iter().map(|(flag, _)| flag.len()).max().unwrap_or_default();

    let mut text = String::new();
    if let Some(about) = about {
        text += &format!("{about}\n\n");
    }
    text += &format!("Usage: {}\n\n", usage(app.name, command));
    if command == Command::Main {
        text += &format!(
            "Commands:\n  health  {HEALTH_ABOUT}\n  help    Print this message or the help of 'health'\n\n"
        );
    }
    text += "Options:\n";
    for (flag, help) in rows {
        text += &format!("  {flag:width$}  {help}\n");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Vec<OsString> {
        std::iter::once("svc".into()).chain(args.iter().map(|arg| arg.as_ref().to_owned())).collect()
    }

    fn parsed(args: &[&str]) -> Args {
        parse(argv(args)).unwrap_or_else(|exit| panic!("{args:?}: {exit:?}"))
    }

    /// The usage error for `args`, and the command it is about.
    fn refused(args: &[&str]) -> (Command, String) {
        match parse(argv(args)) {
            Err(Exit::Usage(command, message)) => (command, message),
            other => panic!("{args:?}: expected a usage error, got {other:?}"),
        }
    }

    fn app() -> App {
        App::new("svc", "0.1.0")
    }

    #[test]
    fn every_flag_takes_its_value_separate_or_after_an_equals_sign() {
        let some = |value: &str| Some(value.to_owned());
        let cases = [
            ("--listen", "127.0.0.1:1", Args { listen: some("127.0.0.1:1"), ..Args::default() }),
            ("--admin-listen", "127.0.0.1:2", Args { admin_listen: some("127.0.0.1:2"), ..Args::default() }),
            ("--rest-listen", "127.0.0.1:3", Args { rest_listen: some("127.0.0.1:3"), ..Args::default() }),
            ("--config", "a.toml", Args { config: Some(PathBuf::from("a.toml")), ..Args::default() }),
            ("--registry", "static://a=b:1", Args { registry: some("static://a=b:1"), ..Args::default() }),
            ("--log-format", "json", Args { log_format: some("json"), ..Args::default() }),
            ("--log-format", "text", Args { log_format: some("text"), ..Args::default() }),
            ("--set", "a.b=1", Args { set: vec!["a.b=1".to_owned()], ..Args::default() }),
            ("-s", "a.b=1", Args { set: vec!["a.b=1".to_owned()], ..Args::default() }),
        ];
        for (flag, value, expected) in cases {
            assert_eq!(parsed(&[flag, value]), expected, "{flag} {value}");
            assert_eq!(parsed(&[&format!("{flag}={value}")]), expected, "{flag}={value}");
        }
        assert_eq!(parsed(&["-sa.b=1"]).set, ["a.b=1"]);
        // A value that starts with `-` passes attached.
        assert_eq!(parsed(&["--config=-odd.toml"]).config, Some(PathBuf::from("-odd.toml")));
        assert_eq!(parsed(&[]), Args::default());
    }

    #[test]
    fn every_flag_the_help_lists_is_parsed() {
        for flag in FLAGS {
            let args = parsed(&[&format!("--{}", flag.long), "text"]);
            assert_ne!(args, Args::default(), "--{}", flag.long);
            assert!(help(&app(), Command::Main).contains(&format!("--{} <{}>", flag.long, flag.value)));
        }
        for flag in HEALTH_FLAGS {
            let args = parsed(&["health", &format!("--{}", flag.long), "x:1"]);
            assert_ne!(args.health, parsed(&["health"]).health, "--{}", flag.long);
            assert!(help(&app(), Command::Health).contains(&format!("--{} <{}>", flag.long, flag.value)));
        }
    }

    #[test]
    fn set_repeats_in_order() {
        let args = parsed(&["--set", "a=1", "-s", "b=2", "--set=c=3", "-sd=4", "-s=e=5", "--listen", "x"]);
        assert_eq!(args.set, ["a=1", "b=2", "c=3", "d=4", "e=5"]);
        assert_eq!(args.listen.as_deref(), Some("x"));
    }

    #[test]
    fn health_has_defaults_and_keeps_the_flags_given_before_it() {
        let args = parsed(&["health"]);
        assert_eq!(args.health, Some(Health { addr: None, service: String::new(), timeout: "3".to_owned() }));

        let args = parsed(&[
            "--listen",
            "127.0.0.1:7",
            "-s",
            "tls.cert=c",
            "health",
            "--addr",
            "h:1",
            "--service=a.B",
            "--timeout",
            "0.5",
        ]);
        assert_eq!(args.listen.as_deref(), Some("127.0.0.1:7"));
        assert_eq!(args.set, ["tls.cert=c"]);
        let health =
            Health { addr: Some("h:1".to_owned()), service: "a.B".to_owned(), timeout: "0.5".to_owned() };
        assert_eq!(args.health, Some(health));
    }

    #[test]
    fn help_and_version_answer_at_once() {
        for (args, exit) in [
            (&["--help"][..], Exit::Help(Command::Main)),
            (&["-h"], Exit::Help(Command::Main)),
            (&["-xh"], Exit::Usage(Command::Main, "unexpected argument '-x'".to_owned())),
            (&["-hx"], Exit::Help(Command::Main)),
            (&["--listen", "x", "--help", "--nonsense"], Exit::Help(Command::Main)),
            (&["help"], Exit::Help(Command::Main)),
            (&["help", "health"], Exit::Help(Command::Health)),
            (&["health", "--help"], Exit::Help(Command::Health)),
            (&["health", "--timeout", "1", "-h"], Exit::Help(Command::Health)),
            (&["--version"], Exit::Version),
            (&["-V"], Exit::Version),
        ] {
            assert_eq!(parse(argv(args)), Err(exit), "{args:?}");
        }
        assert_eq!(Exit::Version.text(&app()), "svc 0.1.0\n");
    }

    #[test]
    fn help_lists_the_about_line_every_flag_and_health() {
        let text = Exit::Help(Command::Main).text(&app().about("Takes payments for orders"));
        assert!(text.starts_with("Takes payments for orders\n\nUsage: svc [OPTIONS] [COMMAND]\n"), "{text}");
        for flag in FLAGS {
            assert!(text.contains(flag.help), "{}: {text}", flag.long);
        }
        for line in [
            "  health  Ask a running server whether it is SERVING (exit status 0 if it is)\n",
            "      --listen <ADDR>        Address to listen on, HOST:PORT;",
            "  -s, --set <KEY=VALUE>      Set any configuration key",
            "  -h, --help                 Print help\n",
            "  -V, --version              Print version\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
        let text = Exit::Help(Command::Main).text(&app());
        assert!(text.starts_with("Usage: svc [OPTIONS] [COMMAND]\n"), "{text}");

        let text = Exit::Help(Command::Health).text(&app());
        assert!(text.starts_with(&format!("{HEALTH_ABOUT}\n\nUsage: svc health [OPTIONS]\n")), "{text}");
        for line in [
            "      --addr <HOST:PORT>   The server to ask",
            "      --timeout <SECONDS>  How long to wait for the answer [default: 3]\n",
            "  -h, --help               Print help\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
        assert!(!text.contains("--version") && !text.contains("--listen"), "{text}");
    }

    #[test]
    fn a_misspelt_flag_is_named_with_the_nearest_one() {
        let message = |args: &[&str]| refused(args).1;
        assert_eq!(message(&["--lisen", "x"]), "unexpected argument '--lisen'; did you mean '--listen'?");
        assert_eq!(message(&["--lisen=x"]), "unexpected argument '--lisen'; did you mean '--listen'?");
        assert_eq!(
            message(&["--log-fromat", "json"]),
            "unexpected argument '--log-fromat'; did you mean '--log-format'?"
        );
        assert_eq!(message(&["--verison"]), "unexpected argument '--verison'; did you mean '--version'?");
        assert_eq!(
            refused(&["health", "--timout", "1"]),
            (Command::Health, "unexpected argument '--timout'; did you mean '--timeout'?".to_owned())
        );
        assert_eq!(message(&["--frobnicate"]), "unexpected argument '--frobnicate'");
        assert_eq!(message(&["-x"]), "unexpected argument '-x'");
    }

    #[test]
    fn a_flag_of_the_other_command_says_where_it_goes() {
        assert_eq!(
            refused(&["--addr", "h:1", "health"]),
            (
                Command::Main,
                "unexpected argument '--addr'; it is a flag of 'health': give it after 'health'".to_owned()
            )
        );
        assert_eq!(
            refused(&["health", "--listen", "x"]),
            (
                Command::Health,
                "unexpected argument '--listen'; it is the service's flag, not health's: give it before 'health'"
                    .to_owned()
            )
        );
    }

    #[test]
    fn each_usage_error_names_the_argument_and_the_fix() {
        for (args, command, message) in [
            (&["--listen"][..], Command::Main, "'--listen' needs a value: --listen <ADDR>"),
            (&["--listen", "--config", "a.toml"], Command::Main, "'--listen' needs a value: --listen <ADDR>"),
            (&["-s"], Command::Main, "'--set' needs a value: --set <KEY=VALUE>"),
            (&["health", "--addr"], Command::Health, "'--addr' needs a value: --addr <HOST:PORT>"),
            (&["--listen", "a", "--listen=b"], Command::Main, "'--listen' was given twice; give it once"),
            (&["--config", "a", "--config", "b"], Command::Main, "'--config' was given twice; give it once"),
            (
                &["health", "--timeout", "1", "--timeout", "2"],
                Command::Health,
                "'--timeout' was given twice; give it once",
            ),
            (
                &["--log-format", "xml"],
                Command::Main,
                "invalid value 'xml' for '--log-format <FORMAT>'; possible values: text, json",
            ),
            (&["serve"], Command::Main, "unrecognized subcommand 'serve'; the only one is 'health'"),
            (&["helth"], Command::Main, "unrecognized subcommand 'helth'; did you mean 'health'?"),
            (
                &["help", "serve"],
                Command::Main,
                "unrecognized subcommand 'serve'; 'help' takes 'health' or nothing",
            ),
            (
                &["health", "extra"],
                Command::Health,
                "unexpected argument 'extra'; 'health' takes only the flags its --help lists",
            ),
            (
                &["health", "health"],
                Command::Health,
                "unexpected argument 'health'; 'health' takes only the flags its --help lists",
            ),
            (&["--help=yes"], Command::Main, "'--help' takes no value, but was given 'yes'"),
            (&["--version=1"], Command::Main, "'--version' takes no value, but was given '1'"),
        ] {
            assert_eq!(refused(args), (command, message.to_owned()), "{args:?}");
        }
    }

    #[test]
    fn a_usage_error_prints_the_usage_and_where_help_is_and_exits_2() {
        let exit = Exit::Usage(Command::Main, "unexpected argument '--lisen'".to_owned());
        assert_eq!(
            exit.text(&app()),
            "svc: error: unexpected argument '--lisen'\nUsage: svc [OPTIONS] [COMMAND]\n\
             For more information, try 'svc --help'.\n"
        );
        let exit = Exit::Usage(Command::Health, "'--addr' needs a value: --addr <HOST:PORT>".to_owned());
        assert_eq!(
            exit.text(&app()),
            "svc: error: '--addr' needs a value: --addr <HOST:PORT>\nUsage: svc health [OPTIONS]\n\
             For more information, try 'svc health --help'.\n"
        );
    }

    #[cfg(unix)]
    #[test]
    fn arguments_that_are_not_utf8_are_errors_or_paths() {
        use std::os::unix::ffi::OsStringExt;
        let bad = || OsString::from_vec(b"a\xffb".to_vec());
        let refused = |args: Vec<OsString>| match parse(argv(&args)) {
            Err(Exit::Usage(_, message)) => message,
            other => panic!("{args:?}: {other:?}"),
        };
        assert_eq!(
            refused(vec!["--listen".into(), bad()]),
            "the value of '--listen' is not UTF-8: 'a\u{fffd}b'"
        );
        let mut attached = b"--set=".to_vec();
        attached.extend_from_slice(b"k=\xff");
        assert_eq!(
            refused(vec![OsString::from_vec(attached)]),
            "the value of '--set' is not UTF-8: 'k=\u{fffd}'"
        );
        assert_eq!(refused(vec![bad()]), "unrecognized subcommand 'a\u{fffd}b'; the only one is 'health'");
        assert_eq!(refused(vec![OsString::from_vec(b"--\xff".to_vec())]), "unexpected argument '--\u{fffd}'");
        assert_eq!(refused(vec![OsString::from_vec(b"-\xff".to_vec())]), "unexpected argument '-\u{fffd}'");
        let args = parse(argv(&[OsString::from("--config"), bad()])).expect("a path need not be UTF-8");
        assert_eq!(args.config, Some(PathBuf::from(bad())));
    }
}
