//! The decoder behind [`crate::from_json`]: a [`serde::Deserializer`] over
//! an owned [`serde_json::Value`], like serde_json's own, but smaller in wasm
//! because it decodes structs (and struct variants) from JSON objects only.
//! serde_json also accepts a struct written as an array of its fields, which
//! costs a second decoder per struct; keyward never writes one. Everything
//! else (numbers, options, enums, maps with integer keys, error messages)
//! behaves as serde_json's `Value` deserializer does.

use std::fmt::{self, Display};

use serde::de::{self, DeserializeSeed, Expected, Unexpected, Visitor};
use serde::forward_to_deserialize_any;
use serde::Deserialize;
use serde_json::{Map, Number, Value};

/// The decoder's error: its message, which [`crate::from_json`] hands on as
/// a `serde_json::Error` (the same message serde_json's would carry), boxed
/// to be a pointer wide as that one is. Its
/// own type so that "invalid type/value" messages are written by
/// [`Shown`]: serde's `Unexpected` display, which serde_json's error falls
/// back to, links the whole `f64` formatter (about 6 KB gzipped) for a case
/// serde_json already prints differently.
#[derive(Debug)]
#[allow(clippy::box_collection)]
pub(crate) struct Error(pub(crate) Box<String>);

impl Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    #[cold]
    fn custom<T: Display>(msg: T) -> Self {
        Error(Box::new(msg.to_string()))
    }
    #[cold]
    fn invalid_type(unexp: Unexpected, exp: &dyn Expected) -> Self {
        Error(Box::new(format!("invalid type: {}, expected {}", Shown(unexp), exp)))
    }
    #[cold]
    fn invalid_value(unexp: Unexpected, exp: &dyn Expected) -> Self {
        Error(Box::new(format!("invalid value: {}, expected {}", Shown(unexp), exp)))
    }
}

/// An unexpected value as serde_json's error shows it: `null` for a unit,
/// a float as serde_json writes numbers, the rest as serde writes them.
struct Shown<'a>(Unexpected<'a>);

impl Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.0 {
            Unexpected::Bool(b) => write!(f, "boolean `{b}`"),
            Unexpected::Unsigned(i) => write!(f, "integer `{i}`"),
            Unexpected::Signed(i) => write!(f, "integer `{i}`"),
            Unexpected::Float(x) => match Number::from_f64(x) {
                Some(n) => write!(f, "floating point `{n}`"),
                None if x.is_nan() => f.write_str("floating point `NaN`"),
                None if x > 0.0 => f.write_str("floating point `inf`"),
                None => f.write_str("floating point `-inf`"),
            },
            Unexpected::Char(c) => write!(f, "character `{c}`"),
            Unexpected::Str(s) => write!(f, "string {s:?}"),
            Unexpected::Bytes(_) => f.write_str("byte array"),
            Unexpected::Unit => f.write_str("null"),
            Unexpected::Option => f.write_str("Option value"),
            Unexpected::NewtypeStruct => f.write_str("newtype struct"),
            Unexpected::Seq => f.write_str("sequence"),
            Unexpected::Map => f.write_str("map"),
            Unexpected::Enum => f.write_str("enum"),
            Unexpected::UnitVariant => f.write_str("unit variant"),
            Unexpected::NewtypeVariant => f.write_str("newtype variant"),
            Unexpected::TupleVariant => f.write_str("tuple variant"),
            Unexpected::StructVariant => f.write_str("struct variant"),
            Unexpected::Other(other) => f.write_str(other),
        }
    }
}

/// A JSON value to decode.
pub(crate) struct De(pub(crate) Value);

fn unexpected(v: &Value) -> Unexpected<'_> {
    match v {
        Value::Null => Unexpected::Unit,
        Value::Bool(b) => Unexpected::Bool(*b),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Unexpected::Unsigned(u),
            (None, Some(i)) => Unexpected::Signed(i),
            _ => Unexpected::Float(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => Unexpected::Str(s),
        Value::Array(_) => Unexpected::Seq,
        Value::Object(_) => Unexpected::Map,
    }
}

