//! Scoring cost per event of the shipped models, one row at a time as the
//! engine scores them: the forests on tripline's tree evaluator, the
//! logistic regression on tract. Rows are real feature vectors
//! (`tests/data/model-check.csv`), cycled so branch prediction cannot learn
//! one path.
//!
//! `cargo bench --bench models`

#![allow(missing_docs)] // criterion_group! generates an undocumented function.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::path::Path;
use tripline::model::Model;

fn rows(model: &Model) -> Vec<Vec<f32>> {
    let mut r = csv::Reader::from_path("tests/data/model-check.csv").unwrap();
    let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    let cols: Vec<usize> = model
        .inputs()
        .iter()
        .map(|i| header.iter().position(|h| h == i).unwrap())
        .collect();
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            cols.iter()
                .map(|&c| rec[c].parse::<f32>().unwrap())
                .collect()
        })
        .collect()
}

fn score(c: &mut Criterion) {
    let mut g = c.benchmark_group("model");
    for name in ["fraud_rf", "card_rf", "fraud_lr"] {
        let model = tripline::files::load_model(Path::new(&format!("models/{name}.onnx"))).unwrap();
        let rows = rows(&model);
        let mut i = 0;
        g.bench_function(format!("{name}/row"), |b| {
            b.iter(|| {
                i = (i + 1) % rows.len();
                black_box(model.score(black_box(&rows[i])))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, score);
criterion_main!(benches);
