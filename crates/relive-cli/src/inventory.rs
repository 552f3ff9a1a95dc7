//! What configs a workspace has: a walk of `config/` that names each file
//! the way the library does (`config/db/main.production.yaml` is the
//! `production` overlay of config `db/main`).
//!
//! The library keeps its naming private and has no call that lists a
//! workspace's configs, so this mirrors `relive::paths::config_file`; see the
//! crate's report for the API that would remove the copy.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The files of one config.
#[derive(Debug, Default, Clone)]
pub struct ConfigFiles {
    /// Base files (more than one is an error the library reports).
    pub base: Vec<PathBuf>,
    /// Overlays by environment.
    pub overlays: BTreeMap<String, Vec<PathBuf>>,
    /// `config/<name>.schema.json`, if it exists.
    pub schema: Option<PathBuf>,
}

/// Every config of a workspace, by name.
#[derive(Debug, Default)]
pub struct Inventory {
    /// Configs by name.
    pub configs: BTreeMap<String, ConfigFiles>,
    /// How many config documents there are (schemas not counted).
    pub files: usize,
}

impl Inventory {
    /// Walks `config_dir`. A missing directory is an empty inventory.
    pub fn scan(config_dir: &Path) -> std::io::Result<Inventory> {
        let mut inv = Inventory::default();
        let mut schemas = Vec::new();
        let mut stack = vec![config_dir.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir == config_dir => return Ok(inv),
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                // Hidden files and directories (editor swap files, the
                // `..data` of a Kubernetes ConfigMap) are never configs.
                if name.starts_with('.') {
                    continue;
                }
                let path = entry.path();
                // Follow symlinks, as the library does for files.
                let Ok(meta) = std::fs::metadata(&path) else { continue };
                if meta.is_dir() {
                    if !entry.file_type().is_ok_and(|t| t.is_symlink()) {
                        stack.push(path);
                    }
                    continue;
                }
                match classify(config_dir, &path) {
                    Some(Role::Base(config)) => {
                        inv.configs.entry(config).or_default().base.push(path);
                        inv.files += 1;
                    }
                    Some(Role::Overlay(config, env)) => {
                        inv.configs.entry(config).or_default().overlays.entry(env).or_default().push(path);
                        inv.files += 1;
                    }
                    Some(Role::Schema(config)) => schemas.push((config, path)),
                    None => {}
                }
            }
        }
        for (config, path) in schemas {
            if let Some(files) = inv.configs.get_mut(&config) {
                files.schema = Some(path);
            }
        }
        for files in inv.configs.values_mut() {
            files.base.sort();
            files.overlays.values_mut().for_each(|v| v.sort());
        }
        Ok(inv)
    }

    /// Every environment that has an overlay.
    pub fn envs(&self) -> BTreeSet<String> {
        self.configs.values().flat_map(|c| c.overlays.keys().cloned()).collect()
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Role {
    Base(String),
    Overlay(String, String),
    Schema(String),
}

/// What `path` is: `name.ext`, `name.env.ext` or `name.schema.json`.
fn classify(config_dir: &Path, path: &Path) -> Option<Role> {
    let rel = path.strip_prefix(config_dir).ok()?;
    let file_name = rel.file_name()?.to_str()?;
    let (stem, ext) = file_name.rsplit_once('.')?;
    if !matches!(ext, "toml" | "yaml" | "yml" | "json") {
        return None;
    }
    let (base, env) = match stem.split_once('.') {
        Some((base, env)) => (base, Some(env)),
        None => (stem, None),
    };
    if base.is_empty() || env == Some("") {
        return None;
    }
    let mut name = String::new();
    for part in rel.parent()?.components() {
        name.push_str(part.as_os_str().to_str()?);
        name.push('/');
    }
    name.push_str(base);
    Some(match env {
        None => Role::Base(name),
        Some("schema") if ext == "json" => Role::Schema(name),
        Some("schema") => return None,
        Some(env) => Role::Overlay(name, env.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_files_like_the_library() {
        let c = |p: &str| classify(Path::new("/w/config"), Path::new(p));
        assert_eq!(c("/w/config/app.toml"), Some(Role::Base("app".into())));
        assert_eq!(c("/w/config/db/main.production.yaml"), Some(Role::Overlay("db/main".into(), "production".into())));
        assert_eq!(c("/w/config/app.schema.json"), Some(Role::Schema("app".into())));
        assert_eq!(c("/w/config/app.schema.toml"), None);
        assert_eq!(c("/w/config/app.txt"), None);
        assert_eq!(c("/w/config/.toml"), None);
    }

    #[test]
    fn scans_a_tree() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        std::fs::create_dir_all(config.join("db")).unwrap();
        std::fs::create_dir_all(config.join("..data")).unwrap();
        for f in ["app.toml", "app.prod.toml", "app.schema.json", "db/main.yaml", "..data/x.toml", "notes.md"] {
            std::fs::write(config.join(f), "").unwrap();
        }
        let inv = Inventory::scan(&config).unwrap();
        assert_eq!(inv.files, 3);
        assert_eq!(inv.configs.keys().collect::<Vec<_>>(), ["app", "db/main"]);
        assert!(inv.configs["app"].schema.is_some());
        assert_eq!(inv.envs().into_iter().collect::<Vec<_>>(), ["prod"]);
    }
}
