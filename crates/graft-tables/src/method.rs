//! What a run trains ([`Method`]) and how it ended ([`RunStatus`]): the `method` and
//! `status` columns of the proposals and runs tables, serde enums written as the same
//! strings the columns have always held, so a stage matches on a variant, never on text.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What is trained for a placement (the `method` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Adapters on the placement's edges and the head; the backbone frozen.
    Adapters,
    /// The head alone.
    LinearProbe,
    /// Every parameter.
    Full,
    /// Adapters and head on a randomly initialised backbone: what the pretrained backbone
    /// is worth.
    AdaptersRandomInit,
    /// LoRA on every block's query and value projections, and the head; the backbone frozen.
    Lora,
}

impl Method {
    pub const ALL: [Method; 5] = [
        Method::Adapters,
        Method::LinearProbe,
        Method::Full,
        Method::AdaptersRandomInit,
        Method::Lora,
    ];

    /// The column value: `adapters`, `linear-probe`, `full`, `adapters-random-init`, `lora`.
    pub fn name(self) -> &'static str {
        match self {
            Method::Adapters => "adapters",
            Method::LinearProbe => "linear-probe",
            Method::Full => "full",
            Method::AdaptersRandomInit => "adapters-random-init",
            Method::Lora => "lora",
        }
    }

    /// The method a column value names.
    pub fn parse(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == name)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a run ended (the `status` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunStatus {
    /// Trained and tested.
    Ok,
    /// The loss became non-finite; the reason is in `error`.
    Diverged,
    /// The run did not finish (a crash, a worker or job that failed); the reason is in
    /// `error`.
    Failed,
}

impl RunStatus {
    pub const ALL: [RunStatus; 3] = [RunStatus::Ok, RunStatus::Diverged, RunStatus::Failed];

    /// The column value: `ok`, `diverged`, `failed`.
    pub fn name(self) -> &'static str {
        match self {
            RunStatus::Ok => "ok",
            RunStatus::Diverged => "diverged",
            RunStatus::Failed => "failed",
        }
    }

    pub fn is_ok(self) -> bool {
        self == RunStatus::Ok
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_names_are_the_column_values() {
        for m in Method::ALL {
            assert_eq!(serde_json::to_value(m).unwrap(), m.name());
            assert_eq!(Method::parse(m.name()), Some(m));
            assert_eq!(m.to_string(), m.name());
        }
        for s in RunStatus::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.name());
            let back: RunStatus = serde_json::from_value(s.name().into()).unwrap();
            assert_eq!(back, s);
        }
        assert_eq!(Method::parse("prompt-tuning"), None);
        let err = serde_json::from_str::<Method>("\"prompt-tuning\"").unwrap_err();
        assert!(err.to_string().contains("prompt-tuning"), "{err}");
    }
}
