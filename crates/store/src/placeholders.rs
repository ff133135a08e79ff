//! How a database's driver takes the numbered parameters (`$1`) of the store's statements: the
//! same SQL text serves both databases, and SQLite's is rewritten for the fastest binding.

use std::borrow::Cow;

/// How a database's driver takes the numbered parameters (`$1`) the store's statements use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placeholders {
    /// As written (PostgreSQL).
    Dollar,
    /// SQLite finds a named parameter (`$1`, `?1`) by a linear search of the statement's
    /// names, and binding asks each parameter's name, so a statement's binding costs the
    /// square of its parameters: a 200-row insert of 17 columns took a third of the server's
    /// CPU under a batched load. Each `$n` becomes an anonymous `?` (no names to search) when
    /// they appear once each, in order; otherwise `?n` (bound by number).
    Sqlite,
}

impl Placeholders {
    /// `sql` as this database's driver binds it fastest.
    pub(crate) fn statement<'a>(&self, sql: &'a str) -> Cow<'a, str> {
        match self {
            Placeholders::Dollar => Cow::Borrowed(sql),
            Placeholders::Sqlite => sqlite_statement(sql),
        }
    }
}

/// The `$n` parameters of `sql` outside string literals: (byte offset, length, n).
fn dollar_parameters(sql: &str) -> Vec<(usize, usize, usize)> {
    let bytes = sql.as_bytes();
    let mut found = Vec::new();
    let (mut i, mut quoted) = (0, false);
    while i < bytes.len() {
        match bytes[i] {
            b'\'' => quoted = !quoted,
            b'$' if !quoted => {
                let digits = bytes[i + 1..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                if let Ok(n) = sql[i + 1..i + 1 + digits].parse::<usize>() {
                    found.push((i, digits + 1, n));
                    i += digits;
                }
            }
            _ => {}
        }
        i += 1;
    }
    found
}

/// `sql` with SQLite's placeholders (see [`Placeholders::Sqlite`]).
pub(crate) fn sqlite_statement(sql: &str) -> Cow<'_, str> {
    let found = dollar_parameters(sql);
    if found.is_empty() {
        return Cow::Borrowed(sql);
    }
    let in_order = found.iter().enumerate().all(|(k, &(.., n))| n == k + 1);
    let mut out = String::with_capacity(sql.len());
    let mut at = 0;
    for (start, len, n) in found {
        out.push_str(&sql[at..start]);
        out.push('?');
        if !in_order {
            out.push_str(&n.to_string());
        }
        at = start + len;
    }
    out.push_str(&sql[at..]);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::sqlite_statement;

    #[test]
    fn sqlite_placeholders_are_anonymous_in_order_and_numbered_otherwise() {
        assert_eq!(
            sqlite_statement("INSERT INTO t VALUES ($1, $2), ($3, $4)"),
            "INSERT INTO t VALUES (?, ?), (?, ?)"
        );
        assert_eq!(
            sqlite_statement("UPDATE t SET a = $2, b = $1 WHERE c = $2"),
            "UPDATE t SET a = ?2, b = ?1 WHERE c = ?2"
        );
        // Literals are left alone, whatever they hold; `$` without digits is not a parameter.
        assert_eq!(
            sqlite_statement("SELECT json_extract(r, '$.a'), '$1', x$ FROM t WHERE id = $1"),
            "SELECT json_extract(r, '$.a'), '$1', x$ FROM t WHERE id = ?"
        );
        assert_eq!(
            sqlite_statement("SELECT 'it''s $1' WHERE a = $10 AND b = $9"),
            "SELECT 'it''s $1' WHERE a = ?10 AND b = ?9"
        );
        assert_eq!(sqlite_statement("SELECT 1"), "SELECT 1");
    }
}
