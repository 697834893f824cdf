//! meshd's configuration file (`/etc/mesh/meshd.toml`, `--config`): a key for every flag,
//! named like the flag without its dashes (`password-file = "/etc/mesh/password"`), the peers
//! to dial under `peers`. The file's values become the flags' defaults, so a flag on the
//! command line or its environment variable overrides them. An unknown key, or a value the
//! flag would refuse, is an error naming the file, the line and the key.

use std::{ffi::OsString, path::Path};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Arg, ArgAction, Command};
use toml::{Spanned, Value};

/// Where meshd looks when `--config` is not given (a missing file there is no error).
pub const DEFAULT_PATH: &str = "/etc/mesh/meshd.toml";

/// Flags that make no sense in a file: they pick a one-off action, or the file itself.
const NOT_IN_FILE: &[&str] = &["config", "cleanup", "probe", "keep_tap", "help", "version"];

/// One key of the file: its name, the line it is on, and its value(s) as command-line text.
#[derive(Debug, PartialEq, Eq)]
pub struct Setting {
    pub key: String,
    pub line: usize,
    pub values: Vec<String>,
}

/// The file's keys in order. TOML syntax errors name the line.
pub fn parse(file: &Path, text: &str) -> Result<Vec<Setting>> {
    let table: std::collections::BTreeMap<Spanned<String>, Spanned<Value>> =
        toml::from_str(text).map_err(|e: toml::de::Error| {
            let line = e.span().map_or(0, |s| line_of(text, s.start));
            let what = match e.message().trim() {
                "" => "not valid TOML (a value is missing or malformed)",
                m => m,
            };
            anyhow!("{}:{line}: {what}", file.display())
        })?;
    let mut out: Vec<Setting> = table
        .into_iter()
        .map(|(k, v)| {
            let line = line_of(text, k.span().start);
            let key = k.into_inner();
            let values = as_args(v.get_ref())
                .map_err(|what| anyhow!("{}:{line}: {key}: {what}", file.display()))?;
            Ok(Setting { key, line, values })
        })
        .collect::<Result<_>>()?;
    out.sort_by_key(|s| s.line);
    Ok(out)
}

/// A TOML value as the text a flag would take: strings, numbers and booleans as they read;
/// an array as one value per element.
fn as_args(v: &Value) -> Result<Vec<String>, String> {
    match v {
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::Array(_) | Value::Table(_) => Err("nested lists or tables".to_owned()),
                other => as_args(other).map(|mut v| v.remove(0)),
            })
            .collect(),
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Integer(i) => Ok(vec![i.to_string()]),
        Value::Float(f) => Ok(vec![f.to_string()]),
        Value::Boolean(b) => Ok(vec![b.to_string()]),
        Value::Datetime(d) => Ok(vec![d.to_string()]),
        Value::Table(_) => Err("a table where a value was expected".to_owned()),
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The key that names `arg` in the file: its long flag, or its id for a positional.
fn key_of(arg: &Arg) -> String {
    arg.get_long()
        .map(str::to_owned)
        .unwrap_or_else(|| arg.get_id().as_str().replace('_', "-"))
}

/// `cmd` with the file's settings as its defaults. Every value is checked by the flag's own
/// parser, so a bad one names the file and the line rather than a flag nobody typed.
pub fn apply(mut cmd: Command, file: &Path, settings: Vec<Setting>) -> Result<Command> {
    let known: Vec<(String, String)> = cmd
        .get_arguments()
        .filter(|a| !NOT_IN_FILE.contains(&a.get_id().as_str()) && !a.is_hide_set())
        .map(|a| (key_of(a), a.get_id().as_str().to_owned()))
        .collect();
    for s in settings {
        let at = format!("{}:{}", file.display(), s.line);
        let Some((_, id)) = known.iter().find(|(k, _)| *k == s.key) else {
            let mut keys: Vec<&str> = known.iter().map(|(k, _)| k.as_str()).collect();
            keys.sort();
            bail!(
                "{at}: unknown key `{}`; the keys are: {}",
                s.key,
                keys.join(", ")
            );
        };
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_id() == id.as_str())
            .expect("found above");
        let many = matches!(arg.get_action(), ArgAction::Append)
            || arg.get_num_args().is_some_and(|n| n.max_values() > 1)
            || arg.get_value_delimiter().is_some();
        if s.values.len() != 1 && !many {
            bail!("{at}: {}: one value expected, not a list", s.key);
        }
        // The flag's own parser, alone (without the flag's ties to others).
        let check = Command::new("check").no_binary_name(true).arg(
            Arg::new("value")
                .value_parser(arg.get_value_parser().clone())
                .num_args(1..)
                .allow_hyphen_values(true),
        );
        check
            .try_get_matches_from(&s.values)
            .map_err(|e| anyhow!("{at}: {}: {}", s.key, first_line(&e.to_string())))?;
        let values = s.values.clone();
        let name = id.clone();
        cmd = cmd.mut_arg(name, move |a| a.default_values(values));
    }
    Ok(cmd)
}

/// clap's error text without its "For more information" tail or the stand-in argument.
fn first_line(e: &str) -> String {
    e.lines()
        .next()
        .unwrap_or(e)
        .trim_start_matches("error: ")
        .replace(" for '[value]...'", "")
}

