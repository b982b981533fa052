//! Reading a model's constructor arguments from JSON (timm's `**kwargs`, transformers' config
//! fields): typed values, each error naming the argument.

use serde_json::Value;

use crate::Error;

pub fn as_usize(k: &str, v: &Value) -> crate::Result<usize> {
    // timm accepts an int or an (h, w) pair for sizes; we support square ones.
    match v {
        Value::Number(n) => n.as_u64().map(|x| x as usize).ok_or_else(|| Error::Config(format!("`{k}` must be a non-negative integer"))),
        Value::Array(a) if a.len() == 2 && a[0] == a[1] => as_usize(k, &a[0]),
        _ => Err(Error::Config(format!("`{k}` must be an integer (or a square pair), got {v}"))),
    }
}

pub fn as_f64(k: &str, v: &Value) -> crate::Result<f64> {
    v.as_f64().ok_or_else(|| Error::Config(format!("`{k}` must be a number, got {v}")))
}

pub fn as_bool(k: &str, v: &Value) -> crate::Result<bool> {
    v.as_bool().ok_or_else(|| Error::Config(format!("`{k}` must be true or false, got {v}")))
}

pub fn as_usizes(k: &str, v: &Value) -> crate::Result<Vec<usize>> {
    v.as_array().ok_or_else(|| Error::Config(format!("`{k}` must be a list of integers, got {v}")))?.iter().map(|x| as_usize(k, x)).collect()
}

/// The arguments as an object.
pub fn object(v: &Value) -> crate::Result<&serde_json::Map<String, Value>> {
    v.as_object().ok_or_else(|| Error::Config("`kwargs` must be an object".into()))
}
