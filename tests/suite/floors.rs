//! The house plan is literally true: no file of the library imports from a floor above its
//! own. Floors, from the ground up:
//!
//! | floor | modules |
//! |---|---|
//! | 0 | `values` (plain values: versions, positions), `json` (JSON as Python writes it) |
//! | 1 | `error`, `storage/` (file I/O behind a trait) |
//! | 2 | `log/` (the format, the engine's records, reading, writing, recovery) |
//! | 3 | `names` (stream and type name rules) |
//! | 4 | `index/`, `event` |
//! | 5 | `store/`, `internals`, `pg/` (the PostgreSQL backend, beside the store: the same `Backend` API) |
//! | 6 | `domain/` (only the backends' public API; its `EventStore` for both) |
//! | 8 | `lib.rs` (the front door: re-exports) |
//!
//! A file's own unit tests (`#[cfg(test)] mod tests` at its end) are not counted.

use std::path::{Path, PathBuf};

fn floor_of_module(module: &str) -> Option<u8> {
    Some(match module {
        "values" | "json" => 0,
        "error" | "storage" => 1,
        "log" => 2,
        "names" => 3,
        "index" | "event" => 4,
        "store" | "internals" | "pg" => 5,
        "domain" => 6,
        _ => return None,
    })
}

/// The module a name re-exported at the crate root comes from.
fn module_of_root_name(name: &str) -> Option<&'static str> {
    Some(match name {
        "Error" | "Result" => "error",
        "AppendResult" | "NewEvent" | "RecordedEvent" => "event",
        "PayloadEncoding" | "records" => "log",
        "category_of" => "names",
        "Direction" | "ExpectedVersion" | "Position" => "values",
        "Durability"
        | "DEFAULT_INDEX_FLUSH_EVENTS"
        | "DEFAULT_MAX_EVENT_SIZE"
        | "DEFAULT_SEGMENT_SIZE"
        | "outbox"
        | "backend"
        | "Backend"
        | "BoxError"
        | "Store"
        | "StoreBuilder"
        | "Transaction"
        | "typed"
        | "subscriptions"
        | "read"
        | "reports" => "store",
        _ => return None,
    })
}

fn floor_of_file(path: &Path, src: &Path) -> Option<u8> {
    let rel = path.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_string_lossy();
    let module = first.trim_end_matches(".rs");
    if module == "lib" {
        return Some(8);
    }
    floor_of_module(module)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `crate::…` path in the code of a file (comments and its unit tests left out), as the
/// module it reaches: `crate::log::format::X` reaches `log`, `crate::Error` reaches `error`.
fn reached_modules(code: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut uses_open: Option<usize> = None;
    for (n, line) in code.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") {
            break;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        let line_no = n + 1;
        // `use crate::{a::X, b::Y};` may span lines: collect the names inside its braces.
        if let Some(start) = uses_open {
            for part in line.split([',', '{', '}', ';', ' ']) {
                let head = part.split("::").next().unwrap_or("");
                if !head.is_empty() {
                    found.push((start, head.to_owned()));
                }
            }
            if line.contains("};") {
                uses_open = None;
            }
            continue;
        }
        if trimmed.starts_with("use crate::{") || trimmed.starts_with("pub use crate::{") {
            let inside = line.split_once("crate::{").map_or("", |(_, r)| r);
            for part in inside.split([',', '{', '}', ';', ' ']) {
                let head = part.split("::").next().unwrap_or("");
                if !head.is_empty() {
                    found.push((line_no, head.to_owned()));
                }
            }
            if !line.contains("};") {
                uses_open = Some(line_no);
            }
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            let before = rest[..i].chars().last();
            rest = &rest[i + "crate::".len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
                continue;
            }
            let head: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !head.is_empty() {
                found.push((line_no, head));
            }
        }
    }
    found
}

#[test]
fn no_file_imports_from_a_floor_above_its_own() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(
        files.len() > 40,
        "the library's files are found ({})",
        files.len()
    );
    let mut checked = 0;
    let mut up = Vec::new();
    for file in &files {
        let Some(floor) = floor_of_file(file, &src) else {
            panic!("{} is on no floor: add it to the plan", file.display());
        };
        let code = std::fs::read_to_string(file).unwrap();
        for (line, head) in reached_modules(&code) {
            let module = module_of_root_name(&head).unwrap_or(&head);
            let Some(target) = floor_of_module(module) else {
                continue;
            };
            checked += 1;
            if target > floor {
                up.push(format!(
                    "{}:{line} (floor {floor}) imports `{head}` ({module}, floor {target})",
                    file.strip_prefix(&src).unwrap().display()
                ));
            }
        }
    }
    assert!(checked > 100, "imports were found and checked ({checked})");
    assert!(
        up.is_empty(),
        "imports that point up a floor:\n{}",
        up.join("\n")
    );
}

#[test]
fn the_checker_sees_an_import_that_points_up() {
    let code = "use crate::store::Engine;\nfn f() { crate::domain::x(); }\n#[cfg(test)]\nmod tests { use crate::domain::y; }\n";
    let reached: Vec<String> = reached_modules(code).into_iter().map(|(_, m)| m).collect();
    assert_eq!(reached, ["store", "domain"]);
    let list = "use crate::{\n    Error,\n    store::X,\n};\n";
    let reached: Vec<String> = reached_modules(list).into_iter().map(|(_, m)| m).collect();
    assert_eq!(reached, ["Error", "store"]);
}
