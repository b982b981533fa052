//! KServe's Open Inference Protocol v2 (the REST binding), as far as a classifier needs it:
//! the request and response bodies, the binary tensor data extension (a JSON header of
//! `Inference-Header-Content-Length` bytes, then each input's raw bytes) and the classification
//! extension (an output asked with `"parameters": {"classification": k}` comes back as BYTES
//! `"score:index:label"`, the k highest logits per image).

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

#[derive(Debug, Deserialize)]
pub struct InferRequest {
    #[serde(default)]
    pub id: Option<String>,
    /// Request parameters: accepted, none is read.
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
    pub inputs: Vec<InferInput>,
    #[serde(default)]
    pub outputs: Option<Vec<RequestedOutput>>,
}

#[derive(Debug, Deserialize)]
pub struct InferInput {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
    #[serde(default)]
    pub data: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct RequestedOutput {
    pub name: String,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
}

#[derive(Debug, Serialize)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub outputs: Vec<OutputTensor>,
}

#[derive(Debug, Serialize)]
pub struct OutputTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub datatype: String,
    pub data: Value,
}

/// What an `input` tensor holds.
pub enum Input {
    /// FP32 `[n, 3, h, w]`, preprocessed.
    Tensor { shape: Vec<usize>, data: Vec<f32> },
    /// Encoded images (BYTES).
    Images(Vec<Vec<u8>>),
}

/// A parsed infer request: the `input` tensor and how many top classes to answer (None: logits).
pub struct Parsed {
    pub id: Option<String>,
    pub input: Input,
    pub classification: Option<usize>,
}

fn bad(msg: String) -> Error {
    Error::BadRequest(msg)
}

fn binary_size(p: &Option<Map<String, Value>>) -> Result<Option<usize>> {
    match p.as_ref().and_then(|p| p.get("binary_data_size")) {
        None => Ok(None),
        Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| bad("`binary_data_size` must be a non-negative integer".into())),
    }
}

/// Flattens nested JSON arrays (the protocol allows row-major nesting).
fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| flatten(x, out)),
        other => out.push(other),
    }
}

/// Parses a request body; `header_len` is `Inference-Header-Content-Length` when given.
pub fn parse(body: &[u8], header_len: Option<usize>) -> Result<Parsed> {
    let (json, mut binary) = match header_len {
        Some(n) if n > body.len() => return Err(bad(format!("Inference-Header-Content-Length {n} exceeds the body's {} bytes", body.len()))),
        Some(n) => (&body[..n], &body[n..]),
        None => (body, &body[body.len()..]),
    };
    let req: InferRequest = serde_json::from_slice(json).map_err(|e| bad(format!("request JSON: {e}")))?;
    let mut input = None;
    for i in &req.inputs {
        let size = binary_size(&i.parameters)?;
        let raw = match size {
            Some(n) => {
                if n > binary.len() {
                    return Err(bad(format!("input `{}`: binary_data_size {n} exceeds the {} bytes left", i.name, binary.len())));
                }
                let (head, rest) = binary.split_at(n);
                binary = rest;
                Some(head)
            }
            None => None,
        };
        if i.name != "input" {
            return Err(bad(format!("unknown input `{}` (this model takes one input named `input`)", i.name)));
        }
        if input.is_some() {
            return Err(bad("input `input` is given twice".into()));
        }
        input = Some(parse_input(i, raw)?);
    }
    if !binary.is_empty() {
        return Err(bad(format!("{} bytes of binary data no input claims", binary.len())));
    }
    let input = input.ok_or_else(|| bad("no input named `input`".into()))?;
    let mut classification = None;
    for o in req.outputs.iter().flatten() {
        if o.name != "logits" {
            return Err(bad(format!("unknown output `{}` (this model gives `logits`)", o.name)));
        }
        if let Some(k) = o.parameters.as_ref().and_then(|p| p.get("classification")) {
            let k = k.as_u64().filter(|&k| k > 0).ok_or_else(|| bad("`classification` must be a positive integer".into()))?;
            classification = Some(k as usize);
        }
        if o.parameters.as_ref().and_then(|p| p.get("binary_data")).and_then(Value::as_bool) == Some(true) {
            return Err(bad("binary output data is not supported: ask for JSON output".into()));
        }
    }
    Ok(Parsed { id: req.id, input, classification })
}

