//! Counts over a workspace's configs, as [`relive::Workspace::configs`]
//! lists them (the library owns the file-naming rule).

use std::collections::BTreeSet;

use relive::ConfigFiles;

/// How many config documents there are (schemas not counted).
pub fn files(configs: &[ConfigFiles]) -> usize {
    configs.iter().map(|c| c.base.len() + c.overlays.values().map(Vec::len).sum::<usize>()).sum()
}

/// Every environment that has an overlay.
pub fn envs(configs: &[ConfigFiles]) -> BTreeSet<&str> {
    configs.iter().flat_map(|c| c.overlays.keys().map(String::as_str)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_a_tree() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        std::fs::create_dir_all(config.join("db")).unwrap();
        std::fs::create_dir_all(config.join("..data")).unwrap();
        for f in ["app.toml", "app.prod.toml", "app.schema.json", "db/main.yaml", "..data/x.toml", "notes.md"] {
            std::fs::write(config.join(f), "").unwrap();
        }
        let configs = relive::Workspace::new(dir.path()).configs().unwrap();
        assert_eq!(files(&configs), 3);
        assert_eq!(configs.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["app", "db/main"]);
        assert!(configs[0].schema.is_some());
        assert_eq!(envs(&configs).into_iter().collect::<Vec<_>>(), ["prod"]);
    }
}
