//! Which paths relive cares about, and what a config file's name says.

use std::path::{Component, Path, PathBuf};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::error::{ConfigError, ConfigErrorKind, Error};
use crate::format::Format;

/// What a config file's name says: `config/db/main.production.yaml` is the
/// `production` overlay of config `db/main`, in YAML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigFile {
    pub name: String,
    pub env: Option<String>,
    pub format: Format,
}

/// The overlay "env" reserved for JSON Schemas (`app.schema.json`), which are
/// not config documents.
const SCHEMA_ENV: &str = "schema";

/// What a file under `config/` is to relive, by its path alone (see
/// [`config_path`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigPath {
    /// `name[.env].ext`: a document of config `name`, the overlay for
    /// environment `env` if there is one.
    Document {
        /// The config's name: `db/main` for `db/main.production.yaml`.
        name: String,
        /// The overlay's environment: `production` there.
        env: Option<String>,
        /// The document's format, from the extension.
        format: Format,
    },
    /// `name.schema.json`: the JSON Schema of config `name`.
    Schema {
        /// The config the schema is for.
        name: String,
    },
}

/// What `rel`, a path relative to the workspace's `config/`, is to relive:
/// a config document, a schema, or nothing it loads (`None`: another
/// extension, a hidden component, an empty name or environment). The one
/// rule the engine, `relive check` and `relive apply` share.
///
/// ```
/// use relive::{ConfigPath, Format, config_path};
/// use std::path::Path;
///
/// let doc = config_path(Path::new("db/main.production.yaml"));
/// assert_eq!(
///     doc,
///     Some(ConfigPath::Document { name: "db/main".into(), env: Some("production".into()), format: Format::Yaml })
/// );
/// assert_eq!(config_path(Path::new("app.schema.json")), Some(ConfigPath::Schema { name: "app".into() }));
/// assert_eq!(config_path(Path::new(".hidden/app.toml")), None);
/// ```
pub fn config_path(rel: &Path) -> Option<ConfigPath> {
    let format = Format::from_path(rel)?;
    let file_name = rel.file_name()?.to_str()?;
    let stem = file_name.rsplit_once('.')?.0;
    let (base, env) = match stem.split_once('.') {
        Some((base, env)) => (base, Some(env)),
        None => (stem, None),
    };
    if base.is_empty() || env == Some("") {
        return None;
    }
    let mut name = String::new();
    for component in rel.parent()?.components() {
        let Component::Normal(part) = component else { return None };
        let part = part.to_str()?;
        if part.starts_with('.') {
            return None;
        }
        name.push_str(part);
        name.push('/');
    }
    name.push_str(base);
    if env == Some(SCHEMA_ENV) {
        return (format == Format::Json).then_some(ConfigPath::Schema { name });
    }
    Some(ConfigPath::Document { name, env: env.map(str::to_string), format })
}

/// Reads a config file's name, env and format from `path`, which must be
/// under `config_dir`. Returns `None` for anything that is not a config
/// document: other extensions, hidden files, schemas.
pub(crate) fn config_file(config_dir: &Path, path: &Path) -> Option<ConfigFile> {
    match config_path(path.strip_prefix(config_dir).ok()?)? {
        ConfigPath::Document { name, env, format } => Some(ConfigFile { name, env, format }),
        ConfigPath::Schema { .. } => None,
    }
}

/// The files that make up config `name` for environment `env`, base first:
/// at most one base file and at most one overlay. `files` are all of the
/// config's files with what their names say.
pub(crate) fn select<'a>(
    name: &str,
    env: Option<&str>,
    config_dir: &Path,
    files: impl IntoIterator<Item = (&'a Path, &'a ConfigFile)>,
) -> Result<Vec<PathBuf>, ConfigError> {
    let mut base = Vec::new();
    let mut overlay = Vec::new();
    for (path, cf) in files {
        match cf.env.as_deref() {
            None => base.push(path.to_path_buf()),
            Some(e) if Some(e) == env => overlay.push(path.to_path_buf()),
            Some(_) => {}
        }
    }
    for (role, list) in [("base file", &mut base), ("overlay", &mut overlay)] {
        list.sort();
        if list.len() > 1 {
            let names: Vec<String> = list.iter().map(|p| p.display().to_string()).collect();
            return Err(ConfigError::new(
                ConfigErrorKind::Ambiguous,
                format!("config `{name}` has more than one {role}: {}; keep one", names.join(", ")),
            )
            .with_file(&list[1]));
        }
    }
    if base.is_empty() && overlay.is_empty() {
        return Err(ConfigError::new(
            ConfigErrorKind::Missing,
            format!("no file for config `{name}` in {}", config_dir.display()),
        ));
    }
    base.extend(overlay);
    Ok(base)
}

/// Decides which paths are watched and reported, from the watch and exclude
/// globs of a [`HotReloadConfig`](crate::HotReloadConfig), relative to the
/// workspace root.
///
/// Exclusions apply to every component of a path: a file inside an excluded
/// directory (`config/..2026_01_01/app.json` under `**/.*`) is excluded too,
/// like in `.gitignore`.
#[derive(Debug, Clone)]
pub(crate) struct PathFilter {
    root: PathBuf,
    watch: GlobSet,
    exclude: GlobSet,
    /// Top-level directories (relative) that hold watched files, from the
    /// literal prefixes of the watch patterns.
    dirs: Vec<PathBuf>,
}