fn parse_input(i: &InferInput, raw: Option<&[u8]>) -> Result<Input> {
    let shape: Vec<usize> = i
        .shape
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| bad(format!("input `input`: shape {:?} has a negative dimension", i.shape))))
        .collect::<Result<_>>()?;
    let numel: usize = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| bad(format!("input `input`: shape {shape:?} is too large")))?;
    match i.datatype.as_str() {
        "FP32" => {
            let data: Vec<f32> = match (raw, &i.data) {
                (Some(_), Some(_)) => return Err(bad("input `input` has both JSON data and binary data".into())),
                (Some(b), None) => {
                    if b.len() != numel * 4 {
                        return Err(bad(format!("input `input`: {} bytes of binary FP32 data for shape {shape:?} ({numel} values)", b.len())));
                    }
                    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
                }
                (None, Some(v)) => {
                    let mut flat = Vec::new();
                    flatten(v, &mut flat);
                    if flat.len() != numel {
                        return Err(bad(format!("input `input`: {} values for shape {shape:?} ({numel} values)", flat.len())));
                    }
                    flat.iter()
                        .enumerate()
                        .map(|(k, x)| x.as_f64().map(|f| f as f32).ok_or_else(|| bad(format!("input `input`: value {k} is not a number"))))
                        .collect::<Result<_>>()?
                }
                (None, None) => return Err(bad("input `input` has no data".into())),
            };
            if let Some(k) = data.iter().position(|v| !v.is_finite()) {
                return Err(bad(format!("input `input`: value {k} is not finite")));
            }
            Ok(Input::Tensor { shape, data })
        }
        "BYTES" => {
            let items: Vec<Vec<u8>> = match (raw, &i.data) {
                (Some(_), Some(_)) => return Err(bad("input `input` has both JSON data and binary data".into())),
                // each element: a 4-byte little-endian length, then the bytes
                (Some(mut b), None) => {
                    let mut out = Vec::new();
                    while !b.is_empty() {
                        if b.len() < 4 {
                            return Err(bad(format!("input `input`: element {} of the binary BYTES data is cut short", out.len())));
                        }
                        let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
                        if b.len() - 4 < n {
                            return Err(bad(format!("input `input`: element {} says {n} bytes, {} are left", out.len(), b.len() - 4)));
                        }
                        out.push(b[4..4 + n].to_vec());
                        b = &b[4 + n..];
                    }
                    out
                }
                (None, Some(v)) => {
                    let mut flat = Vec::new();
                    flatten(v, &mut flat);
                    flat.iter().enumerate().map(|(k, x)| bytes_element(k, x)).collect::<Result<_>>()?
                }
                (None, None) => return Err(bad("input `input` has no data".into())),
            };
            if items.len() != numel {
                return Err(bad(format!("input `input`: {} BYTES elements for shape {shape:?}", items.len())));
            }
            Ok(Input::Images(items))
        }
        other => Err(bad(format!("input `input` is {other}; FP32 (preprocessed N×3×H×W) or BYTES (encoded images) are taken"))),
    }
}

/// One BYTES element in JSON: a base64 string, or `{"b64": "..."}`.
fn bytes_element(k: usize, v: &Value) -> Result<Vec<u8>> {
    let s = match v {
        Value::String(s) => s.as_str(),
        Value::Object(o) => o.get("b64").and_then(Value::as_str).ok_or_else(|| bad(format!("input `input`: element {k} is an object without `b64`")))?,
        _ => return Err(bad(format!("input `input`: element {k} is not a base64 string"))),
    };
    base64::engine::general_purpose::STANDARD.decode(s).map_err(|e| bad(format!("input `input`: element {k} is not base64 ({e})")))
}

/// The `logits` output: the logits, or with `classification` the top k per image as BYTES
/// `"score:index:label"` (score: the logit, as the classification extension gives the output's
/// value).
pub fn logits_output(logits: &[f32], n: usize, classes: &[String], classification: Option<usize>) -> OutputTensor {
    let c = classes.len();
    match classification {
        None => OutputTensor { name: "logits".into(), shape: vec![n, c], datatype: "FP32".into(), data: Value::from(logits.to_vec()) },
        Some(k) => {
            let k = k.min(c);
            let data: Vec<Value> = logits
                .chunks(c)
                .flat_map(|row| top_k(row, k).into_iter().map(|(i, v)| Value::from(format!("{v}:{i}:{}", classes[i]))).collect::<Vec<_>>())
                .collect();
            OutputTensor { name: "logits".into(), shape: vec![n, k], datatype: "BYTES".into(), data: Value::from(data) }
        }
    }
}

/// Indices and values of the k largest entries, largest first (ties: lower index first).
pub fn top_k(row: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    idx.into_iter().take(k).map(|i| (i, row[i])).collect()
}

/// Softmax probabilities of a row.
pub fn softmax(row: &[f32]) -> Vec<f32> {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = row.iter().map(|v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}