fn invalid(v: &Value, exp: &dyn Expected) -> Error {
    de::Error::invalid_type(unexpected(v), exp)
}

fn seq<'de, V: Visitor<'de>>(a: Vec<Value>, v: V) -> Result<V::Value, Error> {
    let len = a.len();
    let mut s = Seq(a.into_iter());
    let out = v.visit_seq(&mut s)?;
    match s.0.len() {
        0 => Ok(out),
        _ => Err(de::Error::invalid_length(len, &"fewer elements in array")),
    }
}

/// Every visitor of a map here (serde's derive for structs, its impls for
/// maps) reads to the end, so serde_json's check for entries left over
/// (`invalid length … fewer elements in map`) can never fire: it is not
/// repeated here, per visitor.
fn map<'de, V: Visitor<'de>>(m: Map<String, Value>, v: V) -> Result<V::Value, Error> {
    v.visit_map(&mut Entries { iter: m.into_iter(), value: None })
}

impl De {
    fn number<'de, V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Number(n) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => v.visit_u64(u),
                (None, Some(i)) => v.visit_i64(i),
                _ => v.visit_f64(n.as_f64().unwrap_or_default()),
            },
            other => Err(invalid(&other, &v)),
        }
    }
}

impl<'de> de::Deserializer<'de> for De {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => v.visit_unit(),
            Value::Bool(b) => v.visit_bool(b),
            n @ Value::Number(_) => De(n).number(v),
            Value::String(s) => v.visit_string(s),
            Value::Array(a) => seq(a, v),
            Value::Object(m) => map(m, v),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Bool(b) => v.visit_bool(b),
            other => Err(invalid(&other, &v)),
        }
    }

    fn deserialize_i8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.number(v)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.number(v)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.number(v)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.number(v)
    }
    fn deserialize_u8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.number(v)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.number(v)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.number(v)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.number(v)
    }
    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.number(v)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.number(v)
    }

    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_string(v)
    }
    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_string(v)
    }
    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::String(s) => v.visit_string(s),
            other => Err(invalid(&other, &v)),
        }
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_string(v)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_any(v)
    }
    fn deserialize_byte_buf<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_any(v)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => v.visit_none(),
            other => v.visit_some(De(other)),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => v.visit_unit(),
            other => Err(invalid(&other, &v)),
        }
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(self, _: &'static str, v: V) -> Result<V::Value, Error> {
        self.deserialize_unit(v)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, v: V) -> Result<V::Value, Error> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Array(a) => seq(a, v),
            other => Err(invalid(&other, &v)),
        }
    }
    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, v: V) -> Result<V::Value, Error> {
        self.deserialize_seq(v)
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(self, _: &'static str, _: usize, v: V) -> Result<V::Value, Error> {
        self.deserialize_seq(v)
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Object(m) => map(m, v),
            other => Err(invalid(&other, &v)),
        }
    }
    /// Objects only (see the module documentation).
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_map(v)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_enum(Variant::of(self.0)?)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        drop(self);
        v.visit_unit()
    }
}

struct Seq(std::vec::IntoIter<Value>);

impl<'de> de::SeqAccess<'de> for Seq {
    type Error = Error;
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
        match self.0.next() {
            Some(v) => seed.deserialize(De(v)).map(Some),
            None => Ok(None),
        }
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct Entries {
    iter: serde_json::map::IntoIter,
    value: Option<Value>,
}

// The steps that do not depend on the visitor, once, not inlined into
// every visitor.
impl Entries {
    /// The next key; its value is kept for [`Entries::value`].
    #[inline(never)]
    fn key(&mut self) -> Option<String> {
        let (k, v) = self.iter.next()?;
        self.value = Some(v);
        Some(k)
    }

