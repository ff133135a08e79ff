//! How the API reads the values of plain fields and query parameters, the same way wherever they
//! come: from a multipart form, the query of a raw image body, or the query of a list, an export
//! or a bulk action. Values are read as generated clients and HTML forms write them: surrounding
//! white space is ignored, booleans and enumerated values are read without regard to case.

/// At most this many characters of a refused value are shown in the error message.
const SHOWN: usize = 40;

/// The start of a refused value, for an error message.
pub(super) fn shown(text: &str) -> String {
    text.chars().take(SHOWN).collect()
}

/// The spellings of a boolean, as the document describes them.
pub(super) const BOOLEANS: &str = "true/false, 1/0, yes/no or on/off (any case)";

/// A boolean: `true`/`false` (in any case, as JSON, Python's `str(True)` and other generated
/// clients write them), `1`/`0`, `yes`/`no`, `on`/`off` (an HTML checkbox sends `on`).
pub(super) fn boolean(text: &str) -> Option<bool> {
    let t = text.trim();
    ["true", "1", "yes", "on"]
        .iter()
        .any(|s| t.eq_ignore_ascii_case(s))
        .then_some(true)
        .or_else(|| {
            ["false", "0", "no", "off"]
                .iter()
                .any(|s| t.eq_ignore_ascii_case(s))
                .then_some(false)
        })
}

/// An enumerated value (a status, an error code, a format, an event): trimmed and lower-cased,
/// then read by `parse`, which knows the spellings in the document (all lower case).
pub(super) fn enumerated<T, E>(
    text: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, E> {
    parse(&text.trim().to_ascii_lowercase())
}

/// A whole number in `range` (a leading `+` is allowed, as Rust and JSON writers differ there).
pub(super) fn whole_number<T>(text: &str, range: std::ops::RangeInclusive<T>) -> Option<T>
where
    T: std::str::FromStr + PartialOrd,
{
    text.trim().parse::<T>().ok().filter(|n| range.contains(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_are_read_as_clients_and_forms_write_them() {
        for yes in [
            "true", "True", "TRUE", " true ", "1", "yes", "Yes", "on", "ON",
        ] {
            assert_eq!(boolean(yes), Some(true), "{yes}");
        }
        for no in ["false", "False", "FALSE", "0", "no", "NO", "off", "Off"] {
            assert_eq!(boolean(no), Some(false), "{no}");
        }
        for bad in [
            "", " ", "maybe", "2", "-1", "t", "f", "truee", "y", "n", "nul",
        ] {
            assert_eq!(boolean(bad), None, "{bad}");
        }
    }

    #[test]
    fn whole_numbers_are_trimmed_and_bounded() {
        assert_eq!(whole_number(" 7 ", -1000..=1000), Some(7));
        assert_eq!(whole_number("+7", -1000..=1000), Some(7));
        assert_eq!(whole_number("-1000", -1000..=1000), Some(-1000));
        for bad in ["", "1001", "1.5", "7e2", "x", "99999999999999999999"] {
            assert_eq!(whole_number::<i32>(bad, -1000..=1000), None, "{bad}");
        }
    }

    #[test]
    fn enumerated_values_ignore_case_and_space() {
        let parse = |s: &str| s.parse::<imgclass_core::JobStatus>();
        assert_eq!(
            enumerated(" Queued ", parse).unwrap(),
            imgclass_core::JobStatus::Queued
        );
        assert!(enumerated("bogus", parse).is_err());
    }
}
