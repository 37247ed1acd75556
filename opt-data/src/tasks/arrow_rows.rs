//! Rows of a Hugging Face `save_to_disk` split (Arrow IPC stream files) as JSON values, with
//! fields and values as in the dataset (class labels as their integer, booleans as booleans).

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type,
    UInt64Type, UInt8Type,
};
use arrow_array::{Array, RecordBatch};
use arrow_ipc::reader::StreamReader;
use arrow_schema::DataType;
use serde_json::{Map, Value};

use super::TaskError;

/// Every row of a split folder, in order: the files `state.json` lists (`_data_files`), else the
/// folder's `*.arrow` files by name.
pub fn read_split(dir: &Path) -> Result<Vec<Value>, TaskError> {
    let mut rows = Vec::new();
    for file in split_files(dir)? {
        rows.extend(read_arrow_rows(&file)?);
    }
    Ok(rows)
}

/// The rows of one Arrow IPC stream file.
pub fn read_arrow_rows(path: &Path) -> Result<Vec<Value>, TaskError> {
    let err = |message: String| TaskError::File {
        path: path.into(),
        message,
    };
    let file = File::open(path).map_err(|e| err(e.to_string()))?;
    let reader = StreamReader::try_new(BufReader::new(file), None)
        .map_err(|e| err(format!("not an Arrow IPC stream: {e}")))?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| err(e.to_string()))?;
        for row in 0..batch.num_rows() {
            rows.push(row_value(&batch, row).map_err(&err)?);
        }
    }
    Ok(rows)
}

fn split_files(dir: &Path) -> Result<Vec<std::path::PathBuf>, TaskError> {
    let state = dir.join("state.json");
    if let Ok(text) = std::fs::read_to_string(&state) {
        let v: Value = serde_json::from_str(&text).map_err(|e| TaskError::File {
            path: state.clone(),
            message: e.to_string(),
        })?;
        if let Some(files) = v["_data_files"].as_array() {
            return Ok(files
                .iter()
                .filter_map(|f| f["filename"].as_str())
                .map(|f| dir.join(f))
                .collect());
        }
    }
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| TaskError::File {
            path: dir.into(),
            message: e.to_string(),
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "arrow"))
        .collect();
    files.sort();
    Ok(files)
}

fn row_value(batch: &RecordBatch, row: usize) -> Result<Value, String> {
    let schema = batch.schema();
    let mut map = Map::new();
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        map.insert(field.name().clone(), cell(column.as_ref(), row)?);
    }
    Ok(Value::Object(map))
}

/// One cell as JSON: strings, booleans, numbers, lists and structs (HF `Sequence`s of dicts).
fn cell(array: &dyn Array, row: usize) -> Result<Value, String> {
    if array.is_null(row) {
        return Ok(Value::Null);
    }
    macro_rules! primitive {
        ($t:ty) => {
            Value::from(array.as_primitive::<$t>().value(row))
        };
    }
    Ok(match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().value(row).into(),
        DataType::LargeUtf8 => array.as_string::<i64>().value(row).into(),
        DataType::Boolean => array.as_boolean().value(row).into(),
        DataType::Int8 => primitive!(Int8Type),
        DataType::Int16 => primitive!(Int16Type),
        DataType::Int32 => primitive!(Int32Type),
        DataType::Int64 => primitive!(Int64Type),
        DataType::UInt8 => primitive!(UInt8Type),
        DataType::UInt16 => primitive!(UInt16Type),
        DataType::UInt32 => primitive!(UInt32Type),
        DataType::UInt64 => primitive!(UInt64Type),
        DataType::Float32 => primitive!(Float32Type),
        DataType::Float64 => primitive!(Float64Type),
        DataType::List(_) => list(array.as_list::<i32>().value(row).as_ref())?,
        DataType::LargeList(_) => list(array.as_list::<i64>().value(row).as_ref())?,
        DataType::Struct(fields) => {
            let s = array.as_struct();
            let mut map = Map::new();
            for (field, column) in fields.iter().zip(s.columns()) {
                map.insert(field.name().clone(), cell(column.as_ref(), row)?);
            }
            Value::Object(map)
        }
        other => return Err(format!("unsupported Arrow column type {other}")),
    })
}

fn list(values: &dyn Array) -> Result<Value, String> {
    (0..values.len())
        .map(|i| cell(values, i))
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}
