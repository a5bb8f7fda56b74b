//! Changes to rule text that keep everything else in the file as written
//! (comments, layout): what promotions write back to the rule files.

use super::parse_file;

/// Why a model's candidate cannot be promoted in a file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromoteError {
    /// The file declares the model without a candidate.
    #[error("model `{0}` has no candidate to promote (declare one with `candidate \"FILE.onnx\"`)")]
    NoCandidate(String),
}

/// `text` with model `name`'s declaration `model NAME from "CURRENT"
/// candidate "NEXT"` turned into `model NAME from "NEXT"`; `None` if the
/// file does not declare the model.
pub fn promote_candidate(text: &str, name: &str) -> Result<Option<String>, PromoteError> {
    let (ast, _) = parse_file(0, text);
    let Some(decl) = ast.models.into_iter().find(|m| m.name.name == name) else {
        return Ok(None);
    };
    let Some((_, next)) = decl.candidate else {
        return Err(PromoteError::NoCandidate(name.to_string()));
    };
    let (from, to) = (decl.path.1.start as usize, next.end as usize);
    Ok(Some(format!(
        "{}{}{}",
        &text[..from],
        &text[next.start as usize..to],
        &text[to..]
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_candidate_becomes_the_model_and_nothing_else_changes() {
        let text = "# the card model\nmodel m from \"a.onnx\" # now\n  candidate \"b\\\\c.onnx\" # next\nrule r { pattern { x: m > 0.5 } }\n";
        assert_eq!(
            promote_candidate(text, "m").unwrap().unwrap(),
            "# the card model\nmodel m from \"b\\\\c.onnx\" # next\nrule r { pattern { x: m > 0.5 } }\n"
        );
        assert_eq!(promote_candidate(text, "other"), Ok(None));
        assert_eq!(
            promote_candidate("model m from \"a.onnx\"\n", "m"),
            Err(PromoteError::NoCandidate("m".into()))
        );
    }
}
