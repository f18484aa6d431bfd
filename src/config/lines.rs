//! Maps a key path such as `listeners[0].routes[2].cluster` to the line it is
//! written on, so that errors found after deserialization (a reference to a
//! missing cluster, a bad regex) can still name file and line.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Line numbers (1-based) of every key and sequence item in a YAML document.
#[derive(Debug, Default)]
pub struct LineIndex {
    lines: HashMap<String, usize>,
    /// Every scalar value with its path and line, to place errors that
    /// serde reports only at the enclosing mapping.
    values: Vec<(String, String, usize)>,
    /// The line each YAML document of the stream starts on.
    documents: Vec<usize>,
    /// Where the text stops being YAML, if it does.
    syntax_error: Option<usize>,
}

impl LineIndex {
    pub fn build(text: &str) -> Self {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        // A syntax error is reported by the deserializer with its own line;
        // here a partial index is all we need. Every document is read so
        // that a second one can be refused at its line.
        let syntax_error = parser.load(&mut builder, true).err().map(|e| e.marker().line());
        Self {
            lines: builder.lines,
            values: builder.values,
            documents: builder.documents,
            syntax_error,
        }
    }

    /// The line of the first syntax error, for deserializer errors that
    /// come without a place.
    pub fn syntax_error_line(&self) -> Option<usize> {
        self.syntax_error
    }

    /// Where a second document starts (after a `---`), if the text has one.
    pub fn second_document_line(&self) -> Option<usize> {
        self.documents.get(1).copied()
    }

    /// The path and line of a scalar `value` written somewhere below `parent`.
    pub fn find_value(&self, parent: &str, value: &str) -> Option<(&str, usize)> {
        self.values
            .iter()
            .find(|(path, v, _)| v == value && path.starts_with(parent))
            .map(|(path, _, line)| (path.as_str(), *line))
    }

    /// The line of `path`, or of its nearest ancestor that has one.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut path = path;
        loop {
            if let Some(line) = self.lines.get(path) {
                return Some(*line);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, next: usize },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
    values: Vec<(String, String, usize)>,
    documents: Vec<usize>,
}

impl Builder {
    /// The path of the value about to be read in the innermost container.
    fn value_path(&mut self, line: usize) -> Option<String> {
        match self.stack.last_mut()? {
            Frame::Map { path, key } => {
                let key = key.take()?;
                Some(join(path, &key))
            }
            Frame::Seq { path, next } => {
                let item = format!("{path}[{next}]");
                *next += 1;
                self.lines.entry(item.clone()).or_insert(line);
                Some(item)
            }
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let line = mark.line();
        match event {
            Event::Scalar(value, ..) => {
                if let Some(Frame::Map { path, key }) = self.stack.last_mut() {
                    if key.is_none() {
                        self.lines.insert(join(path, &value), line);
                        *key = Some(value);
                        return;
                    }
                }
                if let Some(path) = self.value_path(line) {
                    self.values.push((path, value, line));
                }
            }
            Event::MappingStart(..) => {
                let path = if self.stack.is_empty() {
                    String::new()
                } else {
                    self.value_path(line).unwrap_or_default()
                };
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.value_path(line).unwrap_or_default();
                self.stack.push(Frame::Seq { path, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::DocumentStart => self.documents.push(line),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_keys_and_items() {
        let text = "admin:\n  address: 127.0.0.1:9901\nlisteners:\n  - name: a\n    routes:\n      - name: r0\n        cluster: x\n      - { name: r1, cluster: y }\n";
        let index = LineIndex::build(text);
        assert_eq!(index.line_of("admin.address"), Some(2));
        assert_eq!(index.line_of("listeners[0].name"), Some(4));
        assert_eq!(index.line_of("listeners[0].routes[0].cluster"), Some(7));
        assert_eq!(index.line_of("listeners[0].routes[1].cluster"), Some(8));
        // Unknown leaf: falls back to the nearest ancestor.
        assert_eq!(index.line_of("listeners[0].routes[1].timeout"), Some(8));
        assert_eq!(
            index.find_value("listeners[0]", "y"),
            Some(("listeners[0].routes[1].cluster", 8))
        );
    }
}
