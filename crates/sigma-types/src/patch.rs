//! `PATCH` semantics: a field that is absent stays as it is, `null` clears it, a value sets it.

use serde::{Deserialize, Deserializer};

/// Deserializes a present field (value or `null`) into `Some(..)`; combined with
/// `#[serde(default)]` an absent field stays `None`, so `Option<Option<T>>` tells
/// "absent" (`None`), "clear" (`Some(None)`) and "set" (`Some(Some(v))`) apart.
pub fn double_option<'de, T, D>(de: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    Deserialize::deserialize(de).map(Some)
}

/// Rejects an explicit `null` for a field that cannot be cleared, naming the field.
pub fn non_null<T>(
    v: Option<Option<T>>,
    field: &str,
    errors: &mut crate::FieldErrors,
) -> Option<T> {
    match v {
        Some(None) => {
            errors.add(field, "cannot be null");
            None
        }
        Some(Some(v)) => Some(v),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct P {
        #[serde(default, deserialize_with = "double_option")]
        a: Option<Option<String>>,
    }

    #[test]
    fn absent_null_and_value_are_distinct() {
        let p: P = serde_json::from_str("{}").unwrap();
        assert_eq!(p.a, None);
        let p: P = serde_json::from_str(r#"{"a":null}"#).unwrap();
        assert_eq!(p.a, Some(None));
        let p: P = serde_json::from_str(r#"{"a":"x"}"#).unwrap();
        assert_eq!(p.a, Some(Some("x".into())));
    }
}
