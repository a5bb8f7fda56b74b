//! A flat-array evaluator for ONNX tree ensembles.
//!
//! Every tree's nodes sit in one array of 16-byte nodes (feature and flags,
//! threshold, the two children). A leaf is a node whose children are itself,
//! its value (already reduced to the one output tripline reads) in place of
//! the threshold, so every walk takes the same number of steps, the
//! ensemble's depth, without asking whether it has ended. Scoring walks 16
//! trees side by side from their roots, overlapping their chains of
//! dependent loads, and sums the leaves reached in the trees' order: no
//! allocation, no dynamic dispatch, no bounds check in the walk (node
//! indices are masked by the padded array's power-of-two length), and a
//! 100-tree, depth-8 forest fits in L2.
//!
//! An ensemble of plain `x <= t` tests over fewer than 64 inputs (what
//! scikit-learn's forests export to) is also laid out in 8-byte nodes
//! ([`Compact`]), each tree in depth-first order with the `yes` branch
//! first: the `yes` child is the next node, the `no` child an offset away,
//! and a leaf tests an input that is always missing with an offset of 0, so
//! it stays. Half the bytes, the same order: the walk touches about half
//! the cache lines, and scores are the same bit for bit (the same leaves,
//! summed in the same order).
//!
//! Semantics follow the ONNX-ML operators as onnxruntime implements them:
//! `BRANCH_LEQ` / `BRANCH_LT` (and `GTE` / `GT`, as the same tests with the
//! branches swapped), `nodes_missing_value_tracks_true` for NaN, weights per
//! class, `base_values`, and the `NONE` / `LOGISTIC` post-transforms (and
//! `SOFTMAX` of a two-class model, which is the logistic of the difference).

use super::{ModelError, invalid};
use hashbrown::HashMap;
use tract_onnx::pb::{AttributeProto, NodeProto};

/// Trees walked side by side.
const LANES: usize = 16;
/// Rows up to this wide are copied into a fixed-size array for scoring,
/// where a masked index needs no bounds check.
const ROW: usize = 64;
/// In `Node::feature`: the test is `x < t` rather than `x <= t`.
const STRICT: u32 = 1 << 31;
/// In `Node::feature`: a missing value (NaN) takes the `yes` branch.
const MISSING_YES: u32 = 1 << 30;
const FEATURE: u32 = (1 << 30) - 1;

#[derive(Clone, Copy, Debug)]
struct Node {
    feature: u32,
    threshold: f32,
    yes: u32,
    no: u32,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Post {
    None,
    Logistic,
}

/// A node of the compact layout: `row[feature] <= threshold` goes to the
/// next node, anything else (NaN included) `no` nodes on; a leaf holds its
/// value in `threshold`, tests the always-missing input `ROW - 1`, and
/// has `no` 0.
#[derive(Clone, Copy, Debug)]
struct Compact {
    threshold: f32,
    feature: u16,
    no: u16,
}

/// A compiled tree ensemble (see the module docs).
#[derive(Debug)]
pub struct TreeEnsemble {
    nodes: Vec<Node>,
    /// The same trees in [`Compact`] nodes, and where each starts, for a
    /// simple ensemble over fewer than `ROW` inputs.
    compact: Option<(Vec<Compact>, Vec<u32>)>,
    roots: Vec<u32>,
    /// The deepest tree's depth: the steps every walk takes.
    depth: usize,
    /// Every test is `x <= t` with NaN going to `no` (no flags to read).
    simple: bool,
    base: f64,
    /// Divide the sum by the number of trees (`aggregate_function AVERAGE`).
    average: bool,
    post: Post,
    width: usize,
}

fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

fn ints<'a>(node: &'a NodeProto, name: &str) -> &'a [i64] {
    attr(node, name).map_or(&[], |a| &a.ints)
}