/// The configuration file to read: `--config FILE` or `--config=FILE` among `args`, else
/// MESH_CONFIG, else the default path when it exists. `Ok(None)`: none.
pub fn path_from(args: &[OsString], env: Option<OsString>) -> Result<Option<std::path::PathBuf>> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let a = a.to_string_lossy();
        if a == "--" {
            break;
        }
        if a == "--config" {
            let p = it.next().context("--config needs a file")?;
            return Ok(Some(p.into()));
        }
        if let Some(p) = a.strip_prefix("--config=") {
            return Ok(Some(p.into()));
        }
    }
    if let Some(p) = env {
        return Ok(Some(p.into()));
    }
    let default = Path::new(DEFAULT_PATH);
    Ok(default.exists().then(|| default.to_owned()))
}

/// Reads and applies the file at `path` to `cmd`.
pub fn load(cmd: Command, path: &Path) -> Result<Command> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the configuration file {}", path.display()))?;
    apply(cmd, path, parse(path, &text)?)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use clap::{Parser, ValueEnum};

    use super::*;

    #[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
    enum Kind {
        Ebpf,
        Tap,
    }

    #[derive(Parser, Debug)]
    struct Args {
        #[arg(value_name = "PEER")]
        peers: Vec<String>,
        #[arg(long, env = "MESH_TEST_DATA_PORT", default_value_t = 6784)]
        data_port: u16,
        #[arg(long)]
        password_file: Option<PathBuf>,
        #[arg(long)]
        insecure: bool,
        #[arg(long, value_enum, default_value_t = Kind::Ebpf)]
        datapath: Kind,
        #[arg(long, value_delimiter = ',')]
        trusted_subnets: Vec<String>,
        #[arg(long)]
        config: Option<PathBuf>,
    }

    fn args(file: &str, cli: &[&str]) -> Result<Args> {
        use clap::{CommandFactory, FromArgMatches};
        let path = Path::new("/etc/mesh/meshd.toml");
        let cmd = apply(Args::command(), path, parse(path, file)?)?;
        let m = cmd.try_get_matches_from(std::iter::once("meshd").chain(cli.iter().copied()))?;
        Ok(Args::from_arg_matches(&m)?)
    }

    const FILE: &str = r#"
# A comment.
peers = ["10.0.0.2", "10.0.0.3:7000"]
data-port = 7784
password-file = "/etc/mesh/password"
datapath = "tap"
trusted-subnets = ["10.0.0.0/8", "192.168.0.0/16"]
"#;

    #[test]
    fn every_key_sets_its_flag_and_the_command_line_wins() {
        let a = args(FILE, &[]).unwrap();
        assert_eq!(a.peers, ["10.0.0.2", "10.0.0.3:7000"]);
        assert_eq!(a.data_port, 7784);
        assert_eq!(a.password_file, Some("/etc/mesh/password".into()));
        assert_eq!(a.datapath, Kind::Tap);
        assert_eq!(a.trusted_subnets, ["10.0.0.0/8", "192.168.0.0/16"]);
        assert!(!a.insecure);
        let a = args(
            FILE,
            &["--data-port", "9000", "10.9.9.9", "--datapath", "ebpf"],
        )
        .unwrap();
        assert_eq!(a.data_port, 9000);
        assert_eq!(a.peers, ["10.9.9.9"]);
        assert_eq!(a.datapath, Kind::Ebpf);
        assert!(args("insecure = true", &[]).unwrap().insecure);
    }

    #[test]
    fn unknown_keys_bad_values_and_bad_syntax_name_the_file_the_line_and_the_key() {
        let e = args("\n\npasword-file = \"x\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/etc/mesh/meshd.toml:3: unknown key `pasword-file`"),
            "{e}"
        );
        assert!(e.contains("password-file"), "lists the keys: {e}");
        let e = args("data-port = 70000\n", &[]).unwrap_err().to_string();
        assert!(e.starts_with("/etc/mesh/meshd.toml:1: data-port: "), "{e}");
        assert!(e.contains("70000"), "{e}");
        let e = args("\ndatapath = \"fast\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/etc/mesh/meshd.toml:2: datapath: "), "{e}");
        let e = args("data-port = [1, 2]\n", &[]).unwrap_err().to_string();
        assert!(e.contains(":1: data-port: one value expected"), "{e}");
        let e = args("a = \n", &[]).unwrap_err().to_string();
        assert!(e.starts_with("/etc/mesh/meshd.toml:1: "), "{e}");
        let e = args("config = \"/x\"\n", &[]).unwrap_err().to_string();
        assert!(e.contains("unknown key `config`"), "{e}");
    }

    #[test]
    fn the_file_comes_from_the_flag_then_the_environment() {
        let a = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            path_from(&a(&["meshd", "--config", "/a.toml"]), Some("/b".into())).unwrap(),
            Some("/a.toml".into())
        );
        assert_eq!(
            path_from(&a(&["meshd", "--config=/a.toml"]), None).unwrap(),
            Some("/a.toml".into())
        );
        assert_eq!(
            path_from(&a(&["meshd"]), Some("/b".into())).unwrap(),
            Some("/b".into())
        );
        assert!(path_from(&a(&["meshd", "--config"]), None).is_err());
    }
}
