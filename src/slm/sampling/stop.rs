//! Stop strings over streamed text: hold back what could still become a stop string, cut at the
//! first one hit.

use crate::{Error, Result};

/// Longest stop string accepted, in bytes: the matcher holds back up to that much text and compares
/// it against every stop string at each token.
pub const MAX_STOP_BYTES: usize = 256;
/// Most stop strings one request may carry (OpenAI's limit).
pub const MAX_STOPS: usize = 4;

/// 422 naming the field: more than [`MAX_STOPS`] strings (`stop`), or an empty one or one over
/// [`MAX_STOP_BYTES`] bytes (`stop[i]`). Checked by both protocols before anything else runs.
pub fn validate_stop(stop: &[String]) -> Result<()> {
    if stop.len() > MAX_STOPS {
        return Err(Error::invalid("stop", format!("at most {MAX_STOPS} stop strings, got {}", stop.len())));
    }
    for (i, s) in stop.iter().enumerate() {
        if s.is_empty() {
            return Err(Error::invalid(&format!("stop[{i}]"), "must not be empty"));
        }
        if s.len() > MAX_STOP_BYTES {
            return Err(Error::invalid(
                &format!("stop[{i}]"),
                format!("{} bytes is over the limit of {MAX_STOP_BYTES}", s.len()),
            ));
        }
    }
    Ok(())
}

/// Stop strings over streamed text. `push` returns the text safe to emit now, holding back any suffix
/// that could still grow into a stop string, and whether a stop string was hit (the stop string and
/// everything after it are never emitted). `finish` returns what was held back when generation ends
/// for another reason.
#[derive(Debug, Clone)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not emitted yet: always a proper prefix of some stop string.
    held: String,
    stopped: bool,
}

impl StopMatcher {
    /// Empty stop strings are ignored.
    pub fn new(stops: Vec<String>) -> Self {
        let stops = stops.into_iter().filter(|s| !s.is_empty()).collect();
        StopMatcher { stops, held: String::new(), stopped: false }
    }

    /// Whether a stop string was hit.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    pub fn push(&mut self, text: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        if self.stops.is_empty() {
            return (text.to_string(), false);
        }
        self.held.push_str(text);
        // The earliest stop string wins.
        if let Some(pos) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            self.held.truncate(pos);
            self.stopped = true;
            return (std::mem::take(&mut self.held), true);
        }
        // Hold back the longest suffix that is the start of some stop string.
        let keep_from = (0..self.held.len())
            .filter(|&i| self.held.is_char_boundary(i))
            .find(|&i| {
                let suffix = &self.held[i..];
                self.stops.iter().any(|s| s.starts_with(suffix))
            })
            .unwrap_or(self.held.len());
        let rest = self.held.split_off(keep_from);
        (std::mem::replace(&mut self.held, rest), false)
    }

    /// The held-back text, when generation ends without a stop string.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces` and returns (emitted text, stopped).
    fn run_stops(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let (text, hit) = m.push(p);
            out.push_str(&text);
            if hit {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn stop_validation_names_the_field() {
        let ok: Vec<String> = vec!["a".repeat(MAX_STOP_BYTES), "\n".into()];
        validate_stop(&ok).unwrap();
        validate_stop(&[]).unwrap();
        let long = vec!["x".into(), "y".into(), "z".repeat(MAX_STOP_BYTES + 1)];
        let e = validate_stop(&long).unwrap_err().to_string();
        assert!(e.contains("stop[2]") && e.contains("257 bytes") && e.contains("256"), "{e}");
        // Bytes, not characters: 86 three-byte characters are 258 bytes.
        let e = validate_stop(&["日".repeat(86)]).unwrap_err().to_string();
        assert!(e.contains("stop[0]") && e.contains("258 bytes"), "{e}");
        let e = validate_stop(&["a".into(), String::new()]).unwrap_err().to_string();
        assert!(e.contains("stop[1]") && e.contains("empty"), "{e}");
        let many: Vec<String> = (0..=MAX_STOPS).map(|i| i.to_string()).collect();
        let e = validate_stop(&many).unwrap_err().to_string();
        assert!(e.starts_with("stop: ") && e.contains("at most 4"), "{e}");
    }

    #[test]
    fn stop_strings_across_pieces() {
        assert_eq!(run_stops(&["END"], &["abc", "E", "N", "D", "zzz"]), ("abc".into(), true));
        assert_eq!(run_stops(&["END"], &["abcEN", "Dzz"]), ("abc".into(), true));
        // A partial match that fails is released.
        assert_eq!(run_stops(&["END"], &["abEN", "x"]), ("abENx".into(), false));
        // Overlap: "EEND" contains END starting at the second E.
        assert_eq!(run_stops(&["END"], &["xE", "E", "ND"]), ("xE".into(), true));
        // The earliest of several stop strings wins.
        assert_eq!(run_stops(&["world", "lo w"], &["hel", "lo world"]), ("hel".into(), true));
        // Held-back text comes out at the end.
        assert_eq!(run_stops(&["###"], &["a#", "#"]), ("a##".into(), false));
        // No stops: everything passes straight through.
        assert_eq!(run_stops(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(run_stops(&[""], &["a", "b"]), ("ab".into(), false));
    }

    #[test]
    fn stop_matcher_holds_only_what_could_match() {
        let mut m = StopMatcher::new(vec!["\n\nUser:".into()]);
        assert_eq!(m.push("Hello\n"), ("Hello".into(), false));
        assert_eq!(m.push("\nUs"), (String::new(), false));
        assert_eq!(m.push("ed"), ("\n\nUsed".into(), false));
        assert_eq!(m.push("\n\nUser: hi"), (String::new(), true));
        assert!(m.stopped());
        assert_eq!(m.push("more"), (String::new(), true));
    }

    #[test]
    fn stop_strings_with_multibyte_text() {
        assert_eq!(run_stops(&["。"], &["日本", "語。", "次"]), ("日本語".into(), true));
        // The stop string's first char is held; a different char with the same first byte is released.
        // "é" is C3 A9 and "è" is C3 A8.
        let mut m = StopMatcher::new(vec!["éx".into()]);
        assert_eq!(m.push("aé"), ("a".into(), false));
        assert_eq!(m.push("è"), ("éè".into(), false));
        assert_eq!(m.push("éx🎉"), (String::new(), true));
        assert_eq!(run_stops(&["🎉!"], &["a🎉", "b"]), ("a🎉b".into(), false));
        assert_eq!(run_stops(&["🎉!"], &["a🎉", "!"]), ("a".into(), true));
    }
}
