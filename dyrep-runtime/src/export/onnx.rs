//! ONNX export of the fused plain network: Conv (BN folded into weight and bias, docs/REFERENCE.md
//! "Equivalent kernels"), Relu, MaxPool, AveragePool, GlobalAveragePool, Flatten, Gemm and Add for residuals,
//! opset 13, float32, a symbolic batch dimension. The protobuf is written by hand (the ONNX
//! schema's field numbers, onnx.proto3) so exporting needs no protobuf toolchain; tests read the
//! file back with an independent reader (tract-onnx).

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};

use crate::error::{Result, RuntimeError};
use crate::export::{PlainExport, PlainLayer};

/// ONNX IR version written (ONNX 1.8: IR 7 with opset 13).
const IR_VERSION: i64 = 7;
const OPSET: i64 = 13;
const ELEM_FLOAT: i64 = 1;

/// A protobuf message being written (wire format only: varints, 32-bit floats, length-delimited).
#[derive(Default)]
struct Pb(Vec<u8>);

impl Pb {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn key(&mut self, field: u32, wire: u8) {
        self.varint((u64::from(field) << 3) | u64::from(wire));
    }
    fn int(&mut self, field: u32, v: i64) -> &mut Self {
        self.key(field, 0);
        self.varint(v as u64);
        self
    }
    fn bytes(&mut self, field: u32, b: &[u8]) -> &mut Self {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    fn str(&mut self, field: u32, s: &str) -> &mut Self {
        self.bytes(field, s.as_bytes())
    }
    fn msg(&mut self, field: u32, m: &Pb) -> &mut Self {
        self.bytes(field, &m.0)
    }
}

/// AttributeProto fields and types.
enum Attr<'a> {
    Int(&'a str, i64),
    Ints(&'a str, Vec<i64>),
}

fn attribute(a: &Attr<'_>) -> Pb {
    let mut m = Pb::default();
    match a {
        Attr::Int(name, v) => {
            m.str(1, name).int(3, *v).int(20, 2);
        }
        Attr::Ints(name, vs) => {
            m.str(1, name);
            for v in vs {
                m.int(8, *v);
            }
            m.int(20, 7);
        }
    }
    m
}

struct Graph {
    nodes: Vec<Pb>,
    initializers: Vec<Pb>,
    next: usize,
}

impl Graph {
    fn fresh(&mut self, what: &str) -> String {
        self.next += 1;
        format!("{what}_{}", self.next)
    }

    fn node(&mut self, op: &str, inputs: &[&str], attrs: &[Attr<'_>]) -> String {
        let out = self.fresh(&op.to_ascii_lowercase());
        let mut n = Pb::default();
        for i in inputs {
            n.str(1, i);
        }
        n.str(2, &out);
        n.str(3, &format!("{op}_{}", self.next));
        n.str(4, op);
        for a in attrs {
            n.msg(5, &attribute(a));
        }
        self.nodes.push(n);
        out
    }

    fn initializer(&mut self, name: &str, t: &Tensor) -> Result<()> {
        let t = t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        let mut m = Pb::default();
        for d in t.dims() {
            m.int(1, *d as i64);
        }
        m.int(2, ELEM_FLOAT);
        m.str(8, name);
        let data: Vec<f32> = t.flatten_all()?.to_vec1()?;
        let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        m.bytes(9, &raw);
        self.initializers.push(m);
        Ok(())
    }
}

fn tensor<'a>(exp: &'a PlainExport, key: &str) -> Result<&'a Tensor> {
    exp.tensors
        .get(key)
        .ok_or_else(|| RuntimeError::Model(format!("export lacks tensor `{key}`")))
}

fn layer(g: &mut Graph, exp: &PlainExport, l: &PlainLayer, x: String) -> Result<String> {
    Ok(match l {
        PlainLayer::Conv {
            weight,
            bias,
            batch_norm,
            out_channels,
            kernel_size,
            stride,
            padding,
            groups,
            relu,
            ..
        } => {
            let w = tensor(exp, weight)?.to_dtype(DType::F32)?;
            let b = match bias {
                Some(b) => tensor(exp, b)?.to_dtype(DType::F32)?,
                None => Tensor::zeros(*out_channels, DType::F32, w.device())?,
            };
            // Fold the BN: W' = s·W, b' = β + s·(b − μ), s = γ / sqrt(σ² + ε).
            let (w, b) = match batch_norm {
                Some(key) => {
                    let get = |n: &str| -> Result<Tensor> {
                        Ok(tensor(exp, &format!("{key}.{n}"))?.to_dtype(DType::F32)?)
                    };
                    let s = (get("weight")? / (get("running_var")? + exp.arch.bn_eps)?.sqrt()?)?;
                    let w = w.broadcast_mul(&s.reshape((*out_channels, 1, 1, 1))?)?;
                    let b = (get("bias")? + (&s * (b - get("running_mean")?)?)?)?;
                    (w, b)
                }
                None => (w, b),
            };
            let base = weight.trim_end_matches(".weight");
            let (wn, bn) = (format!("{base}.weight"), format!("{base}.bias"));
            g.initializer(&wn, &w)?;
            g.initializer(&bn, &b)?;
            let (k, s, p) = (*kernel_size as i64, *stride as i64, *padding as i64);
            let y = g.node(
                "Conv",
                &[&x, &wn, &bn],
                &[
                    Attr::Ints("kernel_shape", vec![k, k]),
                    Attr::Ints("strides", vec![s, s]),
                    Attr::Ints("pads", vec![p, p, p, p]),
                    Attr::Ints("dilations", vec![1, 1]),
                    Attr::Int("group", *groups as i64),
                ],
            );
            if *relu {
                g.node("Relu", &[&y], &[])
            } else {
                y
            }
        }
        PlainLayer::MaxPool {
            kernel_size,
            stride,
            padding,
        } => {
            let (k, s, p) = (*kernel_size as i64, *stride as i64, *padding as i64);
            g.node(
                "MaxPool",
                &[&x],
                &[
                    Attr::Ints("kernel_shape", vec![k, k]),
                    Attr::Ints("strides", vec![s, s]),
                    Attr::Ints("pads", vec![p, p, p, p]),
                ],
            )
        }
        PlainLayer::AvgPool {
            kernel_size,
            stride,
        } => {
            let (k, s) = (*kernel_size as i64, *stride as i64);
            g.node(
                "AveragePool",
                &[&x],
                &[
                    Attr::Ints("kernel_shape", vec![k, k]),
                    Attr::Ints("strides", vec![s, s]),
                ],
            )
        }
        PlainLayer::GlobalAvgPool => {
            let y = g.node("GlobalAveragePool", &[&x], &[]);
            g.node("Flatten", &[&y], &[Attr::Int("axis", 1)])
        }
        PlainLayer::Flatten => g.node("Flatten", &[&x], &[Attr::Int("axis", 1)]),
        PlainLayer::Relu => g.node("Relu", &[&x], &[]),
        PlainLayer::Linear { weight, bias, .. } => {
            g.initializer(weight, tensor(exp, weight)?)?;
            g.initializer(bias, tensor(exp, bias)?)?;
            g.node("Gemm", &[&x, weight, bias], &[Attr::Int("transB", 1)])
        }
        PlainLayer::Residual { body, shortcut } => {
            let mut y = x.clone();
            for l in body {
                y = layer(g, exp, l, y)?;
            }
            let mut s = x;
            for l in shortcut {
                s = layer(g, exp, l, s)?;
            }
            let sum = g.node("Add", &[&y, &s], &[]);
            g.node("Relu", &[&sum], &[])
        }
    })
}

/// `ValueInfoProto` of a float tensor with a symbolic batch dimension.
fn value_info(name: &str, dims: &[Option<usize>]) -> Pb {
    let mut shape = Pb::default();
    for d in dims {
        let mut dim = Pb::default();
        match d {
            Some(v) => dim.int(1, *v as i64),
            None => dim.str(2, "batch"),
        };
        shape.msg(1, &dim);
    }
    let mut tt = Pb::default();
    tt.int(1, ELEM_FLOAT).msg(2, &shape);
    let mut ty = Pb::default();
    ty.msg(1, &tt);
    let mut vi = Pb::default();
    vi.str(1, name).msg(2, &ty);
    vi
}

/// Input and output names of exported models.
pub const INPUT_NAME: &str = "input";
pub const OUTPUT_NAME: &str = "logits";

/// The ONNX `ModelProto` bytes of a plain export (BN folded into the convs) and the number of
/// initializers (weight tensors) it holds.
pub fn encode(exp: &PlainExport) -> Result<(Vec<u8>, usize)> {
    let mut g = Graph {
        nodes: Vec::new(),
        initializers: Vec::new(),
        next: 0,
    };
    let mut x = INPUT_NAME.to_string();
    for l in &exp.arch.layers {
        x = layer(&mut g, exp, l, x)?;
    }
    // Name the last value `logits` with an Identity, so the output name is stable.
    let mut n = Pb::default();
    n.str(1, &x)
        .str(2, OUTPUT_NAME)
        .str(3, "output")
        .str(4, "Identity");
    g.nodes.push(n);
    let [c, h, w] = exp.arch.input;
    let mut graph = Pb::default();
    for n in &g.nodes {
        graph.msg(1, n);
    }
    graph.str(2, &format!("dyrep-{}", exp.arch.model));
    for i in &g.initializers {
        graph.msg(5, i);
    }
    graph.msg(
        11,
        &value_info(INPUT_NAME, &[None, Some(c), Some(h), Some(w)]),
    );
    graph.msg(
        12,
        &value_info(OUTPUT_NAME, &[None, Some(exp.arch.num_classes)]),
    );
    let mut opset = Pb::default();
    opset.str(1, "").int(2, OPSET);
    let mut model = Pb::default();
    model
        .int(1, IR_VERSION)
        .str(2, "dyrep")
        .str(3, env!("CARGO_PKG_VERSION"))
        .msg(7, &graph)
        .msg(8, &opset);
    let meta: BTreeMap<&str, String> = BTreeMap::from([
        ("model", exp.arch.model.clone()),
        ("naming", format!("{:?}", exp.arch.naming)),
    ]);
    for (k, v) in meta {
        let mut p = Pb::default();
        p.str(1, k).str(2, &v);
        model.msg(14, &p);
    }
    Ok((model.0, g.initializers.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_match_the_protobuf_encoding() {
        let mut p = Pb::default();
        p.varint(1);
        p.varint(300);
        p.varint(u64::MAX);
        assert_eq!(&p.0[..3], &[0x01, 0xAC, 0x02]);
        assert_eq!(p.0.len(), 3 + 10);
        let mut q = Pb::default();
        q.int(3, -1);
        // key (3 << 3 | 0) then ten bytes of two's complement.
        assert_eq!(q.0[0], 0x18);
        assert_eq!(q.0.len(), 11);
    }
}
