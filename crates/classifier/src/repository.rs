//! A model repository: a folder with one subfolder per model, each holding `model.onnx`,
//! `labels.txt` and `model.toml`.
//!
//! ```text
//! models/
//!   products/   model.onnx  labels.txt  model.toml
//!   scenes/     model.onnx  labels.txt  model.toml
//! ```
//!
//! Every subfolder is loaded on its own ([`Model::load_dir`]); one that cannot be loaded is
//! reported with its error next to those that could, and the caller decides whether that
//! stops it. Entries that are not folders, and folders whose name starts with `.`, are skipped.

use crate::model::{Model, ModelError};
use std::path::{Path, PathBuf};

/// The models of a repository folder that loaded, and the subfolders that did not.
pub struct ModelRepository {
    /// Sorted by name (the subfolder's name).
    pub models: Vec<Model>,
    /// Sorted by folder.
    pub errors: Vec<FolderError>,
}

/// A subfolder of the repository that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("model folder {}: {error}", folder.display())]
pub struct FolderError {
    pub folder: PathBuf,
    pub error: ModelError,
}

impl ModelRepository {
    /// Loads every model subfolder of `dir`. Fails only when `dir` itself cannot be read.
    pub fn load(dir: &Path) -> Result<ModelRepository, ModelError> {
        let read_err = |source| ModelError::Read {
            path: dir.display().to_string(),
            source,
        };
        let mut folders = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(read_err)? {
            let entry = entry.map_err(read_err)?;
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            // Follows symbolic links: a model folder may be a link to where it is kept.
            if !hidden && entry.path().is_dir() {
                folders.push(entry.path());
            }
        }
        folders.sort();
        let mut repo = ModelRepository {
            models: Vec::new(),
            errors: Vec::new(),
        };
        for folder in folders {
            match Model::load_dir(&folder) {
                Ok(model) => repo.models.push(model),
                Err(error) => repo.errors.push(FolderError { folder, error }),
            }
        }
        Ok(repo)
    }

    /// The model named `name` (its folder's name).
    pub fn get(&self, name: &str) -> Option<&Model> {
        self.models.iter().find(|m| m.info().name == name)
    }
}