impl PathFilter {
    pub(crate) fn new(root: &Path, watch: &[String], exclude: &[String]) -> Result<PathFilter, Error> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for pattern in watch {
            let prefix: PathBuf = Path::new(pattern)
                .components()
                .take_while(|c| match c {
                    Component::Normal(s) => !s.to_string_lossy().contains(['*', '?', '[', '{']),
                    _ => false,
                })
                .collect();
            // A pattern whose prefix is the pattern itself names one file;
            // watch its directory.
            let dir = if prefix.as_os_str() == pattern.as_str() {
                prefix.parent().map(Path::to_path_buf).unwrap_or_default()
            } else {
                prefix
            };
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        Ok(PathFilter { root: root.to_path_buf(), watch: build_set(watch)?, exclude: build_set(exclude)?, dirs })
    }

    /// The absolute directories to watch recursively.
    #[cfg(test)]
    pub(crate) fn watch_dirs(&self) -> impl Iterator<Item = PathBuf> + '_ {
        self.dirs.iter().map(|d| self.root.join(d))
    }

    /// True if `path` (absolute) is a file relive reports.
    pub(crate) fn is_tracked(&self, path: &Path) -> bool {
        let Ok(rel) = path.strip_prefix(&self.root) else { return false };
        self.watch.is_match(rel) && !self.is_excluded_rel(rel)
    }

    fn is_excluded_rel(&self, rel: &Path) -> bool {
        if self.exclude.is_empty() {
            return false;
        }
        let mut prefix = PathBuf::new();
        for component in rel.components() {
            prefix.push(component);
            if self.exclude.is_match(&prefix) {
                return true;
            }
        }
        false
    }

    /// True if `dir` (absolute) is, or lies inside, or is an ancestor of a
    /// watched directory: worth an inotify watch.
    pub(crate) fn wants_dir(&self, dir: &Path) -> bool {
        let Ok(rel) = dir.strip_prefix(&self.root) else { return false };
        if self.is_excluded_rel(rel) {
            return false;
        }
        self.dirs.iter().any(|d| rel.starts_with(d) || d.starts_with(rel))
    }
}

fn build_set(patterns: &[String]) -> Result<GlobSet, Error> {
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        // A leading `**/` must also match at the root (`**/.*` hides `.env`),
        // which globset's literal-separator mode already does.
        let glob = GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .map_err(|e| Error::Pattern { pattern: pattern.clone(), message: e.to_string() })?;
        builder.add(glob);
    }
    builder.build().map_err(|e| Error::Pattern { pattern: patterns.join(","), message: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cf(path: &str) -> Option<(String, Option<String>, Format)> {
        config_file(Path::new("/w/config"), Path::new(path)).map(|c| (c.name, c.env, c.format))
    }

    #[test]
    fn config_names_envs_and_formats() {
        assert_eq!(cf("/w/config/app.toml"), Some(("app".into(), None, Format::Toml)));
        assert_eq!(
            cf("/w/config/database.production.yaml"),
            Some(("database".into(), Some("production".into()), Format::Yaml))
        );
        assert_eq!(cf("/w/config/db/main.yml"), Some(("db/main".into(), None, Format::Yaml)));
        assert_eq!(cf("/w/config/app.schema.json"), None);
        assert_eq!(cf("/w/config/.app.toml"), None);
        assert_eq!(cf("/w/config/..data/app.json"), None);
        assert_eq!(cf("/w/config/app.toml.swp"), None);
        assert_eq!(cf("/w/config/README.md"), None);
        assert_eq!(cf("/w/templates/app.toml"), None);
    }

    fn filter() -> PathFilter {
        let watch = ["config/**/*.toml", "config/**/*.json", "templates/**/*", "static/**/*"].map(String::from);
        let exclude = crate::HotReloadConfig::DEFAULT_EXCLUDES.map(String::from);
        PathFilter::new(Path::new("/w"), &watch, &exclude).unwrap()
    }

    #[test]
    fn the_default_exclude_rule_is_one_rule_as_globs_and_as_a_function() {
        let f = filter();
        for name in ["index.html", "a.tmp", "a.swp", "index.html~", ".hidden", "..data", "a.tmp.html", "x~y"] {
            let tracked = f.is_tracked(&Path::new("/w/templates").join(name));
            assert_eq!(tracked, !crate::HotReloadConfig::is_excluded_by_default(name), "{name}");
        }
    }

    #[test]
    fn tracks_watched_files_and_excludes_hidden_ones_at_any_depth() {
        let f = filter();
        assert!(f.is_tracked(Path::new("/w/config/app.toml")));
        assert!(f.is_tracked(Path::new("/w/config/a/b/app.json")));
        assert!(f.is_tracked(Path::new("/w/templates/index.html")));
        assert!(!f.is_tracked(Path::new("/w/config/app.yaml")));
        assert!(!f.is_tracked(Path::new("/w/config/.app.toml.swp")));
        assert!(!f.is_tracked(Path::new("/w/config/app.toml.tmp")));
        assert!(!f.is_tracked(Path::new("/w/config/..data/app.json")));
        assert!(!f.is_tracked(Path::new("/w/static/.cache/x.css")));
        assert!(!f.is_tracked(Path::new("/w/data/history.log")));
        assert!(!f.is_tracked(Path::new("/elsewhere/config/app.toml")));
    }

    #[test]
    fn watch_dirs_come_from_pattern_prefixes() {
        let f = filter();
        let dirs: Vec<_> = f.watch_dirs().collect();
        assert_eq!(dirs, vec![PathBuf::from("/w/config"), "/w/templates".into(), "/w/static".into()]);
        assert!(f.wants_dir(Path::new("/w")));
        assert!(f.wants_dir(Path::new("/w/config/sub")));
        assert!(!f.wants_dir(Path::new("/w/config/..2026_01_01")));
        assert!(!f.wants_dir(Path::new("/w/data")));
    }
}
