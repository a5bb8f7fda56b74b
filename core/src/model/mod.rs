//! Trained models: loads ONNX files and scores one feature vector.
//!
//! A model file names its inputs in the ONNX metadata property
//! `tripline.features` (comma-separated; `scripts/train-model` writes it), so
//! rules can feed it features and event fields by name. The model's output is
//! one number per event: the probability of the positive class (label `1`,
//! else the last label) for a classifier, the value for a regressor.
//!
//! Tree ensembles (`TreeEnsembleClassifier` / `TreeEnsembleRegressor`, what
//! scikit-learn, XGBoost and LightGBM forests export to) run on
//! [`TreeEnsemble`], a flat-array evaluator compiled from the node's
//! attributes: tract runs them about a thousand times slower than a stream
//! allows. Every other graph (linear models, neural networks) runs on tract.
//!
//! (STYLE.md calls this part `score/`, with the anomaly detectors; those
//! extend the window aggregates and live in `window`, so this module holds
//! the models alone and is named after them.)

pub mod labels;
pub mod metrics;
pub mod training;
mod trees;
pub mod trial;

pub use trees::TreeEnsemble;

use tract_onnx::pb;
use tract_onnx::prelude::*;

/// What a model's name takes to name its candidate (`card_rf@candidate`):
/// the feature log's column of the candidate's scores. Not an identifier,
/// so no rule can read a candidate's score.
pub const CANDIDATE_SUFFIX: &str = "@candidate";

/// The metadata property that lists a model's inputs.
pub const FEATURES_PROPERTY: &str = "tripline.features";

/// Why a model did not load.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// Not a model tripline can run.
    #[error("{0}")]
    Invalid(String),
}

/// The largest model file loaded (bytes): far above the project's forests
/// (a few MB), far below what would exhaust memory.
pub const MAX_MODEL_BYTES: u64 = 256 << 20;

fn invalid(msg: impl Into<String>) -> ModelError {
    ModelError::Invalid(msg.into())
}

/// A loaded model.
pub struct Model {
    inputs: Vec<String>,
    hash: u64,
    eval: Eval,
    /// Its graph's operators, in order (what `tripline train` retrains by).
    operators: Vec<String>,
}

enum Eval {
    Trees(TreeEnsemble),
    Tract {
        plan: std::sync::Arc<TypedRunnableModel>,
        /// The output holding the score, and the column within it.
        output: usize,
        column: usize,
    },
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("inputs", &self.inputs)
            .field(
                "runtime",
                &match self.eval {
                    Eval::Trees(_) => "trees",
                    Eval::Tract { .. } => "tract",
                },
            )
            .finish()
    }
}

impl Model {
    /// Loads a model from the bytes of an ONNX file.
    pub fn from_bytes(bytes: &[u8]) -> Result<Model, ModelError> {
        let proto = guarded(|| tract_onnx::onnx().proto_model_for_read(&mut &bytes[..]))
            .map_err(|e| invalid(format!("not an ONNX model: {e}")))?;
        let inputs: Vec<String> = proto
            .metadata_props
            .iter()
            .find(|p| p.key == FEATURES_PROPERTY)
            .map(|p| p.value.split(',').map(|s| s.trim().to_string()).collect())
            .ok_or_else(|| {
                invalid(format!(
                    "the model does not name its inputs (metadata property `{FEATURES_PROPERTY}`, comma-separated feature names)"
                ))
            })?;
        if inputs.is_empty() || inputs.iter().any(|s| s.is_empty()) {
            return Err(invalid(format!(
                "metadata property `{FEATURES_PROPERTY}` has an empty feature name"
            )));
        }
        let graph = proto
            .graph
            .as_ref()
            .ok_or_else(|| invalid("the model has no graph"))?;
        let width = input_width(graph)?;
        if width != inputs.len() {
            return Err(invalid(format!(
                "the model takes {width} inputs but `{FEATURES_PROPERTY}` names {}",
                inputs.len()
            )));
        }
        let eval = match graph
            .node
            .iter()
            .find(|n| n.op_type.starts_with("TreeEnsemble"))
        {
            Some(node) => {
                let only_tail = graph.node.iter().all(|n| {
                    std::ptr::eq(n, node) || ["ZipMap", "Identity", "Cast"].contains(&&*n.op_type)
                });
                if !only_tail {
                    return Err(invalid(format!(
                        "a graph with `{}` and other operators is not supported: export the ensemble alone",
                        node.op_type
                    )));
                }
                Eval::Trees(TreeEnsemble::from_node(node, width)?)
            }
            None => guarded(|| Ok(tract_plan(&proto, width)))
                .map_err(|e| invalid(format!("tract cannot run this model: {e}")))??,
        };
        Ok(Model {
            inputs,
            hash: xxhash_rust::xxh3::xxh3_64(bytes),
            eval,
            operators: graph.node.iter().map(|n| n.op_type.clone()).collect(),
        })
    }

    /// The names of its inputs, in order.
    pub fn inputs(&self) -> &[String] {
        &self.inputs
    }

