//! lm-eval's prompt templates, one converter per source dataset: each turns one raw validation
//! row (fields exactly as in the dataset) into a [`TaskItem`], following lm-eval 0.4's task YAML
//! (`doc_to_text`, `doc_to_choice`, `doc_to_target`; every task here keeps the default target
//! delimiter " ") and helper functions for that task. Which task uses which is
//! [`super::catalog`].

use serde_json::Value;

use super::format::TaskItem;

/// An item with a shared context.
fn item(query: String, choices: Vec<String>, gold: usize) -> TaskItem {
    TaskItem {
        doc_id: 0,
        query: Some(query),
        choices,
        gold,
        continuation: None,
        source_hash: String::new(),
    }
}

fn field<'a>(row: &'a Value, name: &str) -> Result<&'a Value, String> {
    row.get(name)
        .ok_or_else(|| format!("missing field `{name}`"))
}

fn string<'a>(row: &'a Value, name: &str) -> Result<&'a str, String> {
    field(row, name)?
        .as_str()
        .ok_or_else(|| format!("field `{name}` is not a string"))
}

fn strings(value: &Value, name: &str) -> Result<Vec<String>, String> {
    value
        .as_array()
        .and_then(|a| a.iter().map(|v| v.as_str().map(str::to_string)).collect())
        .ok_or_else(|| format!("field `{name}` is not a list of strings"))
}

fn integer(row: &Value, name: &str) -> Result<usize, String> {
    field(row, name)?
        .as_u64()
        .map(|v| v as usize)
        .ok_or_else(|| format!("field `{name}` is not a non-negative integer"))
}

/// `choices.text` and the index of `key` in `choices.label` (ARC, OpenBookQA).
fn labelled_choices(row: &Value, key: &str) -> Result<(Vec<String>, usize), String> {
    let choices = field(row, "choices")?;
    let text = strings(field(choices, "text")?, "choices.text")?;
    let labels = strings(field(choices, "label")?, "choices.label")?;
    let gold = labels
        .iter()
        .position(|l| l == key)
        .ok_or_else(|| format!("answer key `{key}` is not among the labels {labels:?}"))?;
    Ok((text, gold))
}

/// ARC-Easy / ARC-Challenge: `Question: {{question}}\nAnswer:`.
pub(super) fn arc(row: &Value) -> Result<TaskItem, String> {
    let (choices, gold) = labelled_choices(row, string(row, "answerKey")?)?;
    let query = format!("Question: {}\nAnswer:", string(row, "question")?);
    Ok(item(query, choices, gold))
}

/// OpenBookQA: the bare question stem; the answer key may carry leading spaces.
pub(super) fn openbookqa(row: &Value) -> Result<TaskItem, String> {
    let key = string(row, "answerKey")?.trim_start_matches(py_isspace);
    let (choices, gold) = labelled_choices(row, key)?;
    Ok(item(
        string(row, "question_stem")?.to_string(),
        choices,
        gold,
    ))
}

/// PIQA: `Question: {{goal}}\nAnswer:`, choices `[sol1, sol2]`.
pub(super) fn piqa(row: &Value) -> Result<TaskItem, String> {
    let query = format!("Question: {}\nAnswer:", string(row, "goal")?);
    let choices = vec![string(row, "sol1")?.into(), string(row, "sol2")?.into()];
    Ok(item(query, choices, integer(row, "label")?))
}

/// BoolQ: `{{passage}}\nQuestion: {{question}}?\nAnswer:`, choices `["no", "yes"]`.
pub(super) fn boolq(row: &Value) -> Result<TaskItem, String> {
    let query = format!(
        "{}\nQuestion: {}?\nAnswer:",
        string(row, "passage")?,
        string(row, "question")?
    );
    let answer = field(row, "answer")?
        .as_bool()
        .ok_or("field `answer` is not a boolean")?;
    Ok(item(
        query,
        vec!["no".into(), "yes".into()],
        answer as usize,
    ))
}

