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

/// `file` as the rule language quotes it.
fn quoted(file: &str) -> String {
    let mut q = String::with_capacity(file.len() + 2);
    q.push('"');
    for c in file.chars() {
        match c {
            '"' | '\\' => {
                q.push('\\');
                q.push(c);
            }
            '\n' => q.push_str("\\n"),
            '\t' => q.push_str("\\t"),
            '\r' => q.push_str("\\r"),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

/// `text` with model `name`'s declaration given the candidate `file`
/// (`model NAME from "CURRENT" candidate "FILE"`), in place of the one it
/// has; `None` if the file does not declare the model.
pub fn declare_candidate(text: &str, name: &str, file: &str) -> Option<String> {
    let (ast, _) = parse_file(0, text);
    let decl = ast.models.into_iter().find(|m| m.name.name == name)?;
    let file = quoted(file);
    Some(match decl.candidate {
        Some((_, at)) => format!(
            "{}{file}{}",
            &text[..at.start as usize],
            &text[at.end as usize..]
        ),
        None => {
            let at = decl.path.1.end as usize;
            format!("{}\n  candidate {file}{}", &text[..at], &text[at..])
        }
    })
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

    #[test]
    fn a_candidate_is_declared_beside_the_model_or_replaces_the_one_it_has() {
        let text = "model m from \"a.onnx\" # now\nrule r { pattern { x: m > 0.5 } }\n";
        let declared = declare_candidate(text, "m", "v2/\"b\".onnx").unwrap();
        assert_eq!(
            declared,
            "model m from \"a.onnx\"\n  candidate \"v2/\\\"b\\\".onnx\" # now\nrule r { pattern { x: m > 0.5 } }\n"
        );
        let (ast, errors) = parse_file(0, &declared);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(ast.models[0].candidate.as_ref().unwrap().0, "v2/\"b\".onnx");
        let again = declare_candidate(&declared, "m", "c.onnx").unwrap();
        assert_eq!(
            again,
            "model m from \"a.onnx\"\n  candidate \"c.onnx\" # now\nrule r { pattern { x: m > 0.5 } }\n"
        );
        assert_eq!(declare_candidate(text, "other", "c.onnx"), None);
    }
}