    /// The value of the key just read.
    #[inline(never)]
    fn value(&mut self) -> Result<Value, Error> {
        self.value.take().ok_or_else(|| de::Error::custom("value is missing"))
    }
}

impl<'de> de::MapAccess<'de> for Entries {
    type Error = Error;
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        match self.key() {
            Some(k) => seed.deserialize(Key(k)).map(Some),
            None => Ok(None),
        }
    }
    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(De(self.value()?))
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

/// An object key or a variant name. Integer types read the key as a
/// number, as serde_json's `Value` deserializer does (`{"3600000": …}` into
/// a `BTreeMap<i64, _>`).
struct Key(String);

impl Key {
    fn integer<'de, V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match (self.0.parse::<u64>(), self.0.parse::<i64>()) {
            (Ok(u), _) => v.visit_u64(u),
            (_, Ok(i)) => v.visit_i64(i),
            _ => Err(de::Error::invalid_type(Unexpected::Str(&self.0), &v)),
        }
    }
}

impl<'de> de::Deserializer<'de> for Key {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_string(self.0)
    }
    fn deserialize_i8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.integer(v)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.integer(v)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.integer(v)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.integer(v)
    }
    fn deserialize_u8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.integer(v)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.integer(v)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.integer(v)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.integer(v)
    }
    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_some(self)
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, v: V) -> Result<V::Value, Error> {
        v.visit_newtype_struct(self)
    }

    forward_to_deserialize_any! {
        bool f32 f64 char str string bytes byte_buf unit unit_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

struct Variant {
    variant: String,
    value: Option<Value>,
}

impl Variant {
    /// An enum's value: `"name"` or `{"name": payload}` (once, not per enum).
    #[inline(never)]
    fn of(v: Value) -> Result<Variant, Error> {
        match v {
            Value::String(variant) => Ok(Variant { variant, value: None }),
            Value::Object(m) => {
                let mut iter = m.into_iter();
                match (iter.next(), iter.next()) {
                    (Some((variant, value)), None) => Ok(Variant { variant, value: Some(value) }),
                    _ => Err(de::Error::invalid_value(Unexpected::Map, &"map with a single key")),
                }
            }
            other => Err(invalid(&other, &"string or map")),
        }
    }
}

impl<'de> de::EnumAccess<'de> for Variant {
    type Error = Error;
    type Variant = Payload;
    fn variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<(T::Value, Payload), Error> {
        Ok((seed.deserialize(Key(self.variant))?, Payload(self.value)))
    }
}

/// What follows a variant's name, if anything.
struct Payload(Option<Value>);

impl<'de> de::VariantAccess<'de> for Payload {
    type Error = Error;
    fn unit_variant(self) -> Result<(), Error> {
        match self.0 {
            None | Some(Value::Null) => Ok(()),
            Some(other) => Err(invalid(&other, &"unit")),
        }
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        match self.0 {
            Some(v) => seed.deserialize(De(v)),
            None => Err(de::Error::invalid_type(Unexpected::UnitVariant, &"newtype variant")),
        }
    }
    fn tuple_variant<V: Visitor<'de>>(self, _: usize, v: V) -> Result<V::Value, Error> {
        match self.0 {
            Some(Value::Array(a)) => seq(a, v),
            Some(other) => Err(invalid(&other, &"tuple variant")),
            None => Err(de::Error::invalid_type(Unexpected::UnitVariant, &"tuple variant")),
        }
    }
    /// Objects only (see the module documentation).
    fn struct_variant<V: Visitor<'de>>(self, _: &'static [&'static str], v: V) -> Result<V::Value, Error> {
        match self.0 {
            Some(Value::Object(m)) => map(m, v),
            Some(other) => Err(invalid(&other, &"struct variant")),
            None => Err(de::Error::invalid_type(Unexpected::UnitVariant, &"struct variant")),
        }
    }
}

/// A struct's members, for a hand-written `Deserialize` that decodes as
/// serde's derive does from a JSON object (through [`crate::from_json`],
/// keys in order: a `serde_json::Map` is sorted) but is one decoder, not a
/// visitor and a field visitor per struct: each member through its type's
/// decoder ([`Members::fill`]: present members in name order, as the derive
/// meets them), then the missing required ones in declaration order
/// ([`missing`]), with the derive's messages. Unknown members are ignored.
pub(crate) struct Members(Map<String, Value>);

