//! Strict reading of the daemons' configuration: every key of a file or of a
//! `FERRY_*` variable that matches no setting, with its dotted path and, for
//! a near miss, the setting it was probably meant to be. Shared by the
//! agent's and the controller's loading so both refuse the same way.
//!
//! Why `serde_ignored` and not `#[serde(deny_unknown_fields)]`: serde's
//! attribute stops at the first unknown key, names no path, must be repeated
//! on every struct (one forgotten struct is a silent hole) and does not
//! compose with `#[serde(flatten)]`. `serde_ignored` wraps the deserializer
//! once, sees every key any struct at any depth ignores, and gives its path,
//! so one run lists every problem. `serde_path_to_error` only reports the
//! first failure, which is what type errors need (and the `config` crate
//! already names the key of those). The near-miss candidates come from the
//! types themselves (the field names serde hands the deserializer, read by a
//! small probe), so no list of names is kept by hand. Internally tagged enums
//! are read through serde's buffered content, out of `serde_ignored`'s sight;
//! [`unknown_after_round_trip`] covers those by comparing what was written
//! with what the value serializes back to.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeOwned, IntoDeserializer};
use serde::Serialize;

/// Prefix of every variable that sets a daemon's configuration.
pub const ENV_PREFIX: &str = "FERRY_";

/// `FERRY_*` variables that are not settings yet belong to ferry: the
/// daemons' own flags (`--config`, the log format), the CLI's, and the
/// scripts' and tests' knobs that a shell or test run may carry into a
/// daemon it starts. Exact names, then prefixes.
pub const NOT_SETTINGS: &[&str] = &[
    "FERRY_CONFIG",
    "FERRY_LOG_FORMAT",
    "FERRY_ACTOR",
    "FERRY_OUTPUT",
    "FERRY_REVIEWER_KEY",
    "FERRY_IMAGE_PROFILE",
];
/// Prefixes of `FERRY_*` variables of ferry's scripts and tests (see [`NOT_SETTINGS`]).
pub const NOT_SETTINGS_PREFIXES: &[&str] = &[
    "FERRY_E2E_",
    "FERRY_FLEET_",
    "FERRY_DEMO_",
    "FERRY_COMPOSE_",
];

/// A key that matches no setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownKey {
    /// Dotted path of the key (`services.web.heath`).
    pub path: String,
    /// The `FERRY_*` variable that set it, when it came from the environment.
    pub variable: Option<String>,
    /// The setting at the same place it was probably meant to be, spelled
    /// as the key was (a variable name for a variable).
    pub suggestion: Option<String>,
}

impl UnknownKey {
    /// What names the key: the variable that set it, or its path.
    pub fn name(&self) -> &str {
        self.variable.as_deref().unwrap_or(&self.path)
    }

    /// What is wrong, and the near miss if there is one.
    pub fn message(&self) -> String {
        let what = match &self.variable {
            Some(_) => format!("matches no setting (it would set `{}`)", self.path),
            None => "unknown setting".to_owned(),
        };
        match &self.suggestion {
            Some(suggestion) => format!("{what}; did you mean `{suggestion}`?"),
            None => what,
        }
    }
}

impl fmt::Display for UnknownKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name(), self.message())
    }
}

/// The `FERRY_*` variables that may set a daemon's configuration, each with
/// the key it sets, the way the `config` crate maps them: the prefix
/// dropped, lowercased, and `separator` (when the daemon has one, `__`)
/// standing for a dot.
#[derive(Clone, Debug, Default)]
pub struct SettingVariables {
    separator: Option<&'static str>,
    by_name: BTreeMap<String, String>,
}

impl SettingVariables {
    /// The variables among `vars` that are meant as settings: prefixed
    /// `FERRY_`, not one of [`NOT_SETTINGS`], with a non-empty value.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
        separator: Option<&'static str>,
    ) -> Self {
        let by_name = vars
            .into_iter()
            .filter(|(name, value)| {
                name.starts_with(ENV_PREFIX)
                    && !value.is_empty()
                    && !NOT_SETTINGS.contains(&name.as_str())
                    && !NOT_SETTINGS_PREFIXES.iter().any(|p| name.starts_with(p))
            })
            .collect();
        SettingVariables { separator, by_name }
    }

    /// The variables and their values, for the `config` crate's environment source.
    pub fn values(&self) -> impl Iterator<Item = (&str, &str)> {
        self.by_name.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The key `name` sets.
    fn key_of(&self, name: &str) -> String {
        let rest = name.strip_prefix(ENV_PREFIX).unwrap_or(name).to_lowercase();
        match self.separator {
            Some(separator) => rest.replace(separator, "."),
            None => rest,
        }
    }

    /// The variable that sets `path`, or a key under it.
    fn setting(&self, path: &str) -> Option<&str> {
        self.by_name.keys().map(String::as_str).find(|name| {
            let key = self.key_of(name);
            key == path || key.starts_with(&format!("{path}."))
        })
    }

    /// The variable that would set `segments`.
    fn name_of(&self, segments: &[String]) -> String {
        let joined = segments.join(self.separator.unwrap_or("_"));
        format!("{ENV_PREFIX}{}", joined.to_uppercase())
    }
}

