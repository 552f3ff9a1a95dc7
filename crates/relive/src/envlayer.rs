//! The environment layer: variables that override file values, as
//! config-rs and figment do. `RELIVE__SERVER__PORT=8080` sets `port` of
//! config `server` to the number 8080; the layer sits above the
//! environment's overlay (`server.<env>.toml`).
//!
//! A variable is `<PREFIX><SEP><CONFIG><SEP><KEY>[<SEP><SUBKEY>...]`
//! (prefix `RELIVE`, separator `__` by default). Names are matched case-
//! insensitively: the config's name and the keys are taken in lowercase
//! (a config named `db-main` or `db/main` is `DB_MAIN`). A value is read
//! as a TOML value when it is one (`8080`, `true`, `1.5`, `[1, 2]`,
//! `{ a = 1 }`, `"quoted"`), and as a string otherwise.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::document::{Document, Parsed, SecretPaths};
use crate::format::Format;

/// Where the environment layer's variables are found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvLayer {
    /// The variables' prefix. Default `RELIVE`.
    pub prefix: String,
    /// What separates the prefix, the config's name and the keys. Default
    /// `__`.
    pub separator: String,
}

impl Default for EnvLayer {
    fn default() -> EnvLayer {
        EnvLayer { prefix: "RELIVE".to_string(), separator: "__".to_string() }
    }
}

/// One variable of the layer, parsed.
#[derive(Debug, Clone)]
struct Var {
    name: String,
    keys: Vec<String>,
    value: Value,
}

/// The layer's variables, by config, read once.
#[derive(Debug, Clone, Default)]
pub(crate) struct EnvOverrides {
    by_config: Arc<BTreeMap<String, Vec<Var>>>,
}

impl EnvOverrides {
    /// The variables of `vars` that belong to the layer.
    pub(crate) fn read(layer: &EnvLayer, vars: impl IntoIterator<Item = (String, String)>) -> EnvOverrides {
        let head = format!("{}{}", layer.prefix, layer.separator).to_ascii_uppercase();
        let mut by_config: BTreeMap<String, Vec<Var>> = BTreeMap::new();
        for (name, raw) in vars {
            let upper = name.to_ascii_uppercase();
            let Some(rest) = upper.strip_prefix(&head) else { continue };
            let mut parts = rest.split(&layer.separator).map(str::to_ascii_lowercase);
            let Some(config) = parts.next().filter(|c| !c.is_empty()) else { continue };
            let keys: Vec<String> = parts.collect();
            if keys.is_empty() || keys.iter().any(String::is_empty) {
                continue;
            }
            by_config.entry(config).or_default().push(Var { name, keys, value: scalar(&raw) });
        }
        EnvOverrides { by_config: Arc::new(by_config) }
    }

    /// The layer's documents for config `name`, one per variable (so that an
    /// error names the variable), in the variables' name order.
    pub(crate) fn documents(&self, name: &str) -> Vec<Parsed> {
        let key = name.replace(['/', '-'], "_").to_ascii_lowercase();
        let Some(vars) = self.by_config.get(&key) else { return Vec::new() };
        let mut vars: Vec<&Var> = vars.iter().collect();
        vars.sort_by(|a, b| a.name.cmp(&b.name));
        vars.into_iter()
            .map(|var| {
                let mut value = var.value.clone();
                for key in var.keys.iter().rev() {
                    let mut map = Map::new();
                    map.insert(key.clone(), value);
                    value = Value::Object(map);
                }
                // No bytes: the value does not come from a text, and an
                // error about it names the variable without a position.
                let doc = Document::new(PathBuf::from(format!("env {}", var.name)), Format::Json, Vec::new());
                Parsed {
                    doc,
                    value: Arc::new(value),
                    secrets: SecretPaths::default(),
                    env: true,
                    references: Arc::from([]),
                }
            })
            .collect()
    }
}

/// A variable's value: a TOML value when it reads as one, else the string.
fn scalar(raw: &str) -> Value {
    #[derive(serde::Deserialize)]
    struct Holder {
        v: toml::Value,
    }
    match toml::from_str::<Holder>(&format!("v = {raw}")) {
        Ok(Holder { v }) => serde_json::to_value(v).unwrap_or_else(|_| Value::String(raw.to_string())),
        Err(_) => Value::String(raw.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn variables_become_typed_overrides_of_their_config() {
        let env = EnvOverrides::read(
            &EnvLayer::default(),
            vars(&[
                ("RELIVE__SERVER__PORT", "8080"),
                ("RELIVE__SERVER__TLS__ENABLED", "true"),
                ("RELIVE__SERVER__HOSTS", "[\"a\", \"b\"]"),
                ("RELIVE__SERVER__NAME", "web 1"),
                ("RELIVE__DB_MAIN__POOL", "4"),
                ("RELIVE_SERVER__PORT", "1"),
                ("OTHER__SERVER__PORT", "1"),
                ("RELIVE__SERVER__", "1"),
            ]),
        );
        let docs = env.documents("server");
        let values: Vec<&Value> = docs.iter().map(|d| &*d.value).collect();
        assert_eq!(
            values,
            [
                &json!({"hosts": ["a", "b"]}),
                &json!({"name": "web 1"}),
                &json!({"port": 8080}),
                &json!({"tls": {"enabled": true}}),
            ]
        );
        assert_eq!(docs[2].doc.origin(), std::path::Path::new("env RELIVE__SERVER__PORT"));
        assert_eq!(*env.documents("db/main")[0].value, json!({"pool": 4}));
        assert!(env.documents("nothing").is_empty());
    }

    #[test]
    fn prefix_and_separator_are_settable() {
        let layer = EnvLayer { prefix: "APP".into(), separator: "_".into() };
        let env = EnvOverrides::read(&layer, vars(&[("APP_SERVER_PORT", "1")]));
        assert_eq!(*env.documents("server")[0].value, json!({"port": 1}));
    }
}
