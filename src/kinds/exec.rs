//! The `exec` kind: runs commands named in the config file, never a shell.

use std::collections::BTreeMap;

use serde::Deserialize;

/// One `[exec.NAME]` table of the config file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecCommand {
    /// The program and its arguments; `{name}` is replaced by the payload's
    /// argument `name`. No shell is involved.
    pub argv: Vec<String>,
    /// Environment variables the command gets (besides `PATH`, `LANG`, `HOME`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}
