//! [`ScriptError`], the one error type of this crate, and [`LoadError`], one problem found while
//! loading a script set, a plugin or (for other crates using [`crate::Reloader`]) a theme.

use std::fmt;
use std::path::PathBuf;

use rhai::{Dynamic, EvalAltResult, ParseError, Position};
use serde::Serialize;

/// Which sandbox limit stopped a script. Serialized in `snake_case` (`"operations"`, `"memory"`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// [`crate::Limits::max_operations`] (Rhai operations per call).
    Operations,
    /// [`crate::Limits::max_call_levels`] (function-call depth, i.e. recursion).
    CallLevels,
    /// [`crate::Limits::max_expr_depth`] (nesting of expressions at compile time).
    ExprDepth,
    /// [`crate::Limits::max_string_size`]: total bytes of strings inside one value.
    StringSize,
    /// [`crate::Limits::max_array_size`]: total array/BLOB elements inside one value.
    ArraySize,
    /// [`crate::Limits::max_map_size`]: total object-map entries inside one value.
    MapSize,
    /// [`crate::Limits::max_variables`] (variables alive at once).
    Variables,
    /// [`crate::Limits::max_modules`] (`import`s alive at once).
    Modules,
    /// [`crate::Limits::script_time`]: wall-clock time spent in the script itself (host calls excluded).
    ScriptTime,
    /// [`crate::Limits::wall_time`]: wall-clock time of the whole call (host calls included).
    WallTime,
    /// [`crate::Limits::max_memory_growth`]: process resident memory grew more than allowed.
    Memory,
}

impl Limit {
    /// Stable lower-case name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Operations => "operations",
            Limit::CallLevels => "call_levels",
            Limit::ExprDepth => "expr_depth",
            Limit::StringSize => "string_size",
            Limit::ArraySize => "array_size",
            Limit::MapSize => "map_size",
            Limit::Variables => "variables",
            Limit::Modules => "modules",
            Limit::ScriptTime => "script_time",
            Limit::WallTime => "wall_time",
            Limit::Memory => "memory",
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem found while loading: a syntax error, a missing entry point, a bad manifest, an
/// unreadable file. `line`/`column` are 1-based and `None` when the problem is not tied to a place
/// in the file. `Display` prints `file:line:column: message` (the form `proxlab script check` and
/// editors understand).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LoadError {
    /// The file on disk (absolute or as given to the loader).
    pub file: PathBuf,
    /// 1-based line, if known.
    pub line: Option<usize>,
    /// 1-based column, if known.
    pub column: Option<usize>,
    /// What is wrong, in words for an admin.
    pub message: String,
}

/// What `proxlab script check` prints: the same record as a [`LoadError`].
pub type Diagnostic = LoadError;

impl LoadError {
    /// A problem with the whole file (no position).
    pub fn file(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        LoadError {
            file: file.into(),
            line: None,
            column: None,
            message: message.into(),
        }
    }

    /// A problem at a Rhai [`Position`] of a file.
    pub fn at(file: impl Into<PathBuf>, pos: Position, message: impl Into<String>) -> Self {
        LoadError {
            file: file.into(),
            line: pos.line(),
            column: pos.position(),
            message: message.into(),
        }
    }

