//! Strict decoding of JSON request bodies: exactly one JSON object, no key twice at any depth,
//! no struct in serde's positional (array) form.
//!
//! serde_json alone accepts all three: `from_slice` is fine, but a streaming deserializer stops
//! after the first value (`{"a":1} garbage` decodes), a struct deserializes from an array
//! (`["p","DE"]` is a provider), and maps — `serde_json::Value`, `HashMap` fields — keep the
//! last of duplicate keys. The rules live here, in the one body extractor, so that no body
//! type can forget them.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess,
    Unexpected, VariantAccess, Visitor,
};
use sigma_types::FieldErrors;

/// Decodes a request body into `T` by the rules above. Every mistake names its field the way
/// the other validation errors do (`ip_addresses[1].ip`; `body` for the whole body).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FieldErrors> {
    check_shape(bytes)?;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(Strict(&mut de)).map_err(named)
}

/// The second pass alone, over a body already decoded (and shape-checked) as a JSON value:
/// for bodies a handler takes apart before typing them (`PATCH /api/vps/{id}`).
pub fn decode_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, FieldErrors> {
    serde_path_to_error::deserialize(Strict(value)).map_err(named)
}

/// A decoding error as the field it concerns and a reason.
fn named(e: serde_path_to_error::Error<serde_json::Error>) -> FieldErrors {
    let inner = e.inner();
    let path = e.path().to_string();
    let field = if path == "." || path.is_empty() {
        "body".to_string()
    } else {
        path
    };
    // The first pass proved the document well-formed, so a "syntax" error here is serde_json
    // meeting a value of the wrong kind where an enum was expected (`"status": true`): it
    // belongs to that field, and its "expected value at line 1 column 32" says nothing.
    if inner.is_syntax() || inner.is_eof() {
        one(
            field,
            "has the wrong type: expected one of its documented string values",
        )
    } else {
        one(field, inner.to_string())
    }
}

fn one(field: impl Into<String>, reason: impl Into<String>) -> FieldErrors {
    let mut e = FieldErrors::new();
    e.add(field, reason);
    e
}

// -----------------------------------------------------------------------------------------
// First pass: the document's shape, whatever the target type.

/// Where a value sits in the document, kept on the stack and rendered only for an error.
#[derive(Clone, Copy)]
enum Place<'a> {
    Root,
    Key(&'a Place<'a>, &'a str),
    Index(&'a Place<'a>, usize),
}

impl fmt::Display for Place<'_> {
    /// serde_path_to_error's notation: `a.b[0].c`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Root => Ok(()),
            Place::Key(Place::Root, k) => f.write_str(k),
            Place::Key(parent, k) => write!(f, "{parent}.{k}"),
            Place::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// One JSON object with nothing after it but whitespace, and no object anywhere in it holding
/// a key twice. Nesting is bounded by serde_json's recursion limit (128), so a deeply nested
/// body is a 422, never a stack overflow.
fn check_shape(bytes: &[u8]) -> Result<(), FieldErrors> {
    let duplicate = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let shape = Shape {
        place: Place::Root,
        duplicate: &duplicate,
    };
    let r = shape.deserialize(&mut de).and_then(|()| de.end());
    match (r, duplicate.into_inner()) {
        (Ok(()), _) => Ok(()),
        (Err(_), Some(field)) => Err(one(field, "appears more than once")),
        (Err(e), None) => Err(one("body", e.to_string())),
    }
}

struct Shape<'a> {
    place: Place<'a>,
    /// The first duplicate key found, by its path.
    duplicate: &'a RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for Shape<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_any(self)
    }
}

impl Shape<'_> {
    fn scalar<E: de::Error>(&self, found: Unexpected<'_>) -> Result<(), E> {
        match self.place {
            Place::Root => Err(E::invalid_type(found, self)),
            _ => Ok(()),
        }
    }
}

