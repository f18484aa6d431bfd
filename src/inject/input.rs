//! Reading manifests: files, directories (recursively, `.yaml`, `.yml` and
//! `.json` files in name order) and `-` for stdin; each split into its YAML
//! documents (JSON is read as YAML). Empty documents are dropped. A source
//! that cannot be read or parsed yields an error naming it (and the line, for
//! YAML errors) and no documents at all, never half of them.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml_ng::Value;

/// The documents of one file (or of stdin).
pub struct Source {
    pub name: String,
    pub documents: Vec<Value>,
}

/// Every source the inputs name, in order; unreadable ones as errors.
pub fn read_all(inputs: &[String]) -> Vec<Result<Source, String>> {
    let mut sources = Vec::new();
    for input in inputs {
        if input == "-" {
            let mut text = String::new();
            let read = std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| format!("-: {e}"));
            sources.push(read.and_then(|_| parse("-", &text)));
            continue;
        }
        let path = Path::new(input);
        if path.is_dir() {
            match files_under(path) {
                Ok(files) => sources.extend(files.iter().map(|f| read_file(f))),
                Err(e) => sources.push(Err(format!("{input}: {e}"))),
            }
        } else {
            sources.push(read_file(path));
        }
    }
    sources
}

fn read_file(path: &Path) -> Result<Source, String> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{name}: {e}"))?;
    parse(&name, &text)
}

/// Splits `text` into its documents.
pub fn parse(name: &str, text: &str) -> Result<Source, String> {
    let mut documents = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        let value = Value::deserialize(document).map_err(|e| format!("{name}: {e}"))?;
        if !value.is_null() {
            documents.push(value);
        }
    }
    Ok(Source {
        name: name.to_string(),
        documents,
    })
}

/// Manifest files under `dir`, depth first, in name order.
fn files_under(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    let mut files = Vec::new();
    for path in entries {
        if path.is_dir() {
            files.extend(files_under(&path)?);
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        {
            files.push(path);
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn documents_split_empty_ones_dropped_errors_name_the_line() {
        let source = parse("m.yaml", "---\na: 1\n---\n---\n{\"b\": 2}\n").unwrap();
        assert_eq!(source.documents.len(), 2);
        let err = parse("bad.yaml", "a: 1\n---\nb: [1,\n").err().unwrap();
        assert!(err.starts_with("bad.yaml: ") && err.contains("line"), "{err}");
    }
}