/// COPA: the premise without its final character, then " because" / " therefore"; each choice
/// is `" " + lower_first(choice)` (so continuations start with two spaces, as in lm-eval).
pub(super) fn copa(row: &Value) -> Result<TaskItem, String> {
    let connector = match string(row, "question")? {
        "cause" => "because",
        "effect" => "therefore",
        other => return Err(format!("field `question` is `{other}`, not cause/effect")),
    };
    let premise = py_strip(string(row, "premise")?);
    let premise = premise
        .char_indices()
        .last()
        .map_or("", |(i, _)| &premise[..i]);
    let choices = ["choice1", "choice2"]
        .iter()
        .map(|c| Ok(format!(" {}", lower_first(string(row, c)?))))
        .collect::<Result<Vec<_>, String>>()?;
    Ok(item(
        format!("{premise} {connector}"),
        choices,
        integer(row, "label")?,
    ))
}

/// HellaSwag: lm-eval's `process_docs` (query from activity label and both context halves,
/// WikiHow artefacts removed), gold from the string `label`.
pub(super) fn hellaswag(row: &Value) -> Result<TaskItem, String> {
    let ctx = format!(
        "{} {}",
        string(row, "ctx_a")?,
        py_capitalize(string(row, "ctx_b")?)
    );
    let query = hellaswag_preprocess(&format!("{}: {ctx}", string(row, "activity_label")?));
    let choices = strings(field(row, "endings")?, "endings")?
        .iter()
        .map(|e| hellaswag_preprocess(e))
        .collect();
    let label = string(row, "label")?;
    let gold = label
        .trim()
        .parse()
        .map_err(|_| format!("field `label` is `{label}`, not an integer"))?;
    Ok(item(query, choices, gold))
}

/// WinoGrande, partial scoring: the sentence up to `_` completed by each option is a context;
/// the rest of the sentence is the shared continuation.
pub(super) fn winogrande(row: &Value) -> Result<TaskItem, String> {
    let sentence = string(row, "sentence")?;
    let blank = sentence
        .find('_')
        .ok_or("field `sentence` has no `_` blank")?;
    let choices = ["option1", "option2"]
        .iter()
        .map(|o| Ok(format!("{}{}", &sentence[..blank], string(row, o)?)))
        .collect::<Result<Vec<_>, String>>()?;
    let gold = match string(row, "answer")? {
        "1" => 0,
        "2" => 1,
        other => return Err(format!("field `answer` is `{other}`, not \"1\" or \"2\"")),
    };
    Ok(TaskItem {
        doc_id: 0,
        query: None,
        choices,
        gold,
        continuation: Some(py_strip(&sentence[blank + 1..]).to_string()),
        source_hash: String::new(),
    })
}

/// GLUE/SuperGLUE RTE: `{{sentence1}}\nQuestion: {{sentence2}} True or False?\nAnswer:`,
/// choices `["True", "False"]` (label 0 = entailment = "True").
pub(super) fn rte(row: &Value) -> Result<TaskItem, String> {
    let query = format!(
        "{}\nQuestion: {} True or False?\nAnswer:",
        string(row, "sentence1")?,
        string(row, "sentence2")?
    );
    Ok(item(
        query,
        vec!["True".into(), "False".into()],
        integer(row, "label")?,
    ))
}

/// CommitmentBank: `{{premise}}\nQuestion: {{hypothesis}}. True, False, or Neither?\nAnswer:`,
/// choices `["True", "False", "Neither"]`.
pub(super) fn cb(row: &Value) -> Result<TaskItem, String> {
    let query = format!(
        "{}\nQuestion: {}. True, False, or Neither?\nAnswer:",
        string(row, "premise")?,
        string(row, "hypothesis")?
    );
    let choices = ["True", "False", "Neither"].map(String::from).to_vec();
    Ok(item(query, choices, integer(row, "label")?))
}

/// SciQ: `{{support.lstrip()}}\nQuestion: {{question}}\nAnswer:` (an empty support leaves the
/// leading newline), choices `[distractor1, distractor2, distractor3, correct_answer]`, gold 3.
pub(super) fn sciq(row: &Value) -> Result<TaskItem, String> {
    let support = string(row, "support")?.trim_start_matches(py_isspace);
    let query = format!("{support}\nQuestion: {}\nAnswer:", string(row, "question")?);
    let choices = [
        "distractor1",
        "distractor2",
        "distractor3",
        "correct_answer",
    ]
    .iter()
    .map(|f| Ok(string(row, f)?.to_string()))
    .collect::<Result<Vec<_>, String>>()?;
    Ok(item(query, choices, 3))
}

