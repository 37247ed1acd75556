//! Task data without a model: converters against lm-eval's own documents and prompts, the Arrow
//! reader on a stream written by the arrow crates, and clear errors for bad task files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{ListBuilder, StringBuilder};
use arrow_array::{ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, StructArray};
use arrow_ipc::writer::StreamWriter;
use arrow_schema::{DataType, Field, Fields, Schema};
use opt_data::tasks::{self, arrow_rows, TaskError};
use serde_json::{json, Value};

/// The task fixture folders: `$OPT_TASK_FIXTURES` (colon-separated), default both public sets.
fn task_roots() -> Vec<PathBuf> {
    match std::env::var("OPT_TASK_FIXTURES") {
        Ok(list) => list
            .split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect(),
        Err(_) => ["tasks", "tasks-more"]
            .iter()
            .map(|d| {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../shared/fixtures")
                    .join(d)
            })
            .collect(),
    }
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Raw rows of `data/<task>.jsonl` converted by the task table give lm-eval's documents,
/// choices, gold answers and (zero-shot) request strings. Each fixture item is found in the data
/// file by its raw row (the file's order and which rows it holds are the fixture's business).
#[test]
fn converters_reproduce_lm_eval_documents() {
    let mut checked = 0;
    for root in task_roots() {
        let mut fixtures: Vec<PathBuf> = std::fs::read_dir(&root)
            .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        fixtures.sort();
        for path in fixtures {
            checked += check_converter(&root, &read_json(&path));
        }
    }
    assert!(checked > 0, "no task data under {:?}", task_roots());
    println!("{checked} documents converted as lm-eval does");
}

/// The documents of fixture `fx` checked against its folder's `data/<task>.jsonl` (0 without one).
fn check_converter(root: &Path, fx: &Value) -> usize {
    let task = fx["task"].as_str().unwrap();
    let data = root.join("data").join(format!("{task}.jsonl"));
    let Ok(text) = std::fs::read_to_string(&data) else {
        return 0;
    };
    let rows: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The whole file through the converter, as `opt tasks convert` runs it.
    let items = tasks::task(task)
        .unwrap()
        .convert_rows(&rows, &data)
        .unwrap();
    let mut checked = 0;
    for fi in fx["items"].as_array().unwrap() {
        let id = fi["doc_id"].as_u64().unwrap() as usize;
        let row = rows
            .iter()
            .position(|r| *r == fi["doc"])
            .unwrap_or_else(|| panic!("{task} doc {id}: its row is not in {}", data.display()));
        let item = &items[row];
        assert_eq!(
            item.doc_id, row,
            "{task} doc {id}: a file's row index is its doc_id"
        );
        assert_eq!(
            json!(item.choices),
            fi["choices"],
            "{task} doc {id}: choices"
        );
        assert_eq!(json!(item.gold), fi["gold"], "{task} doc {id}: gold");
        if fx["num_fewshot"] == 0 {
            let requests = fi["requests"].as_array().unwrap();
            assert_eq!(item.requests("").len(), requests.len(), "{task} doc {id}");
            for (r, want) in item.requests("").iter().zip(requests) {
                assert_eq!(json!(r.context), want["context"], "{task} doc {id}");
                assert_eq!(
                    json!(r.continuation),
                    want["continuation"],
                    "{task} doc {id}"
                );
            }
        }
        checked += 1;
    }
    checked
}

/// A `save_to_disk`-shaped split (strings, a Sequence-of-dict struct of lists, a class label, a
/// boolean), written as an Arrow IPC stream by arrow-ipc, reads back as the JSON rows it holds,
/// across two files in `state.json` order.
#[test]
fn arrow_split_reads_back_as_rows() {
    let dir = tempfile::tempdir().unwrap();
    let rows = [
        json!({"question": "Which?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "label": 1, "ok": true}),
        json!({"question": "Ünïcode", "choices": {"text": ["x"], "label": ["1"]}, "label": 0, "ok": false}),
        json!({"question": "Third", "choices": {"text": [], "label": []}, "label": 3, "ok": true}),
    ];
    write_stream(&dir.path().join("data-00001-of-00002.arrow"), &rows[2..]);
    write_stream(&dir.path().join("data-00000-of-00002.arrow"), &rows[..2]);
    std::fs::write(
        dir.path().join("state.json"),
        r#"{"_data_files": [{"filename": "data-00000-of-00002.arrow"}, {"filename": "data-00001-of-00002.arrow"}]}"#,
    )
    .unwrap();
    assert_eq!(arrow_rows::read_split(dir.path()).unwrap(), rows.to_vec());
    let bad = dir.path().join("bad.arrow");
    std::fs::write(&bad, b"\x04\x00\x00\x00oops").unwrap();
    let e = arrow_rows::read_arrow_rows(&bad).unwrap_err();
    assert!(e.to_string().contains("bad.arrow"), "{e}");
}

fn write_stream(path: &Path, rows: &[Value]) {
    let list = |key: &str| {
        let mut b = ListBuilder::new(StringBuilder::new());
        for r in rows {
            for v in r["choices"][key].as_array().unwrap() {
                b.values().append_value(v.as_str().unwrap());
            }
            b.append(true);
        }
        Arc::new(b.finish()) as ArrayRef
    };
    let item = Arc::new(Field::new("item", DataType::Utf8, true));
    let choice_fields = Fields::from(vec![
        Field::new("text", DataType::List(item.clone()), true),
        Field::new("label", DataType::List(item), true),
    ]);
    let choices = StructArray::new(
        choice_fields.clone(),
        vec![list("text"), list("label")],
        None,
    );
    let schema = Arc::new(Schema::new(vec![
        Field::new("question", DataType::Utf8, false),
        Field::new("choices", DataType::Struct(choice_fields), false),
        Field::new("label", DataType::Int64, false),
        Field::new("ok", DataType::Boolean, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r["question"].as_str().unwrap()),
        )),
        Arc::new(choices),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r["label"].as_i64().unwrap()),
        )),
        Arc::new(BooleanArray::from_iter(
            rows.iter().map(|r| r["ok"].as_bool()),
        )),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let mut writer = StreamWriter::try_new(std::fs::File::create(path).unwrap(), &schema).unwrap();
    writer.write(&batch).unwrap();
    writer.finish().unwrap();
}

/// Bad task input is an error naming the file and line (or the known tasks), never a panic.
#[test]
fn bad_task_files_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mine.jsonl");
    let good = r#"{"doc_id": 0, "query": "Q", "choices": ["a", "b"], "gold": 1}"#;
    let cases = [
        (format!("{good}\n{{\"doc_id\": 1, \"query\": \"Q\", \"choices\": [\"a\"]\n"), ":2:", "EOF"),
        (format!("{good}\n{{\"doc_id\": 1, \"query\": \"Q\", \"choices\": [\"a\"]}}\n"), ":2:", "gold"),
        (format!("\n{good}\n{{\"doc_id\": 1, \"query\": \"Q\", \"choices\": [\"a\"], \"gold\": 3}}\n"), ":3:", "gold"),
        ("{\"doc_id\": 0, \"choices\": [\"a\"], \"gold\": 0}\n".to_string(), ":1:", "query"),
        (String::new(), "mine.jsonl", "no items"),
    ];
    for (text, place, what) in cases {
        std::fs::write(&file, &text).unwrap();
        let e = tasks::read_items(&file).unwrap_err().to_string();
        assert!(
            e.contains("mine.jsonl") && e.contains(place) && e.contains(what),
            "{e}"
        );
    }
    std::fs::write(&file, format!("{good}\n")).unwrap();
    assert_eq!(tasks::read_items(&file).unwrap().len(), 1);

    let e = tasks::task("hellaswag_typo").unwrap_err();
    assert!(
        matches!(e, TaskError::UnknownTask { .. }) && e.to_string().contains("hellaswag,"),
        "{e}"
    );
    // A raw row without its answer field: the converter names the file, row and field.
    let rows = [json!({"goal": "g", "sol1": "a", "sol2": "b"})];
    let e = tasks::task("piqa")
        .unwrap()
        .convert_rows(&rows, Path::new("piqa.jsonl"))
        .unwrap_err();
    assert!(
        e.to_string().contains("piqa.jsonl:1") && e.to_string().contains("label"),
        "{e}"
    );
}
