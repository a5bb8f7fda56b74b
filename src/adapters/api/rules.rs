//! Rule changes through the API. The rule files stay the source of truth:
//! `PUT /v1/rules/{name}` writes `{name}.tl` into the rules directory (or
//! replaces the file the rule already lives in alone), `DELETE` removes it,
//! and both happen only if the whole rule set still compiles with the
//! change. The accepted rule set is handed to the running service, which
//! swaps it in at its next checkpoint (as it does for edited files).

use crate::engine::{EngineOptions, RuleSet};
use crate::files::{compiler, rule_files};
use crate::rules::{CompileError, StreamDef, parse_file, promote_candidate};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

/// Called with every rule set the API accepts.
pub type OnChange = Box<dyn Fn(Arc<RuleSet>) + Send + Sync>;

/// The rule files the service runs, and how to change them.
pub struct RuleStore {
    paths: Vec<PathBuf>,
    dir: PathBuf,
    stream: Option<StreamDef>,
    options: EngineOptions,
    current: Mutex<Arc<RuleSet>>,
    /// Serializes changes: two writers must not both validate against the
    /// same files and then both write.
    writing: Mutex<()>,
    on_change: Option<OnChange>,
    /// Where rule text from the API may load models from.
    models_dir: Option<PathBuf>,
    /// The last rule sets made current, newest last (the one running may
    /// be one of the earlier ones).
    recent: Mutex<Vec<Arc<RuleSet>>>,
    /// The fields the service keys rules by besides the stream's key,
    /// fixed at its start ([`RuleSet::other_keys`]).
    other_keys: Vec<String>,
}

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum RuleChangeError {
    /// The rule set does not compile with the change.
    #[error("{0}")]
    Invalid(CompileError),
    /// The body does not define the rule its path names.
    #[error("{0}")]
    Mismatch(String),
    /// The rule shares its file with other rules or items.
    #[error("{0}")]
    Shared(String),
    /// The rule set compiles, but the running service cannot take it.
    #[error("{0}")]
    Conflict(String),
    /// No such rule.
    #[error("no rule `{0}`")]
    NotFound(String),
    /// No such model.
    #[error("no model `{0}`")]
    NoModel(String),
    /// The files could not be read or written.
    #[error("{0}")]
    Io(String),
}

/// What a `PUT` did.
#[derive(Debug)]
pub struct Written {
    /// The file written.
    pub file: PathBuf,
    /// The rule did not exist before.
    pub created: bool,
    /// The rule set now running.
    pub rules: Arc<RuleSet>,
}

/// The rule files with one rule changed, not yet written.
struct Planned {
    files: Vec<(PathBuf, String)>,
    /// The file changed or created.
    target: PathBuf,
    /// Its new text.
    new_text: String,
    /// It is a new file.
    created: bool,
}

/// Rule sets [`RuleStore::recent`] remembers.
const RECENT_SETS: usize = 8;

