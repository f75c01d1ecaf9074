//! One environment name per config key, derived from the config structs themselves.
//!
//! `[primary] address` is `STANDBY_PRIMARY_ADDRESS`, `listen` is `STANDBY_LISTEN`: the
//! prefix, then the key's path in capitals joined by `_`. The list of names is not kept
//! by hand: [`Names::of`] asks serde which fields each struct has (every derived
//! `Deserialize` names its fields when it asks for a struct), following the fields that
//! are themselves structs (the sections). A field added to a struct has its variable at
//! once, and a variable that names no field is an error that suggests the closest name,
//! so a mistyped or retired variable (`STANDBY_PRIMARY`, the address's old name in the
//! Lambda) is never silently ignored.

use std::collections::BTreeMap;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};

use super::ENV_PREFIX;

/// The variables of a config type: name -> key path (`["primary", "address"]`).
#[derive(Debug, Clone)]
pub struct Names {
    by_var: BTreeMap<String, Vec<&'static str>>,
    /// In the structs' order, for suggestions and listings.
    ordered: Vec<String>,
}

impl Names {
    /// Every key of `T` (a struct with `#[derive(Deserialize)]`), its sections followed.
    pub fn of<T: de::DeserializeOwned>() -> Names {
        let mut names = Names {
            by_var: BTreeMap::new(),
            ordered: Vec::new(),
        };
        names.walk::<T>(&mut Vec::new());
        names
    }

    fn walk<T: de::DeserializeOwned>(&mut self, path: &mut Vec<&'static str>) {
        match probe::<T>(path) {
            Shape::Struct(fields) => {
                for f in fields {
                    path.push(f);
                    self.walk::<T>(path);
                    path.pop();
                }
            }
            Shape::Leaf => {
                let var = var_name(path);
                self.ordered.push(var.clone());
                self.by_var.insert(var, path.clone());
            }
        }
    }

    /// The key path a variable sets, if it is a config variable.
    pub fn path(&self, var: &str) -> Option<&[&'static str]> {
        self.by_var.get(var).map(Vec::as_slice)
    }

    /// All variable names, in the structs' field order.
    pub fn all(&self) -> impl Iterator<Item = &str> {
        self.ordered.iter().map(String::as_str)
    }

    /// Paths of the keys that name another variable (`auth_password_env`).
    pub fn env_keys(&self) -> impl Iterator<Item = (&str, &[&'static str])> {
        self.ordered
            .iter()
            .map(|v| (v.as_str(), self.by_var[v].as_slice()))
            .filter(|(_, p)| p.last().is_some_and(|k| k.ends_with("_env")))
    }

    /// The known name closest to `var`: a name it is the start of (`STANDBY_PRIMARY` ->
    /// `STANDBY_PRIMARY_ADDRESS`, the section's first key), else the nearest by edit
    /// distance.
    pub fn closest(&self, var: &str) -> Option<&str> {
        let section = format!("{var}_");
        if let Some(first) = self.all().find(|n| n.starts_with(&section)) {
            return Some(first);
        }
        let key = var.strip_prefix(ENV_PREFIX).unwrap_or(var);
        self.all()
            .map(|n| {
                let other = n.strip_prefix(ENV_PREFIX).unwrap_or(n);
                (strsim::damerau_levenshtein(key, other), n)
            })
            .min_by_key(|(d, _)| *d)
            .filter(|(d, _)| *d <= (key.len() / 3).max(1))
            .map(|(_, n)| n)
    }
}

impl Names {
    /// The settings of the section `var` is in (`STANDBY_PRIMARY_SECRET` -> those of
    /// `[primary]`): the section's key path and its variables.
    pub fn section_of(&self, var: &str) -> Option<(String, Vec<&str>)> {
        let mut best: Option<(&[&'static str], Vec<&str>)> = None;
        for name in self.all() {
            let path = &self.by_var[name];
            let section = &path[..path.len() - 1];
            if section.is_empty() || !var.starts_with(&format!("{}_", var_name(section))) {
                continue;
            }
            match &mut best {
                Some((s, names)) if *s == section => names.push(name),
                Some((s, _)) if s.len() >= section.len() => {}
                _ => best = Some((section, vec![name])),
            }
        }
        best.map(|(s, names)| (s.join("."), names))
    }
}

/// `STANDBY_` and the path in capitals.
pub fn var_name(path: &[&str]) -> String {
    let mut s = ENV_PREFIX.to_string();
    s.push_str(&path.join("_").to_ascii_uppercase());
    s
}

/// What a field is: a struct (with these fields) or a value.
enum Shape {
    Struct(&'static [&'static str]),
    Leaf,
}

/// The only "errors" the probe raises: they carry the answer out of `deserialize`.
#[derive(Debug)]
enum Found {
    Struct(&'static [&'static str]),
    Leaf,
}

impl std::fmt::Display for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("probe")
    }
}

