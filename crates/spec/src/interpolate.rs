//! `${VAR}` and `${VAR:-default}` interpolation; `$${` writes a literal `${`.

/// Why a string could not be interpolated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterpolationError {
    /// `${NAME}` with no such variable and no default.
    Missing(String),
    /// `${` without a closing `}` or with an invalid name.
    Malformed(String),
}

/// Replaces every `${VAR}` / `${VAR:-default}` in `text` using `lookup`.
pub fn interpolate(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, InterpolationError> {
    if !text.contains('$') {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(escaped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = escaped;
        } else if let Some(body) = after.strip_prefix("${") {
            let end = body
                .find('}')
                .ok_or_else(|| InterpolationError::Malformed(after.to_owned()))?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(InterpolationError::Malformed(format!("${{{expr}}}")));
            }
            match (lookup(name), default) {
                (Some(v), _) if !(v.is_empty() && default.is_some()) => out.push_str(&v),
                (_, Some(d)) => out.push_str(d),
                (Some(v), None) => out.push_str(&v),
                (None, None) => return Err(InterpolationError::Missing(name.to_owned())),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("db".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn replaces_variables_and_defaults() {
        assert_eq!(interpolate("pg://${HOST}/x", &env).unwrap(), "pg://db/x");
        assert_eq!(interpolate("${NOPE:-5432}", &env).unwrap(), "5432");
        assert_eq!(interpolate("${EMPTY:-d}", &env).unwrap(), "d");
        assert_eq!(
            interpolate("cost $5 and $${HOST}", &env).unwrap(),
            "cost $5 and ${HOST}"
        );
    }

    #[test]
    fn reports_missing_and_malformed() {
        assert_eq!(
            interpolate("${NOPE}", &env),
            Err(InterpolationError::Missing("NOPE".into()))
        );
        assert!(matches!(
            interpolate("${HOST", &env),
            Err(InterpolationError::Malformed(_))
        ));
        assert!(matches!(
            interpolate("${A B}", &env),
            Err(InterpolationError::Malformed(_))
        ));
    }
}