    /// Whether it is a tree ensemble (a forest or boosted trees); else a
    /// graph tract runs, such as a linear model.
    pub fn is_tree_ensemble(&self) -> bool {
        matches!(self.eval, Eval::Trees(_))
    }

    /// Whether it is a linear model: one `LinearClassifier` or
    /// `LinearRegressor`, with at most a normalizer and type plumbing
    /// around it (what scikit-learn's linear models export to).
    pub fn is_linear(&self) -> bool {
        const LINEAR: [&str; 2] = ["LinearClassifier", "LinearRegressor"];
        const AROUND: [&str; 5] = ["Normalizer", "ZipMap", "Identity", "Cast", "Sigmoid"];
        let linear = self
            .operators
            .iter()
            .filter(|o| LINEAR.contains(&o.as_str()));
        linear.count() == 1
            && (self.operators.iter())
                .all(|o| LINEAR.contains(&o.as_str()) || AROUND.contains(&o.as_str()))
    }

    /// Its graph's operators, in order.
    pub fn operators(&self) -> &[String] {
        &self.operators
    }

    /// A hash of the file, so that a changed model counts as a rule change.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// Scores one row of `inputs().len()` values (`NaN` for a missing value).
    /// `None` if the runtime failed (tract graphs only).
    pub fn score(&self, row: &[f32]) -> Option<f64> {
        debug_assert_eq!(row.len(), self.inputs.len());
        match &self.eval {
            Eval::Trees(t) => Some(t.score(row)),
            Eval::Tract {
                plan,
                output,
                column,
            } => {
                let run = || {
                    let x = Tensor::from_shape(&[1, row.len()], row)?;
                    let out = plan.run(tvec!(x.into()))?;
                    let view = out
                        .get(*output)
                        .ok_or_else(|| anyhow::anyhow!("no output {output}"))?
                        .to_plain_array_view::<f32>()?;
                    Ok(view.iter().nth(*column).map(|&v| v as f64))
                };
                guarded(run).ok().flatten()
            }
        }
    }
}

/// Runs `f`, turning a panic inside tract (seen on damaged files) into an
/// error: a bad model must be a diagnostic, not a crash.
fn guarded<T>(f: impl FnOnce() -> TractResult<T>) -> TractResult<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the ONNX runtime failed on this file")))
}

/// The number of columns of the graph's single `[N, width]` float input.
fn input_width(graph: &pb::GraphProto) -> Result<usize, ModelError> {
    let initializers: Vec<&str> = graph.initializer.iter().map(|i| i.name.as_str()).collect();
    let real: Vec<&pb::ValueInfoProto> = graph
        .input
        .iter()
        .filter(|i| !initializers.contains(&i.name.as_str()))
        .collect();
    let [input] = real.as_slice() else {
        return Err(invalid(format!(
            "the model has {} inputs; tripline feeds one [N, features] float tensor",
            real.len()
        )));
    };
    let dims = input
        .r#type
        .as_ref()
        .and_then(|t| t.value.as_ref())
        .and_then(|pb::type_proto::Value::TensorType(t)| t.shape.as_ref())
        .map(|s| &s.dim[..])
        .unwrap_or(&[]);
    match dims.last().and_then(|d| d.value.as_ref()) {
        Some(pb::tensor_shape_proto::dimension::Value::DimValue(n))
            if dims.len() == 2 && *n > 0 =>
        {
            Ok(*n as usize)
        }
        _ => Err(invalid(format!(
            "input `{}` is not a [N, features] tensor with a fixed number of features",
            input.name
        ))),
    }
}

fn tract_plan(proto: &pb::ModelProto, width: usize) -> Result<Eval, ModelError> {
    let graph = proto.graph.as_ref().ok_or_else(|| invalid("no graph"))?;
    // A classifier's second output holds the class probabilities (the
    // first, the label); take the positive class's column.
    let classifier = graph
        .node
        .iter()
        .find(|n| n.op_type.ends_with("Classifier"));
    let (output, column) = match classifier {
        Some(n) => {
            let labels = n
                .attribute
                .iter()
                .find(|a| a.name == "classlabels_ints" || a.name == "classlabels_int64s")
                .map(|a| a.ints.clone())
                .unwrap_or_default();
            let col = labels
                .iter()
                .position(|&l| l == 1)
                .unwrap_or(labels.len().saturating_sub(1));
            (1, col)
        }
        None => (0, 0),
    };
    let fail = |e: TractError| invalid(format!("tract cannot run this model: {e:#}"));
    let plan = tract_onnx::onnx()
        .model_for_proto_model(proto)
        .map_err(fail)?
        .with_input_fact(0, f32::fact([1, width]).into())
        .map_err(fail)?
        .into_optimized()
        .map_err(fail)?
        .into_runnable()
        .map_err(fail)?;
    Ok(Eval::Tract {
        plan,
        output,
        column,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_onnx_is_refused() {
        let e = Model::from_bytes(b"not a model").unwrap_err();
        assert!(e.to_string().contains("not an ONNX model"), "{e}");
    }
}