impl std::error::Error for Found {}

impl de::Error for Found {
    fn custom<M: std::fmt::Display>(_: M) -> Self {
        Found::Leaf
    }
}

/// Deserialize `T` from a probe that descends along `path` and reports what it finds.
fn probe<T: de::DeserializeOwned>(path: &[&'static str]) -> Shape {
    match T::deserialize(Probe { path }) {
        Err(Found::Struct(fields)) => Shape::Struct(fields),
        _ => Shape::Leaf,
    }
}

/// A deserializer with no data: asked for a struct, it follows `path` into the field of
/// that name, or reports the struct's fields at the end of the path; asked for anything
/// else, the value there is a leaf.
struct Probe<'p> {
    path: &'p [&'static str],
}

impl<'de> Deserializer<'de> for Probe<'_> {
    type Error = Found;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Found> {
        Err(Found::Leaf)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Found> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Found> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Found> {
        match self.path.split_first() {
            None => Err(Found::Struct(fields)),
            Some((field, rest)) => visitor.visit_map(OneField {
                field: Some(field),
                rest,
            }),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf unit unit_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

/// A map with one key, whose value is probed further.
struct OneField<'p> {
    field: Option<&'static str>,
    rest: &'p [&'static str],
}

impl<'de> MapAccess<'de> for OneField<'_> {
    type Error = Found;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Found> {
        match self.field.take() {
            Some(f) => seed
                .deserialize(de::value::BorrowedStrDeserializer::new(f))
                .map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Found> {
        seed.deserialize(Probe { path: self.rest })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn names_come_from_the_structs() {
        let names = Names::of::<Config>();
        assert_eq!(names.path("STANDBY_LISTEN"), Some(&["listen"][..]));
        assert_eq!(
            names.path("STANDBY_PRIMARY_ADDRESS"),
            Some(&["primary", "address"][..])
        );
        assert_eq!(
            names.path("STANDBY_RETENTION_CONFIDENTIAL"),
            Some(&["retention", "confidential"][..])
        );
        assert_eq!(
            names.path("STANDBY_METRICS_STACK"),
            Some(&["metrics", "stack"][..])
        );
        assert_eq!(names.path("STANDBY_TLS_CERT"), Some(&["tls", "cert"][..]));
        assert_eq!(
            names.path("STANDBY_SUBMISSION_RATE_PER_HOUR"),
            Some(&["submission", "rate_per_hour"][..])
        );
        assert_eq!(
            names.path("STANDBY_OUTBOUND_DKIM"),
            Some(&["outbound", "dkim"][..])
        );
        // A section is not a setting.
        assert_eq!(names.path("STANDBY_PRIMARY"), None);
        assert_eq!(names.path("STANDBY_METRICS"), None);
        let env: Vec<_> = names.env_keys().map(|(v, _)| v).collect();
        assert_eq!(
            env,
            [
                "STANDBY_PRIMARY_AUTH_PASSWORD_ENV",
                "STANDBY_METRICS_TOKEN_ENV",
                "STANDBY_WEB_SESSION_KEY_ENV",
                "STANDBY_OUTBOUND_RELAY_PASSWORD_ENV",
                "STANDBY_ALERTS_WEBHOOK_SECRET_ENV"
            ]
        );
    }

    #[test]
    fn no_two_keys_share_a_name() {
        let names = Names::of::<Config>();
        let all: Vec<&str> = names.all().collect();
        let mut unique = all.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(all.len(), unique.len(), "two key paths map to one variable");
        assert!(all.len() > 40, "too few names: {all:?}");
    }

    #[test]
    fn suggestions() {
        let names = Names::of::<Config>();
        assert_eq!(
            names.closest("STANDBY_PRIMARY"),
            Some("STANDBY_PRIMARY_ADDRESS")
        );
        assert_eq!(
            names.closest("STANDBY_METRICS"),
            Some("STANDBY_METRICS_STACK")
        );
        assert_eq!(
            names.closest("STANDBY_PRIMRY_ADDRESS"),
            Some("STANDBY_PRIMARY_ADDRESS")
        );
        assert_eq!(
            names.closest("STANDBY_MAX_MESAGE_SIZE"),
            Some("STANDBY_MAX_MESSAGE_SIZE")
        );
        assert_eq!(names.closest("STANDBY_ZZZZZZZZZZZZZZZZZZZZZZZ"), None);
        assert_eq!(names.closest("STANDBY_QQ"), None);
        let (section, vars) = names.section_of("STANDBY_PRIMARY_SECRET").unwrap();
        assert_eq!(section, "primary");
        assert_eq!(vars[0], "STANDBY_PRIMARY_ADDRESS");
        assert!(
            vars.contains(&"STANDBY_PRIMARY_AUTH_PASSWORD_ENV"),
            "{vars:?}"
        );
        assert!(names.section_of("STANDBY_QQ").is_none());
    }
}
