//! Lenient reading: other programs on the bus write `null` where a field
//! has nothing; such a field reads as its default.

use serde::{Deserialize, Deserializer};

/// `null` (or a missing field, with `#[serde(default)]`) reads as
/// `T::default()`.
pub fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}