/// A rule or model name as it may appear in a path and a file name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl RuleStore {
    /// Manages the rules read from `paths` (files or directories); new
    /// rules are written into the first directory among them.
    pub fn new(
        paths: Vec<PathBuf>,
        stream: Option<StreamDef>,
        options: EngineOptions,
        current: Arc<RuleSet>,
    ) -> RuleStore {
        let dir = paths
            .iter()
            .find(|p| p.is_dir())
            .cloned()
            .or_else(|| {
                paths
                    .first()
                    .and_then(|p| p.parent())
                    .map(Path::to_path_buf)
            })
            .unwrap_or_else(|| PathBuf::from("rules"));
        RuleStore {
            paths,
            dir,
            stream,
            options,
            writing: Mutex::new(()),
            on_change: None,
            models_dir: None,
            other_keys: current.other_keys(),
            recent: Mutex::new(vec![current.clone()]),
            current: Mutex::new(current),
        }
    }

    /// Loads the models of rule text from the API only from `dir` (see
    /// [`Compiler::models_dir`]).
    pub fn models_dir(mut self, dir: PathBuf) -> RuleStore {
        self.models_dir = Some(dir);
        self
    }

    /// A rule file's name as the API shows it: relative to the rules
    /// directory, so that answers tell nothing of where it lies.
    pub fn display_name(&self, name: &str) -> String {
        let path = Path::new(name);
        match path.strip_prefix(&self.dir) {
            Ok(relative) => relative.display().to_string(),
            Err(_) if path.is_absolute() => path
                .file_name()
                .map_or_else(|| name.to_string(), |f| f.to_string_lossy().into_owned()),
            Err(_) => name.to_string(),
        }
    }

    /// Calls `f` with every rule set a change produces.
    pub fn on_change(mut self, f: OnChange) -> RuleStore {
        self.on_change = Some(f);
        self
    }

    /// The running rule set.
    pub fn current(&self) -> Arc<RuleSet> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records the rule set the files or the API now give (the service
    /// swaps it in at its next checkpoint, unless it refuses it).
    pub fn set_current(&self, rules: Arc<RuleSet>) {
        {
            let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            recent.retain(|r| r.def().hash != rules.def().hash);
            recent.push(rules.clone());
            let excess = recent.len().saturating_sub(RECENT_SETS);
            recent.drain(..excess);
        }
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = rules;
    }

    /// A rule set made current lately, by its hash.
    pub fn recent(&self, hash: u64) -> Option<Arc<RuleSet>> {
        self.recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|r| r.def().hash == hash)
            .cloned()
    }

    /// The rule files and their text, read now, in the order the service
    /// reads them.
    fn files(&self) -> Result<Vec<(PathBuf, String)>, RuleChangeError> {
        Ok(self.files_by_path()?.into_iter().flatten().collect())
    }

    /// [`RuleStore::files`], one list per configured path.
    fn files_by_path(&self) -> Result<Vec<Vec<(PathBuf, String)>>, RuleChangeError> {
        let mut out = Vec::new();
        for p in &self.paths {
            let files = rule_files(p).map_err(|e| RuleChangeError::Io(e.join("; ")))?;
            let mut read = Vec::new();
            for f in files {
                let text = std::fs::read_to_string(&f)
                    .map_err(|e| RuleChangeError::Io(format!("{}: {e}", f.display())))?;
                read.push((f, text));
            }
            out.push(read);
        }
        Ok(out)
    }

    /// Compiles `files`; `untrusted` is the one whose text came from the
    /// API (its models must be in the models directory).
    fn compile(
        &self,
        files: &[(PathBuf, String)],
        untrusted: Option<&Path>,
    ) -> Result<Arc<RuleSet>, RuleChangeError> {
        let mut c = compiler();
        if let Some(s) = &self.stream {
            c.stream(s.clone());
        }
        if let Some(dir) = &self.models_dir {
            c.models_dir(dir);
        }
        for (p, text) in files {
            let name = p.display().to_string();
            if Some(p.as_path()) == untrusted {
                c.add_untrusted_source(&name, text);
            } else {
                c.add_source(&name, text);
            }
        }
        let rules = c
            .compile()
            .map(|def| RuleSet::build(def, self.options))
            .map_err(RuleChangeError::Invalid)?;
        // The check the service makes before it swaps rules in: answered
        // here, the change is refused instead of written and then refused.
        let other_keys = rules.other_keys();
        if other_keys != self.other_keys {
            return Err(RuleChangeError::Conflict(format!(
                "the rules would be keyed by other fields ({}) than the running service's ({}), \
                 which needs other internal topics: the service takes this change only at a \
                 restart, so it is refused here",
                list_or_none(&other_keys),
                list_or_none(&self.other_keys)
            )));
        }
        Ok(rules)
    }

    /// Checks `text` as it would run: one rule that exists, in its file as
    /// [`RuleStore::put`] would put it there; other text with the current
    /// files, less those whose every rule it redefines.
    pub fn validate(&self, text: &str) -> Result<Arc<RuleSet>, RuleChangeError> {
        let defined = names_in(text);
        // One rule that exists: checked in its file, as saving it would put
        // it there (its errors at the file's lines).
        if let [name] = defined.as_slice()
            && let Ok(p) = self.planned(name, text)
            && !p.created
        {
            return self.compile(&p.files, Some(&p.target));
        }
        let mut files: Vec<_> = self
            .files()?
            .into_iter()
            .filter(|(_, t)| {
                let names = names_in(t);
                names.is_empty() || !names.iter().all(|n| defined.contains(n))
            })
            .collect();
        let request = self.dir.join("request.tl");
        files.push((request.clone(), text.to_string()));
        self.compile(&files, Some(&request))
    }

    /// The rule files as they would be with rule (or feature set) `name`
    /// replaced or created by `text`, which must define it and nothing else
    /// but examples and models: its block spliced into its file (comments,
    /// examples, other rules and the stream around it byte for byte), or a
    /// new `{name}.tl` in the rules directory.
    fn planned(&self, name: &str, text: &str) -> Result<Planned, RuleChangeError> {
        let defined = names_in(text);
        if defined != [name] {
            return Err(RuleChangeError::Mismatch(format!(
                "the body must define rule `{name}` and no other rule (it defines: {})",
                if defined.is_empty() {
                    "none".to_string()
                } else {
                    defined.join(", ")
                }
            )));
        }
        if has_stream(text) {
            return Err(RuleChangeError::Mismatch(
                "the body may not define a stream: the stream belongs to the rule files".into(),
            ));
        }
        let mut by_path = self.files_by_path()?;
        let home = by_path.iter().enumerate().find_map(|(g, files)| {
            files
                .iter()
                .position(|(_, t)| names_in(t).iter().any(|n| n == name))
                .map(|i| (g, i))
        });
        let (target, new_text) = match home {
            Some((g, i)) => {
                let (path, t) = &mut by_path[g][i];
                let Some(span) = rule_span(t, name) else {
                    return Err(RuleChangeError::Shared(format!(
                        "rule `{name}` in {} cannot be located for editing; edit that file",
                        self.display_name(&path.display().to_string())
                    )));
                };
                let mut spliced = String::with_capacity(t.len() + text.len());
                spliced.push_str(&t[..span.0]);
                spliced.push_str(text.trim());
                spliced.push_str(&t[span.1..]);
                *t = spliced.clone();
                (path.clone(), spliced)
            }
            None => {
                // Where the service will read the new file: among the
                // files of its directory, in their order. The rule set's
                // hash (and its rules' order) follow the files' order, so
                // the set accepted here is the one the service reloads.
                let target = self.dir.join(format!("{name}.tl"));
                let g = self
                    .paths
                    .iter()
                    .position(|p| *p == self.dir)
                    .unwrap_or(by_path.len().saturating_sub(1));
                if let Some(files) = by_path.get_mut(g) {
                    files.push((target.clone(), text.to_string()));
                    files.sort_by(|a, b| a.0.cmp(&b.0));
                } else {
                    by_path.push(vec![(target.clone(), text.to_string())]);
                }
                (target, text.to_string())
            }
        };
        Ok(Planned {
            files: by_path.into_iter().flatten().collect(),
            target,
            new_text,
            created: home.is_none(),
        })
    }

    /// Creates or replaces rule (or feature set) `name` with `text` (see
    /// [`RuleStore::planned`]), if the whole rule set compiles with it.
    pub fn put(&self, name: &str, text: &str) -> Result<Written, RuleChangeError> {
        let _w = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        let p = self.planned(name, text)?;
        let rules = self.compile(&p.files, Some(&p.target))?;
        write_atomically(&p.target, &p.new_text)?;
        self.accept(rules.clone());
        Ok(Written {
            file: p.target,
            created: p.created,
            rules,
        })
    }

    /// Deletes rule `name`: removes its file, which must hold it alone.
    pub fn delete(&self, name: &str) -> Result<Arc<RuleSet>, RuleChangeError> {
        let _w = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        let files = self.files()?;
        let Some(home) = files
            .iter()
            .position(|(_, t)| names_in(t).iter().any(|n| n == name))
        else {
            return Err(RuleChangeError::NotFound(name.to_string()));
        };
        let (path, t) = &files[home];
        if names_in(t) != [name] || has_stream(t) {
            return Err(RuleChangeError::Shared(format!(
                "rule `{name}` is defined in {} together with other rules; edit that file",
                self.display_name(&path.display().to_string())
            )));
        }
        let path = path.clone();
        let rest: Vec<_> = files
            .into_iter()
            .enumerate()
            .filter(|(i, _)| *i != home)
            .map(|(_, f)| f)
            .collect();
        let rules = self.compile(&rest, None)?;
        std::fs::remove_file(&path)
            .map_err(|e| RuleChangeError::Io(format!("{}: {e}", path.display())))?;
        self.accept(rules.clone());
        Ok(rules)
    }

    /// Rule `name`'s block as its file has it (comments inside it
    /// included), and the file.
    pub fn source(&self, name: &str) -> Result<(PathBuf, String), RuleChangeError> {
        for (path, text) in self.files()? {
            if let Some((start, end)) = rule_span(&text, name) {
                return Ok((path, text[start..end].to_string()));
            }
        }
        Err(RuleChangeError::NotFound(name.to_string()))
    }

    /// Takes rule `name` out of shadow mode: removes its `mode shadow`
    /// clause from its file (nothing else changes), so that the service
    /// moves its alerts from the shadow topic to the alerts topic at the
    /// checkpoint that switches rules. Its state carries over: the mode is
    /// not part of what a rule's state means.
    pub fn promote(&self, name: &str) -> Result<Written, RuleChangeError> {
        let _w = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        let mut by_path = self.files_by_path()?;
        let Some((g, i)) = by_path.iter().enumerate().find_map(|(g, files)| {
            files
                .iter()
                .position(|(_, t)| names_in(t).iter().any(|n| n == name))
                .map(|i| (g, i))
        }) else {
            return Err(RuleChangeError::NotFound(name.to_string()));
        };
        let (path, text) = &mut by_path[g][i];
        let (ast, _) = parse_file(0, text);
        let clause = ast
            .rules
            .iter()
            .find(|r| r.name.name == name)
            .and_then(|r| r.shadow);
        let Some((true, span)) = clause else {
            return Err(RuleChangeError::Conflict(format!(
                "rule `{name}` is not in shadow mode: it is live already"
            )));
        };
        let (start, end) = line_of(text, span.start as usize, span.end as usize);
        let promoted = format!("{}{}", &text[..start], &text[end..]);
        *text = promoted.clone();
        let target = path.clone();
        let files: Vec<_> = by_path.into_iter().flatten().collect();
        let rules = self.compile(&files, Some(&target))?;
        write_atomically(&target, &promoted)?;
        self.accept(rules.clone());
        Ok(Written {
            file: target,
            created: false,
            rules,
        })
    }

    /// Promotes model `name`'s candidate: its declaration `model NAME from
    /// "CURRENT" candidate "NEXT"` becomes `model NAME from "NEXT"` (nothing
    /// else in its file changes), so the rules read the candidate's scores
    /// from the checkpoint that switches rules on. Rule state carries over:
    /// a model's file is not part of what any rule's state means.
    pub fn promote_model(&self, name: &str) -> Result<Written, RuleChangeError> {
        let _w = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        let mut files: Vec<(PathBuf, String)> =
            self.files_by_path()?.into_iter().flatten().collect();
        let mut found = None;
        for (i, (_, text)) in files.iter().enumerate() {
            if let Some(promoted) = promote_candidate(text, name)
                .map_err(|e| RuleChangeError::Conflict(e.to_string()))?
            {
                found = Some((i, promoted));
                break;
            }
        }
        let Some((i, promoted)) = found else {
            return Err(RuleChangeError::NoModel(name.to_string()));
        };
        let (path, text) = &mut files[i];
        *text = promoted.clone();
        let target = path.clone();
        let rules = self.compile(&files, None)?;
        write_atomically(&target, &promoted)?;
        self.accept(rules.clone());
        Ok(Written {
            file: target,
            created: false,
            rules,
        })
    }

    fn accept(&self, rules: Arc<RuleSet>) {
        self.set_current(rules.clone());
        if let Some(f) = &self.on_change {
            f(rules);
        }
    }
}

