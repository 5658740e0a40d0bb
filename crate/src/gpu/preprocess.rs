//! The shader preprocessor: one WGSL source, many variants. Lines `#if NAME`, `#else`,
//! `#endif` (nestable) keep or drop code by whether NAME is defined; `#if A | B` keeps it
//! when either is.

/// Expands `source` with the given names defined.
pub fn preprocess(source: &str, defines: &[&str]) -> Result<String, String> {
    let mut out = String::with_capacity(source.len());
    // For each open #if: (this branch is kept, the enclosing code is kept).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let mut keep = true;
    for (n, line) in source.lines().enumerate() {
        let directive = line.trim_start();
        if let Some(name) = directive.strip_prefix("#if ") {
            let on = name.split('|').any(|n| defines.contains(&n.trim()));
            stack.push((on, keep));
            keep = keep && on;
        } else if directive.starts_with("#else") {
            let (on, outer) = stack.pop().ok_or(format!("line {}: #else without #if", n + 1))?;
            stack.push((!on, outer));
            keep = outer && !on;
        } else if directive.starts_with("#endif") {
            let (_, outer) = stack.pop().ok_or(format!("line {}: #endif without #if", n + 1))?;
            keep = outer;
        } else if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !stack.is_empty() {
        return Err("#if without #endif".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::preprocess;

    #[test]
    fn branches_and_nesting() {
        let src = "a\n#if X\nb\n#if Y\nc\n#else\nd\n#endif\n#else\ne\n#endif\nf\n";
        assert_eq!(preprocess(src, &[]).unwrap(), "a\ne\nf\n");
        assert_eq!(preprocess(src, &["X"]).unwrap(), "a\nb\nd\nf\n");
        assert_eq!(preprocess(src, &["X", "Y"]).unwrap(), "a\nb\nc\nf\n");
        let any = "#if X | Y\na\n#else\nb\n#endif\n";
        assert_eq!(preprocess(any, &["Y"]).unwrap(), "a\n");
        assert_eq!(preprocess(any, &["X"]).unwrap(), "a\n");
        assert_eq!(preprocess(any, &["Z"]).unwrap(), "b\n");
        assert!(preprocess("#if X\n", &[]).is_err());
        assert!(preprocess("#endif\n", &[]).is_err());
    }
}
