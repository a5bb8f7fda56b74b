//! Rule and model files: the reading the pure core leaves to its callers.
//! The checker ([`Compiler`]) takes rule sources as text and model files
//! through its [`ModelFiles`] port; this module walks rule directories,
//! reads `.tl` files, and reads model files with the limits that keep a
//! device or a huge file from being read whole.

use crate::engine::{EngineOptions, RuleSet};
use crate::model::{MAX_MODEL_BYTES, Model, ModelError};
use crate::rules::{CompileError, Compiler, ModelFiles, ModelReader, StreamDef};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Model files read from this machine's file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct Disk;

impl ModelFiles for Disk {
    fn read(&self, path: &Path) -> Result<Vec<u8>, ModelError> {
        read_model_file(path)
    }
}

/// The model reader of [`Disk`].
pub fn disk_models() -> ModelReader {
    ModelReader(Some(Arc::new(Disk)))
}

/// A checker that reads declared models from the file system.
pub fn compiler() -> Compiler {
    let mut c = Compiler::new();
    c.model_files(disk_models());
    c
}

/// Adding rule files to a [`Compiler`].
pub trait AddPath {
    /// Adds a `.tl` file, or every `.tl` file under a directory (sorted, so
    /// the result does not depend on directory order). A path that cannot be
    /// read makes compiling fail with its error.
    fn add_path(&mut self, path: &Path) -> &mut Compiler;
}

impl AddPath for Compiler {
    fn add_path(&mut self, path: &Path) -> &mut Compiler {
        if !path.exists() {
            self.io_error(format!("{}: no such file or directory", path.display()));
            return self;
        }
        let files = match rule_files(path) {
            Ok(files) => files,
            Err(errors) => {
                for e in errors {
                    self.io_error(e);
                }
                return self;
            }
        };
        if files.is_empty() {
            self.io_error(format!("{}: no .tl rule files found", path.display()));
        }
        for f in files {
            match std::fs::read_to_string(&f) {
                Ok(text) => {
                    self.add_source(&f.display().to_string(), &text);
                }
                Err(e) => {
                    self.io_error(format!("{}: {e}", f.display()));
                }
            }
        }
        self
    }
}

/// Reads, checks and compiles rule files or directories (models read from
/// the file system).
pub fn load_rules(
    paths: &[&Path],
    stream: Option<StreamDef>,
    options: EngineOptions,
) -> Result<Arc<RuleSet>, CompileError> {
    let mut c = compiler();
    if let Some(s) = stream {
        c.stream(s);
    }
    for p in paths {
        c.add_path(p);
    }
    Ok(RuleSet::build(c.compile()?, options))
}

/// The `.tl` files a path names: the file itself, or every `.tl` file under
/// a directory, sorted (as [`AddPath::add_path`] reads them).
pub fn rule_files(path: &Path) -> Result<Vec<PathBuf>, Vec<String>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    let mut errs = Vec::new();
    collect_tl(path, &mut files, &mut errs);
    files.sort();
    if errs.is_empty() {
        Ok(files)
    } else {
        Err(errs)
    }
}

fn collect_tl(dir: &Path, out: &mut Vec<PathBuf>, errs: &mut Vec<String>) {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => {
            errs.push(format!("{}: {e}", dir.display()));
            return;
        }
    };
    for entry in rd.flatten() {
        let p = entry.path();
        if p.is_dir() {
            collect_tl(&p, out, errs);
        } else if p.extension().is_some_and(|e| e == "tl") {
            out.push(p);
        }
    }
}

/// Loads an ONNX model file.
pub fn load_model(path: &Path) -> Result<Model, ModelError> {
    Model::from_bytes(&read_model_file(path)?)
}

/// A model file's bytes, refused if it is not a regular file or larger
/// than [`MAX_MODEL_BYTES`].
fn read_model_file(path: &Path) -> Result<Vec<u8>, ModelError> {
    let io = |source| ModelError::Io {
        path: path.display().to_string(),
        source,
    };
    let invalid = |msg: String| ModelError::Invalid(msg);
    // Checked on the opened file: a device or a FIFO (`/dev/zero`) would be
    // read for ever, a huge file into memory whole.
    let file = std::fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(invalid("not a regular file".into()));
    }
    if meta.len() > MAX_MODEL_BYTES {
        return Err(invalid(format!(
            "the file is {} bytes; models may have at most {MAX_MODEL_BYTES}",
            meta.len()
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_MODEL_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_MODEL_BYTES {
        return Err(invalid(format!(
            "the file grew past {MAX_MODEL_BYTES} bytes"
        )));
    }
    Ok(bytes)
}

/// Writes `text` to `path` through a temporary file and a rename, so that a
/// reader (the rule files' watch) never reads half a file.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("rule")
    ));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}