fn list_or_none(keys: &[String]) -> String {
    if keys.is_empty() {
        "none".into()
    } else {
        keys.join(", ")
    }
}

/// The rules and feature sets a text defines (parse errors aside: the
/// compile reports them).
fn names_in(text: &str) -> Vec<String> {
    let (ast, _) = parse_file(0, text);
    ast.rules.into_iter().map(|r| r.name.name).collect()
}

/// The byte range of rule (or feature set) `name`'s block in `text`.
fn rule_span(text: &str, name: &str) -> Option<(usize, usize)> {
    let (ast, _) = parse_file(0, text);
    let r = ast.rules.iter().find(|r| r.name.name == name)?;
    let (start, end) = (r.span.start as usize, r.span.end as usize);
    (start <= end
        && end <= text.len()
        && text.is_char_boundary(start)
        && text.is_char_boundary(end))
    .then_some((start, end))
}

/// The range to cut for the clause at `start..end` of `text`: its whole
/// line when nothing else is on it, else the clause and the blanks after it.
fn line_of(text: &str, start: usize, end: usize) -> (usize, usize) {
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[end..].find('\n').map_or(text.len(), |i| end + i + 1);
    let alone = text[line_start..start].trim().is_empty() && text[end..line_end].trim().is_empty();
    if alone {
        (line_start, line_end)
    } else {
        let blanks = text[end..].len() - text[end..].trim_start_matches([' ', '\t']).len();
        (start, end + blanks)
    }
}

fn has_stream(text: &str) -> bool {
    !parse_file(0, text).0.streams.is_empty()
}

fn write_atomically(path: &Path, text: &str) -> Result<(), RuleChangeError> {
    crate::files::write_atomically(path, text)
        .map_err(|e| RuleChangeError::Io(format!("{}: {e}", path.display())))
}
