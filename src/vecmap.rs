//! A map kept as a sorted vector: lookups by binary search, inserts and
//! removals by shifting. For small, bounded maps (the guard's visitors,
//! leases, usage hours and refusal counts, the policy's roles) it is as
//! fast as a tree at these sizes and much smaller in the wasm than another
//! `BTreeMap` instantiation (every byte ships to every edge location).

use std::borrow::Borrow;

/// A map from `K` to `V`, ordered by key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VecMap<K, V>(Vec<(K, V)>);

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        VecMap(Vec::new())
    }
}

impl<K, V> VecMap<K, V> {
    /// An empty map.
    pub const fn new() -> Self {
        VecMap(Vec::new())
    }
}

impl<K: Ord, V> VecMap<K, V> {
    fn find<Q: Ord + ?Sized>(&self, k: &Q) -> Result<usize, usize>
    where
        K: Borrow<Q>,
    {
        self.0.binary_search_by(|(x, _)| x.borrow().cmp(k))
    }

    /// The value of `k`.
    pub fn get<Q: Ord + ?Sized>(&self, k: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.find(k).ok().map(|i| &self.0[i].1)
    }

    /// The value of `k`, mutably.
    pub fn get_mut<Q: Ord + ?Sized>(&mut self, k: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        self.find(k).ok().map(|i| &mut self.0[i].1)
    }

    /// Whether `k` is present.
    pub fn contains_key<Q: Ord + ?Sized>(&self, k: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.find(k).is_ok()
    }

    /// Sets `k` to `v`; returns the previous value.
    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        match self.find(&k) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, v)),
            Err(i) => {
                self.0.insert(i, (k, v));
                None
            }
        }
    }

    /// The value of `k`, inserted with `make` if absent.
    pub fn get_or_insert_with(&mut self, k: K, make: impl FnOnce() -> V) -> &mut V {
        let i = match self.find(&k) {
            Ok(i) => i,
            Err(i) => {
                self.0.insert(i, (k, make()));
                i
            }
        };
        &mut self.0[i].1
    }

    /// Removes `k`; returns its value.
    pub fn remove<Q: Ord + ?Sized>(&mut self, k: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        self.find(k).ok().map(|i| self.0.remove(i).1)
    }

    /// Removes the first entry (the smallest key).
    pub fn pop_first(&mut self) -> Option<(K, V)> {
        (!self.0.is_empty()).then(|| self.0.remove(0))
    }

    /// Keeps the entries `f` approves of.
    pub fn retain(&mut self, mut f: impl FnMut(&K, &mut V) -> bool) {
        self.0.retain_mut(|(k, v)| f(k, v));
    }

    /// Entries, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// Keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.0.iter().map(|(k, _)| k)
    }

    /// Values, in key order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.0.iter().map(|(_, v)| v)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: Ord + Borrow<Q>, V, Q: Ord + ?Sized> std::ops::Index<&Q> for VecMap<K, V> {
    type Output = V;

    fn index(&self, k: &Q) -> &V {
        #[allow(clippy::expect_used)]
        self.get(k).expect("no entry for this key") // as `BTreeMap`'s `Index`: the caller checked
    }
}

/// Entries by value, in key order.
impl<K, V> IntoIterator for VecMap<K, V> {
    type Item = (K, V);
    type IntoIter = std::vec::IntoIter<(K, V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// A map of the pairs; of a key given twice, the last value (as
/// `BTreeMap`).
impl<K: Ord, V> FromIterator<(K, V)> for VecMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        let mut m = VecMap::new();
        for (k, v) in pairs {
            m.insert(k, v);
        }
        m
    }
}

impl<K: Ord, V, const N: usize> From<[(K, V); N]> for VecMap<K, V> {
    fn from(pairs: [(K, V); N]) -> Self {
        pairs.into_iter().collect()
    }
}

/// Encodes as `BTreeMap` does: a map, in key order.
impl<K: serde::Serialize, V: serde::Serialize> serde::Serialize for VecMap<K, V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

/// Decodes a JSON object as `BTreeMap` does (the same "expected a map"
/// error; a key given twice keeps its last value), without another
/// `BTreeMap` instantiation in the wasm.
impl<'de, K: Ord + serde::Deserialize<'de>, V: serde::Deserialize<'de>> serde::Deserialize<'de> for VecMap<K, V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries<K, V>(std::marker::PhantomData<(K, V)>);
        impl<'de, K: Ord + serde::Deserialize<'de>, V: serde::Deserialize<'de>> serde::de::Visitor<'de> for Entries<K, V> {
            type Value = VecMap<K, V>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut m = VecMap::default();
                while let Some((k, v)) = a.next_entry()? {
                    m.insert(k, v);
                }
                Ok(m)
            }
        }
        d.deserialize_map(Entries(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_an_ordered_map() {
        let mut m: VecMap<String, u32> = VecMap::default();
        assert!(m.is_empty());
        for (i, k) in ["b", "d", "a", "c"].into_iter().enumerate() {
            assert_eq!(m.insert(k.to_owned(), i as u32), None);
        }
        assert_eq!(m.insert("a".into(), 9), Some(2));
        assert_eq!(m.keys().map(String::as_str).collect::<Vec<_>>(), ["a", "b", "c", "d"]);
        assert_eq!((m.get("a"), m["d"], m.contains_key("e")), (Some(&9), 1, false));
        *m.get_or_insert_with("e".into(), || 5) += 1;
        *m.get_mut("b").unwrap() += 10;
        assert_eq!(m.values().copied().collect::<Vec<_>>(), [9, 10, 3, 1, 6]);
        assert_eq!(m.remove("c"), Some(3));
        m.retain(|_, v| *v > 5);
        assert_eq!(m.iter().map(|(k, v)| format!("{k}{v}")).collect::<Vec<_>>(), ["a9", "b10", "e6"]);
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn decodes_as_a_btreemap_does() {
        use std::collections::BTreeMap;
        type Tree = BTreeMap<String, Vec<u8>>;
        for json in [
            r#"{}"#,
            r#"{"b": [1], "a": [2, 3], "c": []}"#,
            r#"{"a": [1], "a": [2]}"#,
            r#"{"a": [1], "b": "x"}"#,
            r#"[]"#,
            r#"null"#,
            r#""a""#,
        ] {
            let tree = crate::from_json::<Tree>(json).map_err(|e| e.to_string());
            let vec = crate::from_json::<VecMap<String, Vec<u8>>>(json).map_err(|e| e.to_string());
            let vec = vec.map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<Tree>());
            assert_eq!(vec, tree, "{json}");
        }
        // Integer keys (the guard's hours), both ways, and the text written.
        let pairs = [(7200000i64, 1u8), (-3600000, 2), (0, 3), (7200000, 4)];
        let tree: BTreeMap<i64, u8> = pairs.into_iter().collect();
        let vec: VecMap<i64, u8> = pairs.into();
        let text = serde_json::to_string(&tree).unwrap();
        assert_eq!(serde_json::to_string(&vec).unwrap(), text);
        assert_eq!(text, r#"{"-3600000":2,"0":3,"7200000":4}"#);
        assert_eq!(crate::from_json::<VecMap<i64, u8>>(&text).unwrap(), vec);
        assert_eq!(serde_json::to_string(&VecMap::<String, u8>::new()).unwrap(), "{}");
        let mut first = vec.clone();
        assert_eq!((first.pop_first(), first.len()), (Some((-3600000, 2)), 2));
    }
}
