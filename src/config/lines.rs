//! Where in the text an error belongs: parse errors name the key on their line, errors found
//! on values without a position are placed at their key path, and errors on a block mapping
//! point at its key rather than its first entry.

use super::ConfigError;

/// The mapping key written on `line` (1-based), if that line starts with one; parse errors
/// point at the offending value, and naming its key makes the message self-explanatory.
pub(super) fn key_on_line(text: &str, line: u32) -> String {
    let Some(l) = line
        .checked_sub(1)
        .and_then(|i| text.lines().nth(i as usize))
    else {
        return String::new();
    };
    let t = l.trim_start().trim_start_matches("- ");
    match t.split_once(':') {
        Some((k, _))
            if !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
        {
            k.to_string()
        }
        _ => String::new(),
    }
}

/// The parser locates a block mapping at its first entry, one line below its key. Point such
/// errors at the key itself (`tls:` rather than the `certificates:` line under it).
pub(super) fn refine(text: &str, errors: &mut [ConfigError]) {
    let lines: Vec<&str> = text.lines().collect();
    for e in errors.iter_mut() {
        let Some(last) = e.key.rsplit('.').next() else {
            continue;
        };
        let field = last.split('[').next().unwrap_or(last);
        if e.line == 0 {
            e.line = line_of_key_path(&lines, &e.key);
            continue;
        }
        if field.is_empty() {
            continue;
        }
        // Indentation of a line's content, counting a list item's "- " as indentation.
        let indent = |l: &str| {
            let spaces = l.len() - l.trim_start().len();
            let rest = l.trim_start();
            spaces + (rest.len() - rest.trim_start_matches("- ").len())
        };
        let is_key_line = |l: &str| {
            let t = l.trim_start().trim_start_matches("- ");
            t.starts_with(field) && t[field.len()..].trim_start().starts_with(':')
        };
        let at = e.line as usize - 1;
        let Some(here) = lines.get(at) else { continue };
        if is_key_line(here) {
            continue;
        }
        // Only a parent key (less indented) can own the reported line.
        if let Some(back) = (1..=2).find(|d| {
            at >= *d
                && lines
                    .get(at - d)
                    .is_some_and(|l| is_key_line(l) && indent(l) < indent(here))
        }) {
            e.line -= back as u32;
        }
    }
}

/// The line of a plain dotted key path (`observability.otlp.endpoint`) for errors found on
/// values that carry no position: each segment is looked for below the previous one, more
/// indented (or later on the same line, for flow mappings). The deepest segment found wins;
/// 0 when even the first is missing or the path has list indices.
fn line_of_key_path(lines: &[&str], path: &str) -> u32 {
    if path.is_empty() || path.contains('[') {
        return 0;
    }
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut found: Option<(usize, usize)> = None; // (line index, indent)
    for seg in path.split('.') {
        let key = format!("{seg}:");
        // A flow mapping on the parent's line: `otlp: { endpoint: x }`.
        if let Some((i, _)) = found {
            let in_flow = lines[i].split_once('{').is_some_and(|(_, rest)| {
                rest.split([',', '{'])
                    .any(|part| part.trim_start().starts_with(&key))
            });
            if in_flow {
                continue;
            }
        }
        let start = found.map_or(0, |(i, _)| i + 1);
        let parent_indent = found.map(|(_, ind)| ind);
        let mut hit = None;
        for (i, l) in lines.iter().enumerate().skip(start) {
            let t = l.trim_start();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            // Left the parent's block: stop looking.
            if let Some(p) = parent_indent {
                if indent(l) <= p {
                    break;
                }
            } else if indent(l) > 0 {
                continue;
            }
            if t.starts_with(&key) {
                hit = Some((i, indent(l)));
                break;
            }
        }
        match hit {
            Some(h) => found = Some(h),
            None => break,
        }
    }
    found.map_or(0, |(i, _)| i as u32 + 1)
}

pub(super) fn strip_location_suffix(message: &str) -> String {
    let first = message.lines().next().unwrap_or(message).trim();
    match first.rfind(" at line ") {
        Some(i) => first[..i].trim_end_matches(',').to_string(),
        None => first.to_string(),
    }
}
