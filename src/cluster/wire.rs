//! What the crate's own intermediate types look like on the wire, so that they can cross
//! an exchange: a join's [`Side`] and a merging stage's [`Tagged`] events.
//!
//! Written by hand (serde's derive is not a dependency of the library): a `Side` travels
//! as a `Result` (left `Ok`, right `Err`); a `Tagged` as `(kind, window, event)`, the
//! window kind as its index in [`KINDS`].

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::flow::{Side, Tagged};
use crate::window::WindowInfo;

impl<A: Serialize, B: Serialize> Serialize for Side<A, B> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Side::Left(left) => Ok::<&A, &B>(left).serialize(serializer),
            Side::Right(right) => Err::<&A, &B>(right).serialize(serializer),
        }
    }
}

impl<'de, A: Deserialize<'de>, B: Deserialize<'de>> Deserialize<'de> for Side<A, B> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match Result::<A, B>::deserialize(deserializer)? {
            Ok(left) => Side::Left(left),
            Err(right) => Side::Right(right),
        })
    }
}

/// The window kinds a [`WindowInfo`] names (`"window"`: a merging stage's name for the
/// windows of a layer it only knows by id).
const KINDS: [&str; 7] = [
    "global", "fixed", "sliding", "session", "periodic", "count", "window",
];

fn kind_code(kind: &str) -> u8 {
    KINDS
        .iter()
        .position(|known| *known == kind)
        .map_or(KINDS.len() as u8 - 1, |at| at as u8)
}

impl<T: Serialize> Serialize for Tagged<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Tagged::Event(id, event) => (u8::MAX, *id, Some(event)).serialize(serializer),
            Tagged::Closed(window) => {
                (kind_code(window.kind), window.id, None::<&T>).serialize(serializer)
            }
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Tagged<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (code, id, event) = <(u8, i64, Option<T>)>::deserialize(deserializer)?;
        Ok(match event {
            Some(event) => Tagged::Event(id, event),
            None => Tagged::Closed(WindowInfo {
                kind: KINDS
                    .get(usize::from(code))
                    .copied()
                    .unwrap_or(KINDS[KINDS.len() - 1]),
                id,
            }),
        })
    }
}

#[cfg(all(test, feature = "json"))]
mod tests {
    use super::*;

    fn round_trip<T: Serialize + for<'de> Deserialize<'de>>(value: &T) -> T {
        let bytes = serde_json::to_vec(value).expect("serializes");
        serde_json::from_slice(&bytes).expect("deserializes")
    }

    #[test]
    fn sides_and_tags_cross_the_wire_unchanged() {
        let left: Side<u32, String> = Side::Left(7);
        let right: Side<u32, String> = Side::Right("r".into());
        assert_eq!(round_trip(&left), left);
        assert_eq!(round_trip(&right), right);
        match round_trip(&Tagged::Event(-5, 3u8)) {
            Tagged::Event(-5, 3) => {}
            other => panic!("{other:?}"),
        }
        for kind in KINDS {
            let closed: Tagged<u8> = Tagged::Closed(WindowInfo { kind, id: 40 });
            match round_trip(&closed) {
                Tagged::Closed(window) => assert_eq!(window, WindowInfo { kind, id: 40 }),
                other => panic!("{other:?}"),
            }
        }
    }
}
