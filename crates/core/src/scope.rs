//! What an API token may do. A token holds a set of scopes; `admin` implies every other one and
//! lets the token see every job, not only its own.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Upload images (create jobs).
    Submit,
    /// Read jobs, their images, events and statistics.
    Read,
    /// Retry, cancel and delete jobs.
    Manage,
    /// Everything, on every job; `/metrics` when it shares the API's port.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Submit, Scope::Read, Scope::Manage, Scope::Admin];

    /// What `token create` gives when no scope is named.
    pub const DEFAULT: [Scope; 3] = [Scope::Submit, Scope::Read, Scope::Manage];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Submit => "submit",
            Scope::Read => "read",
            Scope::Manage => "manage",
            Scope::Admin => "admin",
        }
    }

    /// Parses a comma-separated list (`submit,read`), sorted and without repeats.
    pub fn parse_list(s: &str) -> Result<Vec<Scope>, String> {
        let mut scopes = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(Scope::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        if scopes.is_empty() {
            return Err("name at least one scope (submit, read, manage, admin)".into());
        }
        scopes.sort_unstable();
        scopes.dedup();
        Ok(scopes)
    }

    /// The comma-separated form `parse_list` reads.
    pub fn join(scopes: &[Scope]) -> String {
        scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown scope {s:?} (submit, read, manage, admin)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_lists_round_trip() {
        let s = Scope::parse_list("read, submit,read").unwrap();
        assert_eq!(s, vec![Scope::Submit, Scope::Read]);
        assert_eq!(Scope::join(&s), "submit,read");
        assert!(Scope::parse_list("read,owner").is_err());
        assert!(Scope::parse_list(" , ").is_err());
    }
}