    /// A Rhai parse error in `file`.
    pub fn from_parse(file: impl Into<PathBuf>, err: &ParseError) -> Self {
        LoadError::at(file, err.position(), err.err_type().to_string())
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

/// Formats a list of load errors one per line.
pub fn format_load_errors(errors: &[LoadError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Everything that can go wrong when loading or running a script.
///
/// Paths are the script file on disk (or the plugin manifest); lines/columns are 1-based.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    /// The set (or one file) failed to load; each entry has file, line and message.
    #[error("script load failed:\n{}", format_load_errors(.0))]
    Load(Vec<LoadError>),

    /// A syntax error found when compiling a single file.
    #[error("{path}:{line}:{column}: syntax error: {message}")]
    Syntax {
        /// Script file.
        path: String,
        /// 1-based line (0 if unknown).
        line: usize,
        /// 1-based column (0 if unknown).
        column: usize,
        /// Rhai's description of the problem.
        message: String,
    },

    /// No script of that name in the set (e.g. a class names a workflow that does not exist).
    #[error("no script {name:?} in the script set")]
    NoSuchScript {
        /// The name asked for (relative path such as `deploy/qcow2-overlay.rhai` or a short name).
        name: String,
    },

    /// The script has no function `entry` taking `arity` arguments.
    #[error("{path}: no entry point `{entry}` with {arity} parameter(s)")]
    MissingEntryPoint {
        /// Script file.
        path: String,
        /// Function name that was asked for.
        entry: String,
        /// Number of arguments given.
        arity: usize,
    },

    /// A sandbox limit stopped the script (see [`Limit`]); the script cannot catch this.
    #[error("{path}:{line}: script limit exceeded ({limit}): {detail}")]
    LimitExceeded {
        /// Which limit.
        limit: Limit,
        /// Script file where it happened.
        path: String,
        /// 1-based line (0 if unknown).
        line: usize,
        /// Extra words (e.g. the configured value).
        detail: String,
    },

    /// The script (or a host function on its behalf) threw and nobody caught it.
    /// `throw #{code: "x", message: "y"}` gives `code = "x"`; a plain `throw "text"` gives
    /// `code = "script_error"` and the text as message. Host functions throw codes such as
    /// `pve.locked`, `ssh.failed`, `net.invalid_address` (listed in `scripts/API.md`).
    /// `throw #{status: 409, code, message}` also sets the HTTP status the user gets (400–599).
    #[error("{path}:{line}: {code}: {message}")]
    Thrown {
        /// Machine-readable code.
        code: String,
        /// The HTTP status the script asked for (`status` in the thrown map, 400–599), if any.
        status: Option<u16>,
        /// Human-readable message.
        message: String,
        /// Script file.
        path: String,
        /// 1-based line (0 if unknown).
        line: usize,
    },

    /// Any other runtime error (type mismatch, unknown function, index out of bounds, ...).
    #[error("{path}:{line}: {message}")]
    Runtime {
        /// Script file.
        path: String,
        /// 1-based line (0 if unknown).
        line: usize,
        /// Rhai's description.
        message: String,
    },

    /// The entry point returned a value of the wrong shape (e.g. `rdp_settings` not returning a map).
    #[error("{path}: `{entry}` returned a bad value: {message}")]
    BadReturn {
        /// Script file.
        path: String,
        /// Entry point.
        entry: String,
        /// What was expected.
        message: String,
    },

    /// An argument could not be converted to a Rhai value.
    #[error("bad argument for a script: {0}")]
    BadArgument(String),

    /// The call was cancelled (the caller went away or the job was cancelled).
    #[error("{path}: script cancelled")]
    Cancelled {
        /// Script file.
        path: String,
    },

    /// The blocking task running the script panicked or the runtime is shutting down.
    #[error("script task failed: {0}")]
    Task(String),

    /// Reading a file or directory failed.
    #[error("{path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// Setting up a file watcher failed (see [`crate::Reloader`]).
    #[error("watch failed: {0}")]
    Watch(String),
}

impl ScriptError {
    /// What a script's `throw #{status, code, message}` asks the user to get: `(status, code, message)`;
    /// `None` for every other error (and a throw without a valid `status`).
    pub fn thrown_status(&self) -> Option<(u16, &str, &str)> {
        match self {
            ScriptError::Thrown {
                status: Some(s),
                code,
                message,
                ..
            } => Some((*s, code, message)),
            _ => None,
        }
    }

    /// Short machine-readable kind, for JSON error bodies and metrics
    /// (`load`, `syntax`, `limit_exceeded`, `thrown`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            ScriptError::Load(_) => "load",
            ScriptError::Syntax { .. } => "syntax",
            ScriptError::NoSuchScript { .. } => "no_such_script",
            ScriptError::MissingEntryPoint { .. } => "missing_entry_point",
            ScriptError::LimitExceeded { .. } => "limit_exceeded",
            ScriptError::Thrown { .. } => "thrown",
            ScriptError::Runtime { .. } => "runtime",
            ScriptError::BadReturn { .. } => "bad_return",
            ScriptError::BadArgument(_) => "bad_argument",
            ScriptError::Cancelled { .. } => "cancelled",
            ScriptError::Task(_) => "task",
            ScriptError::Io { .. } => "io",
            ScriptError::Watch(_) => "watch",
        }
    }

    /// Maps a Rhai evaluation error to a typed error. `default_path` is used when the error
    /// carries no source of its own (errors inside an imported module or a library function carry
    /// that file's path instead).
    pub(crate) fn from_eval(err: &EvalAltResult, default_path: &str) -> ScriptError {
        from_eval_inner(err, default_path)
    }
}

/// Token values that `on_progress` returns to stop a script; mapped back here.
pub(crate) const TOKEN_SCRIPT_TIME: &str = "proxlab:limit:script_time";
pub(crate) const TOKEN_WALL_TIME: &str = "proxlab:limit:wall_time";
pub(crate) const TOKEN_MEMORY: &str = "proxlab:limit:memory";
pub(crate) const TOKEN_CANCELLED: &str = "proxlab:cancelled";

fn line_of(pos: Position) -> usize {
    pos.line().unwrap_or(0)
}

fn from_eval_inner(err: &EvalAltResult, path: &str) -> ScriptError {
    use EvalAltResult as E;
    let limit = |limit: Limit, pos: Position, detail: String| ScriptError::LimitExceeded {
        limit,
        path: path.to_string(),
        line: line_of(pos),
        detail,
    };
    match err {
        E::ErrorInFunctionCall(_name, source, inner, _pos) => {
            let p = if source.is_empty() { path } else { source.as_str() };
            from_eval_inner(inner, p)
        }
        E::ErrorInModule(module, inner, _pos) => {
            let p = if module.is_empty() { path } else { module.as_str() };
            from_eval_inner(inner, p)
        }
        E::ErrorParsing(kind, pos) => match kind {
            rhai::ParseErrorType::ExprTooDeep => {
                limit(Limit::ExprDepth, *pos, "expression nested too deeply".into())
            }
            other => ScriptError::Syntax {
                path: path.to_string(),
                line: line_of(*pos),
                column: pos.position().unwrap_or(0),
                message: other.to_string(),
            },
        },
        E::ErrorTooManyOperations(pos) => limit(Limit::Operations, *pos, "too many operations".into()),
        E::ErrorTooManyVariables(pos) => limit(Limit::Variables, *pos, "too many variables".into()),
        E::ErrorTooManyModules(pos) => limit(Limit::Modules, *pos, "too many modules".into()),
        E::ErrorStackOverflow(pos) => {
            limit(Limit::CallLevels, *pos, "function calls nested too deeply".into())
        }
        E::ErrorDataTooLarge(what, pos) => {
            let which = if what.contains("string") || what.contains("String") {
                Limit::StringSize
            } else if what.contains("map") {
                Limit::MapSize
            } else {
                Limit::ArraySize
            };
            limit(which, *pos, format!("{what} too large"))
        }
        E::ErrorTerminated(token, pos) => {
            let t = token.clone().into_string().unwrap_or_default();
            match t.as_str() {
                TOKEN_SCRIPT_TIME => limit(Limit::ScriptTime, *pos, "script ran too long".into()),
                TOKEN_WALL_TIME => limit(Limit::WallTime, *pos, "call ran too long".into()),
                TOKEN_MEMORY => limit(Limit::Memory, *pos, "memory ceiling reached".into()),
                _ => ScriptError::Cancelled {
                    path: path.to_string(),
                },
            }
        }
        E::ErrorRuntime(value, pos) => thrown_from_value(value, path, line_of(*pos)),
        other => ScriptError::Runtime {
            path: path.to_string(),
            line: line_of(other.position()),
            message: strip_position(&other.to_string()),
        },
    }
}

/// Builds [`ScriptError::Thrown`] from a thrown value (`#{code, message}` or anything else).
pub(crate) fn thrown_from_value(value: &Dynamic, path: &str, line: usize) -> ScriptError {
    if let Some(map) = value.read_lock::<rhai::Map>() {
        let code = map
            .get("code")
            .map(|c| c.to_string())
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| "script_error".to_string());
        let message = map
            .get("message")
            .map(|m| m.to_string())
            .unwrap_or_else(|| format!("{value}"));
        let status = map
            .get("status")
            .and_then(|s| s.as_int().ok())
            .and_then(|s| u16::try_from(s).ok())
            .filter(|s| (400..=599).contains(s));
        return ScriptError::Thrown {
            code,
            status,
            message,
            path: path.to_string(),
            line,
        };
    }
    ScriptError::Thrown {
        code: "script_error".to_string(),
        status: None,
        message: value.to_string(),
        path: path.to_string(),
        line,
    }
}

/// Rhai's `Display` appends ` (line N, position M)`; we report the position separately.
fn strip_position(s: &str) -> String {
    match s.rfind(" (line ") {
        Some(i) if s.ends_with(')') => s[..i].to_string(),
        _ => s.to_string(),
    }
}
