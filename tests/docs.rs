//! Every `tl` block in `docs/rules.md` compiles and its examples hold; every
//! `tl-error` block is rejected with at least one diagnostic.

use std::path::Path;
use std::sync::Arc;
use tripline::engine::{EngineOptions, RuleSet, run_example};
use tripline::rules::CompileError;

fn blocks(doc: &str, lang: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut lines = doc.lines().enumerate();
    while let Some((n, l)) = lines.next() {
        if l.trim() == format!("```{lang}") {
            let body: Vec<&str> = lines
                .by_ref()
                .map(|(_, l)| l)
                .take_while(|l| l.trim() != "```")
                .collect();
            out.push((n + 1, body.join("\n")));
        }
    }
    out
}

/// Compiles a block as `tripline check` does (models read from disk,
/// relative to the block's file).
fn compile(name: &str, text: &str) -> Result<Arc<RuleSet>, CompileError> {
    let mut c = tripline::files::compiler();
    c.add_source(name, text);
    Ok(RuleSet::build(c.compile()?, EngineOptions::default()))
}

#[test]
fn rule_language_doc_examples_hold() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/rules.md"))
        .unwrap();
    let ok = blocks(&doc, "tl");
    assert!(ok.len() >= 8, "found {} tl blocks", ok.len());
    let mut examples = 0;
    for (line, src) in &ok {
        let rs = compile(&format!("docs/rules.md:{line}"), src)
            .unwrap_or_else(|e| panic!("block at docs/rules.md:{line} does not compile:\n{e}"));
        for ex in &rs.def().examples {
            examples += 1;
            if let Err(e) = run_example(&rs, ex) {
                panic!("example `{}` at docs/rules.md:{line}: {e}", ex.name);
            }
        }
    }
    assert!(examples >= 7, "only {examples} examples ran");
    for (line, src) in blocks(&doc, "tl-error") {
        let err = match compile("doc.tl", &src) {
            Ok(_) => panic!("block at docs/rules.md:{line} should be rejected"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("did you mean"), "{err}");
        assert!(err.contains("3 errors"), "all errors in one pass: {err}");
    }
}

#[test]
fn readme_diagnostics_are_what_check_prints() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let file = root.join("docs/examples/broken.tl");
    let mut c = tripline::rules::Compiler::new();
    c.add_source(
        "docs/examples/broken.tl",
        &std::fs::read_to_string(&file).unwrap(),
    );
    let shown = match c.compile() {
        Ok(_) => panic!("docs/examples/broken.tl must not compile"),
        Err(e) => e.to_string(),
    };
    assert!(shown.ends_with("3 errors"), "{shown}");
    assert!(
        readme.contains(&shown),
        "README must quote `tripline check --rules docs/examples/broken.tl`:\n{shown}"
    );
}