impl<'de> Visitor<'de> for Shape<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.place {
            Place::Root => f.write_str("a JSON object"),
            _ => f.write_str("any JSON value"),
        }
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.scalar(Unexpected::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.scalar(Unexpected::Signed(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.scalar(Unexpected::Unsigned(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.scalar(Unexpected::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.scalar(Unexpected::Str(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.scalar(Unexpected::Unit)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if let Place::Root = self.place {
            return Err(de::Error::invalid_type(Unexpected::Seq, &self));
        }
        let mut i = 0;
        while seq
            .next_element_seed(Shape {
                place: Place::Index(&self.place, i),
                duplicate: self.duplicate,
            })?
            .is_some()
        {
            i += 1;
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let place = Place::Key(&self.place, &key);
            if seen.contains(&key) {
                *self.duplicate.borrow_mut() = Some(place.to_string());
                return Err(de::Error::custom(format_args!("duplicate key {key:?}")));
            }
            map.next_value_seed(Shape {
                place,
                duplicate: self.duplicate,
            })?;
            seen.insert(key);
        }
        Ok(())
    }
}

// -----------------------------------------------------------------------------------------
// Second pass: a deserializer that hands structs maps only.

/// Wraps a deserializer so that every struct, at any depth, is read from a JSON object only:
/// serde's derived structs also accept their fields as an array, in declaration order, which
/// makes `["p","DE"]` a provider and `[]` a default enrollment token.
struct Strict<D>(D);

/// A visitor that refuses sequences when it reads a struct, and wraps what it is handed so
/// that nested values follow the same rule.
struct Wrap<V> {
    inner: V,
    structure: bool,
}

impl<V> Wrap<V> {
    fn any(inner: V) -> Self {
        Wrap {
            inner,
            structure: false,
        }
    }
}

macro_rules! forward_deserialize {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            self.0.$method(Wrap::any(visitor))
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Strict<D> {
    type Error = D::Error;

    forward_deserialize!(
        deserialize_any deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32
        deserialize_i64 deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32
        deserialize_u64 deserialize_u128 deserialize_f32 deserialize_f64 deserialize_char
        deserialize_str deserialize_string deserialize_bytes deserialize_byte_buf
        deserialize_option deserialize_unit deserialize_seq deserialize_map
        deserialize_identifier deserialize_ignored_any
    );

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_unit_struct(name, Wrap::any(visitor))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_newtype_struct(name, Wrap::any(visitor))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_tuple(len, Wrap::any(visitor))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0
            .deserialize_tuple_struct(name, len, Wrap::any(visitor))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_struct(
            name,
            fields,
            Wrap {
                inner: visitor,
                structure: true,
            },
        )
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_enum(name, variants, Wrap::any(visitor))
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty))*) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
            self.inner.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    forward_visit!(
        visit_bool(bool) visit_i8(i8) visit_i16(i16) visit_i32(i32) visit_i64(i64)
        visit_i128(i128) visit_u8(u8) visit_u16(u16) visit_u32(u32) visit_u64(u64)
        visit_u128(u128) visit_f32(f32) visit_f64(f64) visit_char(char) visit_str(&str)
        visit_borrowed_str(&'de str) visit_string(String) visit_bytes(&[u8])
        visit_borrowed_bytes(&'de [u8]) visit_byte_buf(Vec<u8>)
    );

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<V::Value, D::Error> {
        self.inner.visit_some(Strict(de))
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, de: D) -> Result<V::Value, D::Error> {
        self.inner.visit_newtype_struct(Strict(de))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        if self.structure {
            return Err(de::Error::invalid_type(Unexpected::Seq, &self));
        }
        self.inner.visit_seq(StrictSeq(seq))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.inner.visit_map(StrictMap(map))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.inner.visit_enum(StrictEnum(data))
    }
}

/// A seed whose deserializer is wrapped.
struct StrictSeed<S>(S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for StrictSeed<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<S::Value, D::Error> {
        self.0.deserialize(Strict(de))
    }
}

struct StrictSeq<A>(A);

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for StrictSeq<A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.0.next_element_seed(StrictSeed(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

struct StrictMap<A>(A);

impl<'de, A: MapAccess<'de>> MapAccess<'de> for StrictMap<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.0.next_key_seed(StrictSeed(seed))
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        self.0.next_value_seed(StrictSeed(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

struct StrictEnum<A>(A);

impl<'de, A: EnumAccess<'de>> EnumAccess<'de> for StrictEnum<A> {
    type Error = A::Error;
    type Variant = StrictVariant<A::Variant>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self::Variant), A::Error> {
        let (v, variant) = self.0.variant_seed(StrictSeed(seed))?;
        Ok((v, StrictVariant(variant)))
    }
}

struct StrictVariant<A>(A);

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for StrictVariant<A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.0.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.0.newtype_variant_seed(StrictSeed(seed))
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.0.tuple_variant(len, Wrap::any(visitor))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.0.struct_variant(
            fields,
            Wrap {
                inner: visitor,
                structure: true,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;
    use serde_json::Value;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        a: u32,
        b: Option<String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        name: String,
        #[serde(default)]
        inner: Vec<Inner>,
        #[serde(default)]
        one: Option<Inner>,
        #[serde(default)]
        map: BTreeMap<String, Value>,
        #[serde(default)]
        free: Value,
    }

    fn field_of<T: DeserializeOwned + fmt::Debug>(body: &str) -> (String, String) {
        let e = decode::<T>(body.as_bytes()).expect_err(body);
        e.0.into_iter().next().unwrap()
    }

    #[test]
    fn one_object_with_whitespace_is_fine() {
        let o: Outer = decode(
            br#" {"name":"x","inner":[{"a":1,"b":null}],"one":{"a":2},"map":{"k":[1,{"z":1}]},"free":[[1],[2]]}
 "#,
        )
        .unwrap();
        assert_eq!(o.inner, vec![Inner { a: 1, b: None }]);
        assert_eq!(o.one, Some(Inner { a: 2, b: None }));
        assert_eq!(o.free, serde_json::json!([[1], [2]]));
        let v: Value = decode(br#"{"a":[1,2,[3]]}"#).unwrap();
        assert_eq!(v["a"][2][0], 3);
    }

    #[test]
    fn trailing_data_and_non_objects_are_the_body() {
        for body in [
            r#"{"name":"x"} garbage"#,
            r#"{"name":"x"}{"name":"y"}"#,
            r#"{"name":"x"},"#,
            r#"["x"]"#,
            "[]",
            r#""x""#,
            "1",
            "-1",
            "1.5",
            "null",
            "true",
            "",
            "   ",
            "{",
        ] {
            let (f, _) = field_of::<Outer>(body);
            assert_eq!(f, "body", "{body:?}");
            let (f, _) = field_of::<Value>(body);
            assert_eq!(f, "body", "{body:?} as a Value");
        }
    }

    #[test]
    fn duplicates_are_named_at_any_depth() {
        for (body, field) in [
            (r#"{"name":"x","name":"y"}"#, "name"),
            (
                r#"{"name":"x","inner":[{"a":1},{"a":1,"a":2}]}"#,
                "inner[1].a",
            ),
            (r#"{"name":"x","map":{"k":1,"k":1}}"#, "map.k"),
            (r#"{"name":"x","free":[[{"q":1,"q":1}]]}"#, "free[0][0].q"),
            (r#"{"name":"x","free":{"a\u0062":1,"ab":2}}"#, "free.ab"),
        ] {
            let (f, reason) = field_of::<Outer>(body);
            assert_eq!(f, field, "{body}");
            assert_eq!(reason, "appears more than once");
            assert_eq!(field_of::<Value>(body).0, field, "{body} as a Value");
        }
    }

    #[test]
    fn structs_never_come_from_arrays() {
        for (body, field) in [
            (r#"{"name":"x","inner":[[1,null]]}"#, "inner[0]"),
            (r#"{"name":"x","one":[1]}"#, "one"),
        ] {
            let (f, reason) = field_of::<Outer>(body);
            assert_eq!(f, field, "{body}");
            assert!(reason.contains("expected struct Inner"), "{reason}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let body = format!("{{\"free\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        let (f, reason) = field_of::<Outer>(&body);
        assert_eq!(f, "body");
        assert!(reason.contains("recursion limit"), "{reason}");
    }

    #[test]
    fn errors_name_fields_like_before() {
        let (f, _) = field_of::<Outer>(r#"{"name":1}"#);
        assert_eq!(f, "name");
        let (f, _) = field_of::<Outer>(r#"{"name":"x","inner":[{"a":"no"}]}"#);
        assert_eq!(f, "inner[0].a");
        let (f, _) = field_of::<Outer>(r#"{"name":"x","nope":1}"#);
        assert_eq!(f, "nope");
    }
}
