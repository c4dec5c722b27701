//! `${VAR}` expansion in string values.
//!
//! Owns the expansion syntax: `${NAME}` is replaced by the value of the environment
//! variable `NAME` (`NAME` matches `[A-Za-z_][A-Za-z0-9_]*`), `$${` stands for a literal
//! `${`, and any other `$` is kept as it is. Expansion is a single pass: the value of a
//! variable is inserted verbatim and never expanded again, so a variable cannot smuggle
//! in further references. This module only reads variables through the lookup it is
//! given; it never touches the process environment itself and never panics on malformed
//! input, it reports it with the byte offset of the offending `$`.

/// The result of looking up one environment variable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Var {
    /// The variable is set to this value.
    Set(String),
    /// The variable is not set.
    Unset,
    /// The variable is set but its value is not valid UTF-8.
    NotUnicode,
}

/// Why a value could not be expanded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ExpandError {
    /// `${NAME}` with `NAME` not set.
    Unset(String),
    /// `${NAME}` with a value that is not UTF-8.
    NotUnicode(String),
    /// `${` without a closing `}`.
    Unterminated,
    /// `${...}` whose content is not a valid variable name.
    BadName(String),
}

impl ExpandError {
    /// A message for the configuration error.
    pub(crate) fn message(&self) -> String {
        match self {
            ExpandError::Unset(name) => format!("environment variable `{name}` is not set"),
            ExpandError::NotUnicode(name) => {
                format!("environment variable `{name}` is not valid UTF-8")
            }
            ExpandError::Unterminated => {
                "`${` without a closing `}` (write `$${` for a literal `${`)".to_string()
            }
            ExpandError::BadName(name) => format!(
                "`${{{name}}}`: not a valid variable name (expected letters, digits and `_`, \
                 not starting with a digit)"
            ),
        }
    }
}

/// Expands `input`, returning the new string or the byte offset (into `input`) of the
/// `$` that starts the faulty reference.
pub(crate) fn expand(
    input: &str,
    lookup: &dyn Fn(&str) -> Var,
) -> Result<String, (usize, ExpandError)> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let offset = input.len() - rest.len() + dollar;
        let after = &rest[dollar..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let Some(close) = tail.find('}') else {
                return Err((offset, ExpandError::Unterminated));
            };
            let name = &tail[..close];
            if !is_var_name(name) {
                return Err((offset, ExpandError::BadName(name.to_string())));
            }
            match lookup(name) {
                Var::Set(value) => out.push_str(&value),
                Var::Unset => return Err((offset, ExpandError::Unset(name.to_string()))),
                Var::NotUnicode => {
                    return Err((offset, ExpandError::NotUnicode(name.to_string())));
                }
            }
            rest = &tail[close + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Whether `name` is a valid variable name: `[A-Za-z_][A-Za-z0-9_]*`.
fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Looks a variable up in the process environment.
pub(crate) fn process_env(name: &str) -> Var {
    match std::env::var(name) {
        Ok(value) => Var::Set(value),
        Err(std::env::VarError::NotPresent) => Var::Unset,
        Err(std::env::VarError::NotUnicode(_)) => Var::NotUnicode,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Var {
        match name {
            "HOME" => Var::Set("/home/ann".into()),
            "EMPTY" => Var::Set(String::new()),
            "TRICKY" => Var::Set("${HOME}".into()),
            "BINARY" => Var::NotUnicode,
            _ => Var::Unset,
        }
    }

    #[test]
    fn plain_text_is_unchanged() {
        assert_eq!(expand("abc", &env).unwrap(), "abc");
        assert_eq!(expand("", &env).unwrap(), "");
        assert_eq!(expand("$", &env).unwrap(), "$");
        assert_eq!(expand("a$b$$c{", &env).unwrap(), "a$b$$c{");
        assert_eq!(expand("{HOME}", &env).unwrap(), "{HOME}");
    }

    #[test]
    fn variables_are_replaced() {
        assert_eq!(expand("${HOME}/x", &env).unwrap(), "/home/ann/x");
        assert_eq!(expand("a${EMPTY}b", &env).unwrap(), "ab");
        assert_eq!(
            expand("${HOME}${HOME}", &env).unwrap(),
            "/home/ann/home/ann"
        );
        assert_eq!(expand("ç${HOME}", &env).unwrap(), "ç/home/ann");
    }

    #[test]
    fn values_are_not_expanded_again() {
        assert_eq!(expand("${TRICKY}", &env).unwrap(), "${HOME}");
    }

    #[test]
    fn double_dollar_escapes() {
        assert_eq!(expand("$${HOME}", &env).unwrap(), "${HOME}");
        // Scanning is left to right: a `$` is literal, then `$${` is the escape.
        assert_eq!(expand("$$${HOME}", &env).unwrap(), "$${HOME}");
        assert_eq!(expand("$${", &env).unwrap(), "${");
    }

    #[test]
    fn errors_carry_the_offset_of_the_dollar() {
        assert_eq!(
            expand("ab${NOPE}", &env),
            Err((2, ExpandError::Unset("NOPE".into())))
        );
        assert_eq!(expand("x${HOME", &env), Err((1, ExpandError::Unterminated)));
        assert_eq!(
            expand("${}", &env),
            Err((0, ExpandError::BadName(String::new())))
        );
        assert_eq!(
            expand("${1A}", &env),
            Err((0, ExpandError::BadName("1A".into())))
        );
        assert_eq!(
            expand("${A-B}", &env),
            Err((0, ExpandError::BadName("A-B".into())))
        );
        assert_eq!(
            expand("${BINARY}", &env),
            Err((0, ExpandError::NotUnicode("BINARY".into())))
        );
    }
}
