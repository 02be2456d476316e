/// Quotes `name` as an SQL identifier: the same identifier PostgreSQL's `quote_ident` names.
///
/// It always adds the double quotes, where `quote_ident` leaves a lower-case non-keyword bare:
/// that needs no copy of the server's keyword list, and a keyword added by a later release
/// cannot turn a name into a syntax error.
func quoteIdent(_ name: String) -> String {
    "\"" + name.replacingOccurrences(of: "\"", with: "\"\"") + "\""
}

/// `schema.name`, both quoted.
func quoteQualified(_ schema: String, _ name: String) -> String {
    quoteIdent(schema) + "." + quoteIdent(name)
}

/// Quotes `value` as an SQL string literal the way PostgreSQL's `quote_literal` does: a value
/// with a backslash becomes an `E'…'` literal with the backslashes doubled, so the literal
/// reads the same whatever `standard_conforming_strings` says.
func quoteLiteral(_ value: String) -> String {
    let quoted = value.replacingOccurrences(of: "'", with: "''")
    guard value.contains("\\") else { return "'" + quoted + "'" }
    return "E'" + quoted.replacingOccurrences(of: "\\", with: "\\\\") + "'"
}