fn floats(node: &NodeProto, name: &str) -> Result<Vec<f32>, ModelError> {
    if let Some(a) = attr(node, name) {
        return Ok(a.floats.clone());
    }
    match attr(node, &format!("{name}_as_tensor")) {
        Some(a) => {
            let t =
                a.t.as_ref()
                    .ok_or_else(|| invalid(format!("`{name}_as_tensor` is empty")))?;
            if !t.double_data.is_empty() {
                Ok(t.double_data.iter().map(|&d| d as f32).collect())
            } else if !t.float_data.is_empty() {
                Ok(t.float_data.clone())
            } else {
                Err(invalid(format!(
                    "`{name}_as_tensor` must hold its values in double_data or float_data"
                )))
            }
        }
        None => Ok(Vec::new()),
    }
}

fn text(node: &NodeProto, name: &str) -> Option<String> {
    attr(node, name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
}

/// A node's test under its flags.
fn general_test(n: &Node, row: &[f32]) -> bool {
    let x = row[(n.feature & FEATURE) as usize];
    if x.is_nan() {
        n.feature & MISSING_YES != 0
    } else if n.feature & STRICT != 0 {
        x < n.threshold
    } else {
        x <= n.threshold
    }
}

/// The depth of the deepest tree; an error if a tree has a cycle or shares
/// a node (scoring would loop or miscount).
fn depth(nodes: &[Node], is_leaf: &[bool], roots: &[u32]) -> Result<usize, ModelError> {
    let mut seen = vec![false; nodes.len()];
    let mut deepest = 0;
    let mut stack = Vec::new();
    for &root in roots {
        stack.push((root, 0usize));
        while let Some((i, d)) = stack.pop() {
            if std::mem::replace(&mut seen[i as usize], true) {
                return Err(invalid("a tree has a cycle or a node reached twice"));
            }
            if is_leaf[i as usize] {
                deepest = deepest.max(d);
                continue;
            }
            let n = nodes[i as usize];
            stack.push((n.yes, d + 1));
            stack.push((n.no, d + 1));
        }
    }
    Ok(deepest)
}

impl TreeEnsemble {
    /// Compiles a `TreeEnsembleClassifier` or `TreeEnsembleRegressor` node
    /// over `width` input columns.
    pub fn from_node(node: &NodeProto, width: usize) -> Result<TreeEnsemble, ModelError> {
        let classifier = match node.op_type.as_str() {
            "TreeEnsembleClassifier" => true,
            "TreeEnsembleRegressor" => false,
            other => return Err(invalid(format!("unsupported tree operator `{other}`"))),
        };
        let tree_ids = ints(node, "nodes_treeids");
        let node_ids = ints(node, "nodes_nodeids");
        let features = ints(node, "nodes_featureids");
        let trues = ints(node, "nodes_truenodeids");
        let falses = ints(node, "nodes_falsenodeids");
        let missing = ints(node, "nodes_missing_value_tracks_true");
        let values = floats(node, "nodes_values")?;
        let modes: Vec<String> = attr(node, "nodes_modes")
            .map(|a| {
                a.strings
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let n = tree_ids.len();
        if n == 0 {
            return Err(invalid("the ensemble has no nodes"));
        }
        for (what, len) in [
            ("nodes_nodeids", node_ids.len()),
            ("nodes_featureids", features.len()),
            ("nodes_truenodeids", trues.len()),
            ("nodes_falsenodeids", falses.len()),
            ("nodes_values", values.len()),
            ("nodes_modes", modes.len()),
        ] {
            if len != n {
                return Err(invalid(format!(
                    "{what} has {len} entries, nodes_treeids {n}"
                )));
            }
        }
        if !missing.is_empty() && missing.len() != n {
            return Err(invalid(
                "nodes_missing_value_tracks_true has the wrong length",
            ));
        }

        // The one output tripline reads: the weights of the positive class
        // (or the difference of the two classes' under a binary softmax).
        let (prefix, labels) = if classifier {
            let labels = ints(node, "classlabels_int64s").to_vec();
            let labels = if labels.is_empty() {
                let n = attr(node, "classlabels_strings").map_or(0, |a| a.strings.len());
                (0..n as i64).collect()
            } else {
                labels
            };
            ("class", labels)
        } else {
            ("target", vec![0])
        };
        if labels.is_empty() {
            return Err(invalid("the classifier has no class labels"));
        }
        let w_trees = ints(node, &format!("{prefix}_treeids"));
        let w_nodes = ints(node, &format!("{prefix}_nodeids"));
        let w_ids = ints(node, &format!("{prefix}_ids"));
        let weights = floats(node, &format!("{prefix}_weights"))?;
        if w_nodes.len() != w_trees.len()
            || w_ids.len() != w_trees.len()
            || weights.len() != w_trees.len()
        {
            return Err(invalid(format!(
                "the {prefix}_* attributes differ in length"
            )));
        }
        let base_values = floats(node, "base_values")?;
        let post = text(node, "post_transform").unwrap_or_else(|| "NONE".into());
        let mut distinct: Vec<i64> = w_ids.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        // How each weight counts towards the output.
        let positive = labels
            .iter()
            .position(|&l| l == 1)
            .unwrap_or(labels.len() - 1) as i64;
        let (sign, post): (Box<dyn Fn(i64) -> f32>, Post) = if !classifier {
            if ints(node, "n_targets").first().is_some_and(|&t| t != 1)
                || attr(node, "n_targets").is_some_and(|a| a.i > 1)
            {
                return Err(invalid("only single-target regressors are supported"));
            }
            let post = match post.as_str() {
                "NONE" => Post::None,
                "LOGISTIC" => Post::Logistic,
                p => return Err(invalid(format!("unsupported post_transform `{p}`"))),
            };
            (Box::new(|_| 1.0), post)
        } else if labels.len() == 2 && distinct.len() == 1 {
            // onnxruntime's binary case: the one class present scores the
            // positive label.
            let post = match post.as_str() {
                "NONE" => Post::None,
                "LOGISTIC" => Post::Logistic,
                p => return Err(invalid(format!("unsupported post_transform `{p}`"))),
            };
            (Box::new(|_| 1.0), post)
        } else {
            match post.as_str() {
                "NONE" => (
                    Box::new(move |c| if c == positive { 1.0 } else { 0.0 }),
                    Post::None,
                ),
                "LOGISTIC" => (
                    Box::new(move |c| if c == positive { 1.0 } else { 0.0 }),
                    Post::Logistic,
                ),
                "SOFTMAX" if labels.len() == 2 => (
                    Box::new(move |c| if c == positive { 1.0 } else { -1.0 }),
                    Post::Logistic,
                ),
                p => {
                    return Err(invalid(format!(
                        "unsupported post_transform `{p}` for {} classes",
                        labels.len()
                    )));
                }
            }
        };
        let base = match (classifier, base_values.as_slice()) {
            (_, []) => 0.0,
            (false, [b]) => *b as f64,
            (true, [b]) if distinct.len() == 1 => *b as f64,
            (true, bs) if bs.len() == labels.len() => bs
                .iter()
                .enumerate()
                .map(|(c, &b)| sign(c as i64) as f64 * b as f64)
                .sum(),
            _ => return Err(invalid("base_values does not match the classes")),
        };

        // Global index of every (tree, node id).
        let mut index: HashMap<(i64, i64), u32> = HashMap::with_capacity(n);
        for i in 0..n {
            if index.insert((tree_ids[i], node_ids[i]), i as u32).is_some() {
                return Err(invalid(format!(
                    "node {} of tree {} is defined twice",
                    node_ids[i], tree_ids[i]
                )));
            }
        }
        // Leaves are nodes whose both children are themselves, holding
        // their value in `threshold`: every tree can then be walked a fixed
        // number of steps, several trees at once, without asking whether
        // the walk has ended.
        let is_leaf: Vec<bool> = modes.iter().map(|m| m == "LEAF").collect();
        let mut values_at = vec![0f32; n];
        for k in 0..w_trees.len() {
            let Some(&i) = index.get(&(w_trees[k], w_nodes[k])) else {
                return Err(invalid(format!(
                    "a weight names node {} of tree {}, which does not exist",
                    w_nodes[k], w_trees[k]
                )));
            };
            if !is_leaf[i as usize] {
                return Err(invalid(format!(
                    "a weight names node {} of tree {}, which is not a leaf",
                    w_nodes[k], w_trees[k]
                )));
            }
            if !classifier && w_ids[k] != 0 {
                return Err(invalid("only single-target regressors are supported"));
            }
            values_at[i as usize] += sign(w_ids[k]) * weights[k];
        }
        let mut nodes = Vec::with_capacity(n);
        let mut is_child = vec![false; n];
        let mut simple = true;
        for i in 0..n {
            if is_leaf[i] {
                nodes.push(Node {
                    feature: 0,
                    threshold: values_at[i],
                    yes: i as u32,
                    no: i as u32,
                });
                continue;
            }
            let (strict, swap) = match modes[i].as_str() {
                "BRANCH_LEQ" => (false, false),
                "BRANCH_LT" => (true, false),
                // x >= t  ==  !(x < t);  x > t  ==  !(x <= t)
                "BRANCH_GTE" => (true, true),
                "BRANCH_GT" => (false, true),
                m => return Err(invalid(format!("unsupported node mode `{m}`"))),
            };
            let f = features[i];
            if f < 0 || f as usize >= width {
                return Err(invalid(format!(
                    "node {} of tree {} tests input {f}, but the model has {width}",
                    node_ids[i], tree_ids[i]
                )));
            }
            let child = |id: i64| -> Result<u32, ModelError> {
                index.get(&(tree_ids[i], id)).copied().ok_or_else(|| {
                    invalid(format!(
                        "tree {} refers to a missing node {id}",
                        tree_ids[i]
                    ))
                })
            };
            let (mut yes, mut no) = (child(trues[i])?, child(falses[i])?);
            is_child[yes as usize] = true;
            is_child[no as usize] = true;
            let mut missing_yes = missing.get(i).is_some_and(|&m| m != 0);
            if swap {
                std::mem::swap(&mut yes, &mut no);
                missing_yes = !missing_yes;
            }
            // `x <= t` with NaN going to `no` needs no flag.
            simple &= !strict && !missing_yes;
            nodes.push(Node {
                feature: f as u32
                    | if strict { STRICT } else { 0 }
                    | if missing_yes { MISSING_YES } else { 0 },
                threshold: values[i],
                yes,
                no,
            });
        }
        let mut trees: Vec<i64> = tree_ids.to_vec();
        trees.sort_unstable();
        trees.dedup();
        let mut roots = Vec::with_capacity(trees.len());
        for t in &trees {
            let candidates: Vec<usize> = (0..n)
                .filter(|&i| tree_ids[i] == *t && !is_child[i])
                .collect();
            let [root] = candidates.as_slice() else {
                return Err(invalid(format!("tree {t} does not have exactly one root")));
            };
            roots.push(*root as u32);
        }
        let depth = depth(&nodes, &is_leaf, &roots)?;
        // A power-of-two length lets the walk mask node indices instead of
        // checking their bounds; the padding leaves are never reached.
        let padded = nodes.len().next_power_of_two();
        for i in nodes.len()..padded {
            nodes.push(Node {
                feature: 0,
                threshold: 0.0,
                yes: i as u32,
                no: i as u32,
            });
        }
        let average = text(node, "aggregate_function").is_some_and(|a| a == "AVERAGE");
        let compact = if simple && width < ROW {
            compact(&nodes, &roots)
        } else {
            None
        };
        Ok(TreeEnsemble {
            compact,
            nodes,
            roots,
            depth,
            simple,
            base,
            average,
            post,
            width,
        })
    }

    /// Number of trees.
    pub fn trees(&self) -> usize {
        self.roots.len()
    }

    /// Scores one row (`NaN` for missing values).
    pub fn score(&self, row: &[f32]) -> f64 {
        let row = &row[..self.width];
        let sum = if let Some((nodes, roots)) = &self.compact {
            let mut fixed = [f32::NAN; ROW];
            fixed[..row.len()].copy_from_slice(row);
            walk_compact(nodes, roots, self.depth, &fixed)
        } else {
            self.walk_nodes(row)
        };
        self.finish(sum)
    }

    /// The sum of the leaves `row` reaches, walking the nodes.
    fn walk_nodes(&self, row: &[f32]) -> f64 {
        if self.simple && self.width <= ROW {
            let mut fixed = [f32::NAN; ROW];
            fixed[..row.len()].copy_from_slice(row);
            // A simple node's feature has no flag bits and is below the
            // width: masking it changes nothing but spares the bounds check.
            self.walk(&fixed, |n, row| {
                row[n.feature as usize & (ROW - 1)] <= n.threshold
            })
        } else if self.simple {
            self.walk(row, |n, row| row[n.feature as usize] <= n.threshold)
        } else {
            self.walk(row, general_test)
        }
    }

    /// The score from the sum of the leaves.
    fn finish(&self, sum: f64) -> f64 {
        let sum = if self.average {
            sum / self.roots.len() as f64
        } else {
            sum
        };
        let s = sum + self.base;
        match self.post {
            Post::None => s,
            Post::Logistic => 1.0 / (1.0 + (-s).exp()),
        }
    }

    /// The sum of the leaves `row` reaches, under `test`, adding the
    /// trees' leaves in their order.
    #[inline(always)]
    fn walk(&self, row: &[f32], test: impl Fn(&Node, &[f32]) -> bool + Copy) -> f64 {
        // Walking LANES trees side by side overlaps their memory latency:
        // one tree's walk is a chain of dependent loads. The trees that do
        // not fill a group of LANES are walked in groups of a quarter.
        let full = self.roots.len() / LANES * LANES;
        let (wide, rest) = self.roots.split_at(full);
        let mut sum = 0f64;
        for chunk in wide.chunks_exact(LANES) {
            sum = self.walk_lanes::<LANES>(chunk, row, test, sum);
        }
        for chunk in rest.chunks(LANES / 4) {
            sum = self.walk_lanes::<{ LANES / 4 }>(chunk, row, test, sum);
        }
        sum
    }

    /// Walks the trees `roots` (at most `N`) side by side and adds their
    /// leaves to `sum`.
    #[inline(always)]
    fn walk_lanes<const N: usize>(
        &self,
        roots: &[u32],
        row: &[f32],
        test: impl Fn(&Node, &[f32]) -> bool,
        mut sum: f64,
    ) -> f64 {
        // Every child index is below the (power-of-two) length: the mask
        // changes none, and lets the compiler drop the bounds checks.
        let mask = self.nodes.len() - 1;
        let nodes = &self.nodes[..=mask];
        let mut at = [roots[0]; N];
        at[..roots.len()].copy_from_slice(roots);
        for _ in 0..self.depth {
            for i in &mut at {
                let n = &nodes[*i as usize & mask];
                *i = if test(n, row) { n.yes } else { n.no };
            }
        }
        for &i in &at[..roots.len()] {
            sum += nodes[i as usize & mask].threshold as f64;
        }
        sum
    }
}

/// The trees at `roots` in `nodes` (all of whose tests are simple) in
/// [`Compact`] nodes, and each tree's first node; `None` if a `yes`
/// subtree is too large for the 16-bit offset.
fn compact(nodes: &[Node], roots: &[u32]) -> Option<(Vec<Compact>, Vec<u32>)> {
    let mut out: Vec<Compact> = Vec::with_capacity(nodes.len());
    let mut starts = Vec::with_capacity(roots.len());
    for &root in roots {
        starts.push(u32::try_from(out.len()).ok()?);
        // (node, the place of the parent whose `no` offset it sets).
        let mut stack = vec![(root, None::<usize>)];
        while let Some((i, parent)) = stack.pop() {
            let at = out.len();
            if let Some(p) = parent {
                out[p].no = u16::try_from(at - p).ok()?;
            }
            let n = nodes[i as usize];
            if n.yes == i && n.no == i {
                out.push(Compact {
                    threshold: n.threshold,
                    feature: (ROW - 1) as u16,
                    no: 0,
                });
                continue;
            }
            out.push(Compact {
                threshold: n.threshold,
                feature: n.feature as u16,
                no: 0,
            });
            // `yes` is walked first, so it is the next node.
            stack.push((n.no, Some(at)));
            stack.push((n.yes, None));
        }
    }
    // A power-of-two length lets the walk mask indices instead of checking
    // their bounds; the padding is never reached.
    let padded = out.len().next_power_of_two();
    out.resize(
        padded,
        Compact {
            threshold: 0.0,
            feature: (ROW - 1) as u16,
            no: 0,
        },
    );
    Some((out, starts))
}

/// The sum of the leaves the trees starting at `roots` reach for `row`
/// in `depth` steps, in their order (as [`TreeEnsemble::walk`]).
#[inline(always)]
fn walk_compact(nodes: &[Compact], roots: &[u32], depth: usize, row: &[f32; ROW]) -> f64 {
    let full = roots.len() / LANES * LANES;
    let (wide, rest) = roots.split_at(full);
    let mut sum = 0f64;
    for chunk in wide.chunks_exact(LANES) {
        sum = walk_compact_lanes::<LANES>(nodes, chunk, depth, row, sum);
    }
    for chunk in rest.chunks(LANES / 4) {
        sum = walk_compact_lanes::<{ LANES / 4 }>(nodes, chunk, depth, row, sum);
    }
    sum
}

/// Walks the trees starting at `roots` (at most `N`) side by side and adds
/// their leaves to `sum`.
#[inline(always)]
fn walk_compact_lanes<const N: usize>(
    nodes: &[Compact],
    roots: &[u32],
    depth: usize,
    row: &[f32; ROW],
    mut sum: f64,
) -> f64 {
    let mask = nodes.len() - 1;
    let nodes = &nodes[..=mask];
    let mut at = [roots[0]; N];
    at[..roots.len()].copy_from_slice(roots);
    for _ in 0..depth {
        for i in &mut at {
            let n = nodes[*i as usize & mask];
            let yes = row[n.feature as usize & (ROW - 1)] <= n.threshold;
            // Without a branch, which the data would mispredict.
            *i += std::hint::select_unpredictable(yes, 1, u32::from(n.no));
        }
    }
    for &i in &at[..roots.len()] {
        sum += nodes[i as usize & mask].threshold as f64;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped card forest, compiled.
    fn card_forest() -> TreeEnsemble {
        use tract_onnx::prelude::Framework;
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/card_rf.onnx");
        let bytes = std::fs::read(path).expect("models/card_rf.onnx");
        let proto = tract_onnx::onnx()
            .proto_model_for_read(&mut &bytes[..])
            .expect("an ONNX model");
        let graph = proto.graph.expect("a graph");
        let node = (graph.node.iter())
            .find(|n| n.op_type.starts_with("TreeEnsemble"))
            .expect("a tree ensemble");
        let width = (ints(node, "nodes_featureids").iter().max()).map_or(0, |&m| m as usize + 1);
        TreeEnsemble::from_node(node, width).expect("the card forest compiles")
    }

    #[test]
    fn compact_nodes_score_as_the_nodes_do_bit_for_bit() {
        let forest = card_forest();
        assert!(
            forest.compact.is_some(),
            "a simple forest is laid out compact"
        );
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut weighty = 0;
        for _ in 0..20_000 {
            let row: Vec<f32> = (0..forest.width)
                .map(|_| match next() % 8 {
                    0 => f32::NAN,
                    1 => 0.0,
                    2 => 1.0,
                    _ => (next() % 4000) as f32 / 7.0,
                })
                .collect();
            let by_nodes = forest.finish(forest.walk_nodes(&row));
            let score = forest.score(&row);
            assert_eq!(score.to_bits(), by_nodes.to_bits(), "row {row:?}");
            weighty += usize::from(score != forest.finish(0.0));
        }
        assert!(weighty > 1_000, "the rows reach leaves of some weight");
    }
}