/// Social IQa: `Q: {{context}} {{question}}\nA:`, choices `[answerA, answerB, answerC]`, gold
/// `(label|int) - 1` (the label is the string "1".."3").
pub(super) fn social_iqa(row: &Value) -> Result<TaskItem, String> {
    let query = format!(
        "Q: {} {}\nA:",
        string(row, "context")?,
        string(row, "question")?
    );
    let choices = ["answerA", "answerB", "answerC"]
        .iter()
        .map(|f| Ok(string(row, f)?.to_string()))
        .collect::<Result<Vec<_>, String>>()?;
    let label = string(row, "label")?;
    let gold = match label.trim().parse::<usize>() {
        Ok(n @ 1..=3) => n - 1,
        _ => {
            return Err(format!(
                "field `label` is `{label}`, not \"1\", \"2\" or \"3\""
            ))
        }
    };
    Ok(item(query, choices, gold))
}

/// CommonsenseQA: the stripped question and the five lettered answers in the prompt
/// (`Question: ...\nA. ...\n...E. ...\nAnswer:`), choices the letters `A`..`E`, gold the answer
/// key's letter.
pub(super) fn commonsense_qa(row: &Value) -> Result<TaskItem, String> {
    let letters = ["A", "B", "C", "D", "E"];
    let text = strings(field(field(row, "choices")?, "text")?, "choices.text")?;
    if text.len() != letters.len() {
        return Err(format!("`choices.text` has {} answers, not 5", text.len()));
    }
    let mut query = format!("Question: {}\n", py_strip(string(row, "question")?));
    for (letter, answer) in letters.iter().zip(&text) {
        query.push_str(&format!("{letter}. {answer}\n"));
    }
    query.push_str("Answer:");
    let key = string(row, "answerKey")?;
    let gold = letters
        .iter()
        .position(|l| *l == key)
        .ok_or_else(|| format!("field `answerKey` is `{key}`, not one of A..E"))?;
    Ok(item(query, letters.map(String::from).to_vec(), gold))
}

/// lm-eval's hellaswag `preprocess`: strip, `" [title]"` -> `". "`, drop `[...]` spans (non-greedy,
/// not across lines), then one pass of "  " -> " ".
pub fn hellaswag_preprocess(text: &str) -> String {
    let text = py_strip(text).replace(" [title]", ". ");
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find([']', '\n']) {
            Some(close) if after.as_bytes()[close] == b']' => rest = &after[close + 1..],
            _ => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.replace("  ", " ")
}

/// Python's `str.isspace` for one character (Rust's whitespace plus the separators \x1c..\x1f).
pub fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// Python's `str.strip()`.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(py_isspace)
}

/// Python's `str.capitalize()`: first character upper-cased, all others lower-cased.
pub fn py_capitalize(s: &str) -> String {
    let mut chars = s.chars();
    chars.next().map_or_else(String::new, |first| {
        first
            .to_uppercase()
            .chain(chars.as_str().to_lowercase().chars())
            .collect()
    })
}

/// lm-eval's copa `convert_choice`: the first character lower-cased.
fn lower_first(s: &str) -> String {
    let mut chars = s.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_lowercase().chain(chars).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_string_helpers() {
        assert_eq!(py_capitalize("the Man WALKS"), "The man walks");
        assert_eq!(py_capitalize(""), "");
        assert_eq!(py_strip("\x1c a b \n"), "a b");
        assert_eq!(lower_first("The toilet."), "the toilet.");
    }

    #[test]
    fn hellaswag_preprocess_like_lm_eval() {
        // Hand-derived from lm-eval's preprocess: strip, [title] -> ". ", [..] removed, one pass
        // of "  " -> " " (three spaces become two).
        assert_eq!(
            hellaswag_preprocess(" How to cook [title] Boil water. [step] Add salt.  "),
            "How to cook. Boil water. Add salt."
        );
        assert_eq!(hellaswag_preprocess("a   b"), "a  b");
        assert_eq!(
            hellaswag_preprocess("keep [open\nline] and [x]y"),
            "keep [open\nline] and y"
        );
        assert_eq!(hellaswag_preprocess("[a[b]c]"), "c]");
    }
}
