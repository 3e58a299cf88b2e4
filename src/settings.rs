//! What every configuration section needs, whichever stage owns it: a
//! [`Checker`] that collects invalid values with where each came from
//! (file and line, a flag, or the default) and how to fix it, and helpers
//! for keys written as strings.
//!
//! A leaf module on purpose: each stage defines its own section and checks
//! it with these; `config` assembles the sections and imports the stages,
//! never the other way round.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Where a config file came from, kept to point errors at the right line.
#[derive(Clone, Debug, Default)]
pub struct ConfigOrigin {
    pub(crate) path: Option<PathBuf>,
    pub(crate) text: String,
    /// `section.key` names set on the command line, which win over the
    /// file, with the flag that set each.
    from_flags: HashMap<String, String>,
}

impl ConfigOrigin {
    /// The origin of a file's text.
    pub fn file(path: PathBuf, text: String) -> Self {
        ConfigOrigin { path: Some(path), text, from_flags: HashMap::new() }
    }

    /// Records that a flag of the key's name (`--key`) set `section.key`.
    pub fn set_by_flag(&mut self, section: &str, key: &str) {
        self.set_by_named_flag(section, key, &key.replace('_', "-"));
    }

    /// Records that the flag `--flag` set `section.key`.
    pub fn set_by_named_flag(&mut self, section: &str, key: &str, flag: &str) {
        self.from_flags.insert(format!("{section}.{key}"), flag.to_string());
    }

    /// "flag --key", "FILE line N", or "the default", for an error message.
    fn describe(&self, section: &str, key: &str) -> String {
        if let Some(flag) = self.from_flags.get(&format!("{section}.{key}")) {
            return format!("set by the flag --{flag}");
        }
        match (&self.path, find_key_line(&self.text, section, key)) {
            (Some(path), Some(line)) => format!("in {} line {line}", path.display()),
            (Some(path), None) => format!("from the default (not set in {})", path.display()),
            (None, _) => "from the default".into(),
        }
    }
}

/// The 1-based line of `key = ...` inside `[section]`, if the file sets it.
fn find_key_line(text: &str, section: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            current = header.trim().to_string();
        } else if current == section {
            let name = line.split('=').next().unwrap_or("").trim();
            if name == key {
                return Some(number + 1);
            }
        }
    }
    None
}

/// Collects every invalid value so the user sees them all in one go.
pub struct Checker<'a> {
    origin: &'a ConfigOrigin,
    problems: Vec<String>,
}

impl<'a> Checker<'a> {
    pub fn new(origin: &'a ConfigOrigin) -> Self {
        Checker { origin, problems: Vec::new() }
    }

    /// Records a bad value of `[section] key`, with how to fix it.
    pub fn fail(&mut self, section: &str, key: &str, value: &str, fix: &str) {
        let place = self.origin.describe(section, key);
        self.problems.push(format!("[{section}] {key} = {value} ({place}): {fix}"));
    }

    /// Checks that a number lies in `min..=max`.
    pub fn range(&mut self, section: &str, key: &str, value: f64, min: f64, max: f64) {
        if !(min..=max).contains(&value) {
            self.fail(section, key, &value.to_string(), &format!("use a value from {min} to {max}"));
        }
    }

    pub fn finish(self) -> Result<()> {
        if self.problems.is_empty() {
            return Ok(());
        }
        anyhow::bail!("invalid configuration:\n  {}", self.problems.join("\n  "))
    }
}

/// Refuses a secret file (a key, a token, a password) that anyone but its
/// owner can read or change; `setting` names where it was configured.
pub fn check_private(setting: &str, path: &Path) -> Result<()> {
    let mode = std::fs::metadata(path).with_context(|| format!("cannot read {setting} = {path:?}"))?.permissions().mode();
    if mode & 0o077 != 0 {
        bail!(
            "{setting} = {path:?} is open to group or others (mode {:03o}); a secret must be private to the user camnode runs as: run `chmod 600 {}`",
            mode & 0o777,
            path.display()
        );
    }
    Ok(())
}

/// Reads a secret file after [`check_private`], without its trailing newline.
pub fn read_secret(setting: &str, path: &Path) -> Result<String> {
    check_private(setting, path)?;
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {setting} = {path:?}"))?;
    let secret = text.trim_end_matches(['\r', '\n']).to_string();
    if secret.is_empty() {
        bail!("{setting} = {path:?} is empty: write the secret into it");
    }
    Ok(secret)
}

/// `FromStr` for enums whose serde names are their config values, with an
/// error that lists the choices: `from_str_via_serde!(Mode => "mode": "req, pub")`.
macro_rules! from_str_via_serde {
    ($($ty:ty => $what:literal: $choices:literal),* $(,)?) => {$(
        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                <$ty as serde::Deserialize>::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(s))
                    .map_err(|_| format!("{} '{s}' is not one of {}", $what, $choices))
            }
        }
    )*};
}
pub(crate) use from_str_via_serde;

/// Serde for types written in TOML as strings, through `Display` and `FromStr`.
macro_rules! serde_as_string {
    ($($ty:ty),*) => {$(
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
pub(crate) use serde_as_string;

/// A TOML number or string, as text, for keys written either way
/// (`rate = 30` or `rate = "max"`), parsed then by the key's `FromStr`.
pub(crate) fn number_or_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Int(i64),
        Float(f64),
        Text(String),
    }
    Ok(match <Repr as serde::Deserialize>::deserialize(d)? {
        Repr::Int(n) => n.to_string(),
        Repr::Float(n) => n.to_string(),
        Repr::Text(t) => t,
    })
}
