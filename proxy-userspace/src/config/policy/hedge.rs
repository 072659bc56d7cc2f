//! The `hedge` block of a service: off by default, because only the user knows which
//! calls are safe to send twice at once.
//!
//! ```yaml
//! hedge:
//!   enabled: true
//!   paths: [/shop.Catalog/GetItem, /api/*]   # default: every call it may cover
//!   percentile: 95          # hedge a call still unanswered after p95 of recent calls …
//!   min_delay: 2ms          # … but never sooner than this
//!   max_extra_load: 10%     # hedges and retries together, as a share of calls
//!   max_attempts: 2         # tries of one call at once, the first included
//! ```

use std::{fmt, time::Duration};

use serde::{Deserialize, Deserializer, de::Error as _};

use crate::config::duration;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HedgePolicy {
    /// Default false.
    pub enabled: bool,
    /// gRPC methods (`/package.Service/Method`) or HTTP paths the hedge covers; an
    /// entry ending in `*` covers every path it begins. Default: none listed, so every
    /// gRPC call and every request with an idempotent HTTP method.
    pub paths: Vec<String>,
    /// A call still unanswered after this percentile of the service's recent latencies
    /// is hedged. Default 95.
    #[serde(deserialize_with = "deserialize_percent")]
    pub percentile: Percent,
    /// The shortest wait before a hedge, whatever the percentile says. Default 2ms.
    #[serde(deserialize_with = "duration::deserialize")]
    pub min_delay: Duration,
    /// Hedges may be sent while hedges and retries of the last 10 s stay within this
    /// share of its calls. Default 10%.
    #[serde(deserialize_with = "deserialize_percent")]
    pub max_extra_load: Percent,
    /// Tries of one call at once, the first included. Default 2 (one hedge).
    pub max_attempts: u32,
}

impl Default for HedgePolicy {
    fn default() -> Self {
        Self {
            enabled: false,
            paths: Vec::new(),
            percentile: Percent::from_tenths(950),
            min_delay: Duration::from_millis(2),
            max_extra_load: Percent::from_tenths(100),
            max_attempts: 2,
        }
    }
}

impl HedgePolicy {
    /// Checks what serde cannot: a field name and the problem.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let problem = |field: &str, text: String| Err((format!("hedge.{field}"), text));
        if !(500..=999).contains(&self.percentile.tenths()) {
            return problem("percentile", format!("{} must be from 50 to 99.9", self.percentile));
        }
        if !(1..=1000).contains(&self.max_extra_load.tenths()) {
            return problem(
                "max_extra_load",
                format!("{} must be more than 0% and at most 100%", self.max_extra_load),
            );
        }
        if !(2..=10).contains(&self.max_attempts) {
            return problem(
                "max_attempts",
                format!("{} must be from 2 (one hedge) to 10", self.max_attempts),
            );
        }
        for (i, path) in self.paths.iter().enumerate() {
            let prefix = path.strip_suffix('*').unwrap_or(path);
            if !path.starts_with('/') || prefix.contains('*') {
                return problem(
                    &format!("paths[{i}]"),
                    format!(
                        "{path:?} must be a path like /package.Service/Method or /api/items, \
                         with at most a trailing *"
                    ),
                );
            }
        }
        Ok(())
    }

    /// Whether `path` is one the list names (every path when the list is empty).
    pub fn lists(&self, path: &str) -> bool {
        self.paths.is_empty()
            || self.paths.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => path.starts_with(prefix),
                None => p == path,
            })
    }
}

/// A share in tenths of a percent: `95`, `99.9`, `10%` in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Percent(u16);

impl Percent {
    pub const fn from_tenths(tenths: u16) -> Self {
        Self(tenths)
    }

    pub const fn tenths(self) -> u16 {
        self.0
    }

    /// The share as a fraction of 1.
    pub fn fraction(self) -> f64 {
        f64::from(self.0) / 1000.0
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 % 10 {
            0 => write!(f, "{}%", self.0 / 10),
            tenth => write!(f, "{}.{tenth}%", self.0 / 10),
        }
    }
}

/// Parses `95`, `99.9`, `10%` or `p95` into tenths of a percent.
pub fn parse_percent(text: &str) -> Result<Percent, String> {
    let text = text.trim();
    let number = text.strip_prefix('p').unwrap_or(text);
    let number = number.strip_suffix('%').unwrap_or(number).trim();
    let value: f64 = number.parse().map_err(|_| format!("{text:?} is not a percentage"))?;
    let tenths = (value * 10.0).round();
    if !(0.0..=1000.0).contains(&tenths) || (value * 10.0 - tenths).abs() > 1e-6 {
        return Err(format!("{text:?} must be from 0 to 100, in steps of 0.1"));
    }
    Ok(Percent(tenths as u16))
}

fn deserialize_percent<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Percent, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Number(f64),
        Text(String),
    }
    let text = match Written::deserialize(deserializer)? {
        Written::Number(n) => n.to_string(),
        Written::Text(t) => t,
    };
    parse_percent(&text).map_err(D::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_are_written_as_numbers_or_with_a_sign() {
        assert_eq!(parse_percent("95"), Ok(Percent(950)));
        assert_eq!(parse_percent("99.9"), Ok(Percent(999)));
        assert_eq!(parse_percent("10%"), Ok(Percent(100)));
        assert_eq!(parse_percent("p99"), Ok(Percent(990)));
        assert!(parse_percent("99.95").is_err(), "tenths at most");
        assert!(parse_percent("101").is_err());
        assert!(parse_percent("-1").is_err());
        assert!(parse_percent("most").is_err());
        assert_eq!(Percent(999).to_string(), "99.9%");
        assert_eq!(Percent(100).to_string(), "10%");
    }

    #[test]
    fn a_list_names_exact_paths_or_prefixes() {
        let mut policy = HedgePolicy::default();
        assert!(policy.lists("/anything"), "no list: every path");
        policy.paths = vec!["/shop.Catalog/GetItem".into(), "/api/*".into()];
        assert!(policy.lists("/shop.Catalog/GetItem"));
        assert!(!policy.lists("/shop.Catalog/GetItems"));
        assert!(policy.lists("/api/items/7"));
        assert!(!policy.lists("/shop.Cart/Add"));
    }

    #[test]
    fn bad_values_name_the_field() {
        let field = |policy: HedgePolicy| policy.validate().unwrap_err().0;
        let default = HedgePolicy::default;
        assert_eq!(default().validate(), Ok(()));
        assert_eq!(
            field(HedgePolicy { percentile: Percent(400), ..default() }),
            "hedge.percentile"
        );
        assert_eq!(
            field(HedgePolicy { max_extra_load: Percent(0), ..default() }),
            "hedge.max_extra_load"
        );
        assert_eq!(field(HedgePolicy { max_attempts: 1, ..default() }), "hedge.max_attempts");
        assert_eq!(
            field(HedgePolicy { paths: vec!["api/*".into()], ..default() }),
            "hedge.paths[0]"
        );
        assert_eq!(
            field(HedgePolicy { paths: vec!["/a*/b".into()], ..default() }),
            "hedge.paths[0]"
        );
    }
}
