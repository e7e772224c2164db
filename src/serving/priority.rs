//! Request priority classes: the configured names, highest first, and how a request's `priority`
//! resolves to a class index.

use crate::config::Priorities;
use crate::error::{Error, Result};

/// Priority classes, highest first, by name.
#[derive(Debug, Clone)]
pub struct PriorityClasses {
    pub names: Vec<String>,
    pub default: usize,
}

impl PriorityClasses {
    /// The classes of a validated `[priorities]` section.
    pub fn from_config(p: &Priorities) -> Self {
        PriorityClasses {
            names: p.classes.clone(),
            default: p
                .classes
                .iter()
                .position(|c| *c == p.default)
                .expect("validated: the default priority is a class"),
        }
    }

    /// Class index of a request's `priority` ("" = the default class).
    pub fn resolve(&self, name: &str) -> Result<usize> {
        if name.is_empty() {
            return Ok(self.default);
        }
        self.names.iter().position(|n| n == name).ok_or_else(|| {
            Error::invalid(
                "priority",
                format!("unknown priority class '{name}'; expected one of {:?}", self.names),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_to_their_index_and_empty_to_the_default() {
        let p =
            Priorities { classes: vec!["feed".into(), "ads".into(), "batch".into()], default: "ads".into() };
        let c = PriorityClasses::from_config(&p);
        assert_eq!(c.default, 1);
        assert_eq!(c.resolve("").unwrap(), 1);
        assert_eq!(c.resolve("feed").unwrap(), 0);
        assert_eq!(c.resolve("batch").unwrap(), 2);
        let e = c.resolve("urgent").unwrap_err();
        assert_eq!(e.http_status().as_u16(), 422);
        assert!(e.to_string().starts_with("priority: unknown priority class 'urgent'"), "{e}");
    }
}
