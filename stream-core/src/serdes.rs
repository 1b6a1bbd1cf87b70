//! Serdes turn typed keys and values into bytes and back.
//!
//! A value that fails to decode is an error value ([`SerdeError`]), never a panic:
//! the task routes the record to the configured error policy.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::SerdeError;

/// Encodes values of type `T` to bytes and decodes them back.
///
/// Implement it for formats of your own (Avro, Protobuf, ...).
pub trait Serde<T>: Send + Sync + 'static {
    /// Appends the encoding of `value` to `buf`.
    fn encode_into(&self, value: &T, buf: &mut Vec<u8>) -> Result<(), SerdeError>;

    /// Decodes a whole value from `bytes`.
    fn decode(&self, bytes: &[u8]) -> Result<T, SerdeError>;

    /// The encoding of `value` in a new buffer.
    fn encode(&self, value: &T) -> Result<Vec<u8>, SerdeError> {
        let mut buf = Vec::new();
        self.encode_into(value, &mut buf)?;
        Ok(buf)
    }
}

/// A shared, type-erased serde, as the topology stores them.
pub type SerdeRef<T> = Arc<dyn Serde<T>>;

impl<T, S: Serde<T> + ?Sized> Serde<T> for Arc<S> {
    fn encode_into(&self, value: &T, buf: &mut Vec<u8>) -> Result<(), SerdeError> {
        (**self).encode_into(value, buf)
    }
    fn decode(&self, bytes: &[u8]) -> Result<T, SerdeError> {
        (**self).decode(bytes)
    }
}

macro_rules! marker_serde {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub struct $name<T>(PhantomData<fn() -> T>);

        impl<T> $name<T> {
            /// The serde for `T`.
            pub fn new() -> Self {
                $name(PhantomData)
            }
        }
        impl<T> Default for $name<T> {
            fn default() -> Self {
                Self::new()
            }
        }
        impl<T> Clone for $name<T> {
            fn clone(&self) -> Self {
                Self::new()
            }
        }
        impl<T> Copy for $name<T> {}
        impl<T> fmt::Debug for $name<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}<{}>", stringify!($name), std::any::type_name::<T>())
            }
        }
    };
}

marker_serde!(
    /// JSON through `serde_json`.
    Json
);
marker_serde!(
    /// Compact binary through `bincode` (standard configuration).
    Bincode
);

impl<T: Serialize + DeserializeOwned + 'static> Serde<T> for Json<T> {
    fn encode_into(&self, value: &T, buf: &mut Vec<u8>) -> Result<(), SerdeError> {
        serde_json::to_writer(buf, value).map_err(|e| SerdeError::encode("json", e))
    }
    fn decode(&self, bytes: &[u8]) -> Result<T, SerdeError> {
        serde_json::from_slice(bytes).map_err(|e| SerdeError::decode("json", e))
    }
}

impl<T: Serialize + DeserializeOwned + 'static> Serde<T> for Bincode<T> {
    fn encode_into(&self, value: &T, buf: &mut Vec<u8>) -> Result<(), SerdeError> {
        bincode::serde::encode_into_std_write(value, buf, bincode::config::standard())
            .map(drop)
            .map_err(|e| SerdeError::encode("bincode", e))
    }
    fn decode(&self, bytes: &[u8]) -> Result<T, SerdeError> {
        let (value, read) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())
            .map_err(|e| SerdeError::decode("bincode", e))?;
        if read != bytes.len() {
            return Err(SerdeError::decode("bincode", format!("{} trailing bytes", bytes.len() - read)));
        }
        Ok(value)
    }
}

/// UTF-8 text as `String`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Utf8;

impl Serde<String> for Utf8 {
    fn encode_into(&self, value: &String, buf: &mut Vec<u8>) -> Result<(), SerdeError> {
        buf.extend_from_slice(value.as_bytes());
        Ok(())
    }
    fn decode(&self, bytes: &[u8]) -> Result<String, SerdeError> {
        std::str::from_utf8(bytes).map(str::to_owned).map_err(|e| SerdeError::decode("utf8", e))
    }
}

/// Raw bytes, passed through unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bytes;

impl Serde<Vec<u8>> for Bytes {
    fn encode_into(&self, value: &Vec<u8>, buf: &mut Vec<u8>) -> Result<(), SerdeError> {
        buf.extend_from_slice(value);
        Ok(())
    }
    fn decode(&self, bytes: &[u8]) -> Result<Vec<u8>, SerdeError> {
        Ok(bytes.to_vec())
    }
}

/// 64-bit signed integers as 8 big-endian bytes (Kafka's `LongSerde`); byte
/// order equals numeric order for non-negative values.
#[derive(Debug, Clone, Copy, Default)]
pub struct I64;

impl Serde<i64> for I64 {
    fn encode_into(&self, value: &i64, buf: &mut Vec<u8>) -> Result<(), SerdeError> {
        buf.extend_from_slice(&value.to_be_bytes());
        Ok(())
    }
    fn decode(&self, bytes: &[u8]) -> Result<i64, SerdeError> {
        let array: [u8; 8] = bytes
            .try_into()
            .map_err(|_| SerdeError::decode("i64", format!("expected 8 bytes, got {}", bytes.len())))?;
        Ok(i64::from_be_bytes(array))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Movement {
        id: u32,
        amount: i64,
    }

    #[test]
    fn round_trips() {
        let m = Movement { id: 7, amount: -3 };
        let json = Json::<Movement>::new();
        assert_eq!(json.decode(&json.encode(&m).unwrap()).unwrap(), m);
        let bin = Bincode::<Movement>::new();
        assert_eq!(bin.decode(&bin.encode(&m).unwrap()).unwrap(), m);
        assert_eq!(Utf8.decode(&Utf8.encode(&"é".to_string()).unwrap()).unwrap(), "é");
        assert_eq!(Bytes.decode(&[1, 2]).unwrap(), vec![1, 2]);
        assert_eq!(I64.decode(&I64.encode(&-5).unwrap()).unwrap(), -5);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let e = Json::<Movement>::new().decode(b"{\"id\": \"x\"}").unwrap_err();
        assert_eq!((e.format, e.direction), ("json", "decode"));
        assert!(Bincode::<Movement>::new().decode(&[0xff]).is_err());
        assert!(Bincode::<u8>::new().decode(&[1, 2]).is_err(), "trailing bytes are rejected");
        assert!(Utf8.decode(&[0xff, 0xfe]).is_err());
        assert!(I64.decode(&[1, 2, 3]).is_err());
    }
}