/// Deserializes a `T` from `deserializer`, collecting every key no field of
/// `T` takes, at any depth, with a near-miss suggestion and the variable
/// that set it. The unknown keys are returned even when deserializing fails
/// (those found before the failure).
pub fn deserialize_strict<'de, T, D>(
    deserializer: D,
    variables: &SettingVariables,
) -> (Result<T, D::Error>, Vec<UnknownKey>)
where
    T: DeserializeOwned,
    D: de::Deserializer<'de>,
{
    let mut ignored: Vec<Vec<String>> = Vec::new();
    let result = serde_ignored::deserialize(deserializer, |path| ignored.push(segments(&path)));
    let unknown = ignored
        .into_iter()
        .map(|segments| {
            let suggestion = segments
                .split_last()
                .and_then(|(key, parent)| closest(key, field_names::<T>(parent)));
            unknown_key(&segments, suggestion, variables)
        })
        .collect();
    (result, unknown)
}

/// The keys of `written` (the table at `path`, as the file and variables
/// gave it) that `read` does not serialize back: the unknown keys of a value
/// serde reads through buffered content, such as an internally tagged enum.
pub fn unknown_after_round_trip(
    path: &str,
    written: &serde_json::Value,
    read: &impl Serialize,
    variables: &SettingVariables,
) -> Vec<UnknownKey> {
    let (Some(written), Ok(serde_json::Value::Object(read))) =
        (written.as_object(), serde_json::to_value(read))
    else {
        return Vec::new();
    };
    let parent: Vec<String> = path.split('.').map(str::to_owned).collect();
    written
        .keys()
        .filter(|key| !read.contains_key(*key))
        .map(|key| {
            let suggestion = closest(key, read.keys().map(String::as_str));
            let mut segments = parent.clone();
            segments.push(key.clone());
            unknown_key(&segments, suggestion, variables)
        })
        .collect()
}

fn unknown_key(
    segments: &[String],
    suggestion: Option<&str>,
    variables: &SettingVariables,
) -> UnknownKey {
    let path = segments.join(".");
    let variable = variables.setting(&path).map(str::to_owned);
    let suggestion = suggestion.map(|name| match variable {
        Some(_) => {
            let mut meant = segments.to_vec();
            if let Some(last) = meant.last_mut() {
                *last = name.to_owned();
            }
            variables.name_of(&meant)
        }
        None => match segments.split_last() {
            Some((_, parent)) if !parent.is_empty() => format!("{}.{name}", parent.join(".")),
            _ => name.to_owned(),
        },
    });
    UnknownKey {
        path,
        variable,
        suggestion,
    }
}

/// The map keys and sequence indexes of `path`, without serde_ignored's
/// `?` steps for options and newtypes.
fn segments(path: &serde_ignored::Path) -> Vec<String> {
    let mut reversed = Vec::new();
    let mut step = path;
    loop {
        step = match step {
            serde_ignored::Path::Root => break,
            serde_ignored::Path::Seq { parent, index } => {
                reversed.push(index.to_string());
                parent
            }
            serde_ignored::Path::Map { parent, key } => {
                reversed.push(key.clone());
                parent
            }
            serde_ignored::Path::Some { parent }
            | serde_ignored::Path::NewtypeStruct { parent }
            | serde_ignored::Path::NewtypeVariant { parent } => parent,
        };
    }
    reversed.reverse();
    reversed
}

/// The candidate nearest `key` if it is a near miss: a few edits away,
/// relative to the key's length.
fn closest<'a>(key: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let allowed = (key.chars().count() / 3).max(2);
    candidates
        .into_iter()
        .map(|candidate| (strsim::levenshtein(key, candidate), candidate))
        .filter(|(distance, _)| *distance <= allowed)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// The field names of the struct `T` holds at `path` (map keys and sequence
/// indexes name the entry), empty where there is none: found by handing
/// `T`'s `Deserialize` a probe that walks down `path` and records the field
/// names serde passes to `deserialize_struct` there.
fn field_names<T: DeserializeOwned>(path: &[String]) -> Vec<&'static str> {
    let found = RefCell::new(Vec::new());
    // The probe always ends in an error: it has no values to give.
    let _ = T::deserialize(Probe {
        path,
        found: &found,
    });
    found.into_inner()
}

/// See [`field_names`].
struct Probe<'a> {
    path: &'a [String],
    found: &'a RefCell<Vec<&'static str>>,
}