impl Members {
    /// The members of an object; anything else is refused as the derive
    /// refuses it (`invalid type: …, expected struct Name`).
    pub(crate) fn of<'de, D: de::Deserializer<'de>>(d: D, expected: &'static str) -> Result<Members, D::Error> {
        match Value::deserialize(d)? {
            Value::Object(m) => Ok(Members(m)),
            other => Err(de::Error::invalid_type(unexpected(&other), &expected)),
        }
    }

    /// Decodes member `k` into `slot` if it is present; whether it was.
    pub(crate) fn fill<T: serde::de::DeserializeOwned, E: de::Error>(
        &mut self,
        k: &str,
        slot: &mut T,
    ) -> Result<bool, E> {
        match self.0.remove(k) {
            Some(v) => {
                *slot = T::deserialize(De(v)).map_err(forward)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// The derive's error for the first required member not present.
pub(crate) fn missing<E: de::Error>(required: &[(bool, &'static str)]) -> Result<(), E> {
    match required.iter().find(|(present, _)| !present) {
        Some((_, k)) => Err(E::missing_field(k)),
        None => Ok(()),
    }
}

/// A member's error as the outer decoder's (the same message).
#[cold]
#[inline(never)]
fn forward<E: de::Error>(e: Error) -> E {
    E::custom(*e.0)
}

// JSON text written directly (no `serde_json::Value` to build first).

/// `{}`.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))] // used by the worker (src/edge)
pub(crate) const EMPTY: &str = "{}";

/// A value's JSON text (nothing here fails to serialize: no map has
/// non-string keys).
pub(crate) fn text<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// A JSON object of members written as JSON text, given in the order
/// serde_json's `Value` writes them (sorted keys), so bodies are as before.
pub(crate) fn obj(members: &[(&str, String)]) -> String {
    debug_assert!(members.windows(2).all(|w| w[0].0 < w[1].0), "unsorted keys");
    let mut out = String::from("{");
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        out.push_str(k);
        out.push_str("\":");
        out.push_str(v);
    }
    out.push('}');
    out
}

/// A JSON array of items written as JSON text.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))] // used by the worker (src/edge)
pub(crate) fn array(items: &[String]) -> String {
    format!("[{}]", items.join(","))
}

/// A message's variant and its fields, for the hand-written decoders of the
/// messages between the worker and its objects ([`crate::admin::OrgRequest`],
/// [`crate::guard::GuardRequest`], [`crate::guard::GuardReply`]). They read
/// what serde's derive writes for an externally tagged enum (`"name"` for a
/// unit variant, `{"name": {fields}}` otherwise) with one small decoder per
/// message instead of serde's visitor per variant. As the derive does, a
/// field not known is ignored and a missing `Option` is `None`.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))] // used by the worker (src/edge)
pub(crate) struct Fields(Map<String, Value>);

/// A decoder's result.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))] // used by the worker (src/edge)
pub(crate) type Got<T> = Result<T, Error>;

/// The decoder's error for a message that is not one.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))] // used by the worker (src/edge)
#[cold]
pub(crate) fn bad(what: &str) -> Error {
    Error(Box::new(format!("invalid message: {what}")))
}

#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))] // used by the worker (src/edge)
impl Fields {
    /// The fields of an object.
    pub(crate) fn of(v: Value) -> Got<Fields> {
        match v {
            Value::Object(m) => Ok(Fields(m)),
            _ => Err(bad("not an object")),
        }
    }

    /// Parses a message: its variant's name and fields (none for a unit
    /// variant).
    pub(crate) fn variant(text: &str) -> Got<(String, Fields)> {
        let v: Value = serde_json::from_str(text).map_err(|e| Error(Box::new(e.to_string())))?;
        Fields::tagged(v)
    }

    /// A variant as a value: `"name"` or `{"name": {fields}}`.
    pub(crate) fn tagged(v: Value) -> Got<(String, Fields)> {
        match v {
            Value::String(s) => Ok((s, Fields(Map::new()))),
            Value::Object(m) if m.len() == 1 => {
                let (k, v) = m.into_iter().next().ok_or_else(|| bad("empty"))?;
                Ok((k, Fields::of(v)?))
            }
            _ => Err(bad("no variant")),
        }
    }

    /// A field's value, `Null` when missing.
    pub(crate) fn raw(&mut self, k: &str) -> Value {
        self.0.remove(k).unwrap_or(Value::Null)
    }

    /// A field, through the type's own decoder.
    pub(crate) fn get<T: serde::de::DeserializeOwned>(&mut self, k: &str) -> Got<T> {
        T::deserialize(De(self.raw(k)))
    }

    /// A field of a type with a default, the default when missing or null.
    pub(crate) fn or_default<T: serde::de::DeserializeOwned + Default>(&mut self, k: &str) -> Got<T> {
        match self.raw(k) {
            Value::Null => Ok(T::default()),
            v => T::deserialize(De(v)),
        }
    }

    /// A string field.
    pub(crate) fn s(&mut self, k: &str) -> Got<String> {
        match self.raw(k) {
            Value::String(s) => Ok(s),
            _ => Err(bad(k)),
        }
    }

    /// An optional string field.
    pub(crate) fn os(&mut self, k: &str) -> Got<Option<String>> {
        match self.raw(k) {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s)),
            _ => Err(bad(k)),
        }
    }

    /// An integer field.
    pub(crate) fn i(&mut self, k: &str) -> Got<i64> {
        self.raw(k).as_i64().ok_or_else(|| bad(k))
    }

    /// An optional integer field.
    pub(crate) fn oi(&mut self, k: &str) -> Got<Option<i64>> {
        match self.raw(k) {
            Value::Null => Ok(None),
            v => v.as_i64().map(Some).ok_or_else(|| bad(k)),
        }
    }

    /// An unsigned integer field.
    pub(crate) fn u(&mut self, k: &str) -> Got<u64> {
        self.raw(k).as_u64().ok_or_else(|| bad(k))
    }

    /// A `u32` field.
    pub(crate) fn u32(&mut self, k: &str) -> Got<u32> {
        u32::try_from(self.u(k)?).map_err(|_| bad(k))
    }

    /// A boolean field.
    pub(crate) fn b(&mut self, k: &str) -> Got<bool> {
        self.raw(k).as_bool().ok_or_else(|| bad(k))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn written_text_is_what_value_writes() {
        let limits = vec![crate::ratelimit::RateLimit { name: "m\"x".into(), limit: 3, window_seconds: 60 }];
        let t = super::obj(&[
            ("a", super::text(&limits)),
            ("b", super::text(&Some("x\u{1}é"))),
            ("c", super::array(&[super::EMPTY.into(), super::text(&-4i64)])),
            ("d", super::text(&None::<String>)),
        ]);
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        assert_eq!(v, serde_json::json!({"a": limits, "b": "x\u{1}é", "c": [{}, -4], "d": null}));
        let sorted = super::obj(&[("b", "1".into()), ("c", "[]".into())]);
        assert_eq!(serde_json::from_str::<serde_json::Value>(&sorted).unwrap().to_string(), sorted);
    }

    use serde::de::DeserializeOwned;

    /// The message of `from_json`'s error is serde_json's `Value`
    /// deserializer's, word for word (floats included).
    fn same<T: DeserializeOwned + std::fmt::Debug>(text: &str) {
        let ours = crate::from_json::<T>(text).unwrap_err().to_string();
        let theirs = serde_json::from_value::<T>(serde_json::from_str(text).unwrap()).unwrap_err().to_string();
        assert_eq!(ours, theirs, "{text}");
    }

    #[test]
    fn error_messages_match_serde_json() {
        same::<String>("1.5");
        same::<String>("-2.5e300");
        same::<String>("1e20");
        same::<String>("null");
        same::<String>("true");
        same::<String>("[1]");
        same::<String>("{}");
        same::<u32>("-1");
        same::<u8>("300");
        same::<u64>("0.5");
        same::<bool>("\"x\\\"y\"");
        same::<Option<u16>>("70000");
        same::<Vec<i8>>("[1, 2, 1000]");
        same::<char>("\"ab\"");
        same::<crate::records::Consistency>("{\"nope\": {}}");
    }
}
