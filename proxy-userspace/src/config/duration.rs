//! Durations in the config file, written the way Envoy and Kubernetes users expect:
//! `250ms`, `2s`, `1.5s`, `5m`, `1h`.

use std::time::Duration;

use serde::{Deserialize, Deserializer, de::Error as _};

/// The longest duration any setting takes: longer ones are typos, and would overflow
/// the clocks they are added to.
pub const MAX: Duration = Duration::from_secs(24 * 3600);

/// Parses `<number><unit>` with unit `ms`, `s`, `m` or `h`, at most [`MAX`].
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 250ms, 2s, 5m or 1h"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "" => return Err(format!("{text:?} needs a unit: ms, s, m or h")),
        other => return Err(format!("{text:?}: unknown unit {other:?}; use ms, s, m or h")),
    };
    let duration =
        Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?} is out of range"))?;
    if duration > MAX {
        return Err(format!("{text:?} is longer than the 24h any setting allows"));
    }
    Ok(duration)
}

/// `#[serde(deserialize_with = "duration::deserialize")]` for a `Duration` field.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse(&text).map_err(D::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_envoy_style_durations() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse(" 1h "), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        assert!(parse("10").unwrap_err().contains("needs a unit"));
        assert!(parse("10 seconds").unwrap_err().contains("unknown unit"));
        assert!(parse("s").unwrap_err().contains("is not a duration"));
        assert!(parse("-1s").is_err());
        assert!(parse("1e400s").is_err());
        assert_eq!(parse("24h"), Ok(MAX));
        assert!(parse("25h").unwrap_err().contains("longer than the 24h"));
        assert!(parse("99999999999h").is_err());
    }
}