fn probe_end() -> de::value::Error {
    de::Error::custom("probe reached its end")
}

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: de::Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(probe_end())
    }

    fn deserialize_struct<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.path.split_first() {
            None => {
                self.found.replace(fields.to_vec());
                Err(probe_end())
            }
            Some((key, rest)) => visitor.visit_map(OneEntry {
                key: Some(key.clone()),
                value: Probe {
                    path: rest,
                    found: self.found,
                },
            }),
        }
    }

    fn deserialize_map<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.path.split_first() {
            None => Err(probe_end()),
            Some((key, rest)) => visitor.visit_map(OneEntry {
                key: Some(key.clone()),
                value: Probe {
                    path: rest,
                    found: self.found,
                },
            }),
        }
    }

    fn deserialize_seq<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.path.split_first() {
            None => Err(probe_end()),
            Some((_index, rest)) => visitor.visit_seq(OneElement {
                value: Some(Probe {
                    path: rest,
                    found: self.found,
                }),
            }),
        }
    }

    fn deserialize_option<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct tuple tuple_struct enum identifier
        ignored_any
    }
}

/// A map of the one entry the probe walks into.
struct OneEntry<'a> {
    key: Option<String>,
    value: Probe<'a>,
}

impl<'de, 'a> de::MapAccess<'de> for OneEntry<'a> {
    type Error = de::value::Error;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        match self.key.take() {
            Some(key) => seed.deserialize(key.into_deserializer()).map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        seed.deserialize(Probe {
            path: self.value.path,
            found: self.value.found,
        })
    }
}

/// A sequence of the one element the probe walks into.
struct OneElement<'a> {
    value: Option<Probe<'a>>,
}

impl<'de, 'a> de::SeqAccess<'de> for OneElement<'a> {
    type Error = de::value::Error;

    fn next_element_seed<T: de::DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        match self.value.take() {
            Some(probe) => seed.deserialize(probe).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, Serialize)]
    #[allow(dead_code)]
    struct Top {
        approvals_required: Option<u32>,
        #[serde(default)]
        services: BTreeMap<String, Service>,
        #[serde(default)]
        operators: Vec<Health>,
    }

    #[derive(Debug, Deserialize, Serialize)]
    #[allow(dead_code)]
    struct Service {
        port: Option<u16>,
        #[serde(default)]
        health: Option<Health>,
    }

    #[derive(Debug, Default, Deserialize, Serialize)]
    #[allow(dead_code)]
    struct Health {
        path: Option<String>,
        interval: Option<String>,
    }

    fn unknown(json: serde_json::Value, vars: &[(&str, &str)]) -> Vec<String> {
        let variables = SettingVariables::from_vars(
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
            Some("__"),
        );
        let (result, unknown) = deserialize_strict::<Top, _>(json, &variables);
        result.unwrap();
        unknown.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn every_unknown_key_is_named_by_its_path_with_a_near_miss() {
        let found = unknown(
            serde_json::json!({
                "approvals_requird": 2,
                "services": {"web": {"port": 1, "heath": {"path": "/"}, "health": {"pth": "/"}}},
                "operators": [{"path": "/"}, {"intervall": "1s"}],
                "zzz": 1,
            }),
            &[],
        );
        assert_eq!(
            found,
            [
                "approvals_requird: unknown setting; did you mean `approvals_required`?",
                "operators.1.intervall: unknown setting; did you mean `operators.1.interval`?",
                "services.web.health.pth: unknown setting; did you mean `services.web.health.path`?",
                "services.web.heath: unknown setting; did you mean `services.web.health`?",
                "zzz: unknown setting",
            ]
        );
    }

    #[test]
    fn an_unknown_key_from_a_variable_names_the_variable() {
        let found = unknown(
            serde_json::json!({"services": {"web": {"prot": 8080}}}),
            &[("FERRY_SERVICES__WEB__PROT", "8080")],
        );
        assert_eq!(
            found,
            ["FERRY_SERVICES__WEB__PROT: matches no setting (it would set `services.web.prot`); did you mean `FERRY_SERVICES__WEB__PORT`?"]
        );
    }

    #[test]
    fn variables_of_other_ferry_programs_are_not_settings() {
        let variables = SettingVariables::from_vars(
            [
                ("FERRY_CONFIG", "x"),
                ("FERRY_E2E_NATS", "deploy"),
                ("FERRY_HOST", "web-1"),
                ("HOME", "/root"),
                ("FERRY_EMPTY", ""),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
            None,
        );
        assert_eq!(
            variables.values().collect::<Vec<_>>(),
            [("FERRY_HOST", "web-1")]
        );
    }

    #[test]
    fn a_round_trip_finds_keys_a_tagged_enum_dropped() {
        let written = serde_json::json!({"path": "/", "intervl": "1s"});
        let read = Health {
            path: Some("/".into()),
            interval: None,
        };
        let found = unknown_after_round_trip(
            "services.web.health",
            &written,
            &read,
            &SettingVariables::default(),
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].path, "services.web.health.intervl");
    }
}
