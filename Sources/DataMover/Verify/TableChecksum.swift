import LibPQ

/// A table's row count and content checksum, both computed by PostgreSQL.
///
/// The checksum is the sum (as an exact numeric, so it never overflows) of a 64-bit hash of
/// every row: order-independent, so neither side sorts, and every column (generated ones
/// included) counts. A row's hash combines, for the columns whose type has a default hash
/// operator class, `hash_record_extended` of those columns (each hashed by its type's own
/// hash function, with no text conversion: the cheap part), and for the other columns (arrays,
/// enums, domains, json, money, …) a hash of their text. Both sides use the same expression,
/// built from the source's catalog. Between servers of different major versions (whose hash
/// functions may differ) the whole row's text is hashed instead.
///
/// Text depends on session settings (dates, floats, money); both sides run with
/// ``DataSessions/settings``.
public struct TableChecksum: Sendable, Hashable, CustomStringConvertible {
    public var rows: Int64
    public var sum: String

    public var description: String { "\(rows) rows, checksum \(sum)" }

    /// The per-row hash expression of `schema.table` (the row aliased `r`), read from the
    /// catalog on `source`. Blocks.
    static func rowHash(_ schema: String, _ table: String, on source: PQConnection, typeHashes: Bool) throws -> String {
        // `(r.*)` is the whole row even when the table has a column named `r`.
        guard typeHashes else { return "hashtextextended((r.*)::text, 0)" }
        let columns = try source.execute("""
            SELECT quote_ident(a.attname),
                   EXISTS (SELECT 1 FROM pg_opclass o JOIN pg_am m ON m.oid = o.opcmethod
                            WHERE m.amname = 'hash' AND o.opcdefault AND o.opcintype = a.atttypid)
                   AND (a.attcollation = 0 OR coalesce((SELECT c.collisdeterministic FROM pg_collation c WHERE c.oid = a.attcollation), false))
              FROM pg_attribute a
             WHERE a.attrelid = \(quoteLiteral(quoteQualified(schema, table)))::regclass AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum
            """)
        // Enums hash their OIDs, which differ between databases: they have no default hash
        // opclass of their own (enum_ops is for anyenum), so they land with the text columns,
        // as do domains, arrays and types without a hash function. A nondeterministic
        // collation hashes equal strings that differ: such columns are hashed as text too.
        let hashed = columns.filter { $0[1] == "t" }.compactMap { $0[0] }.map { "r." + $0 }
        let texted = columns.filter { $0[1] != "t" }.compactMap { $0[0] }.map { "r." + $0 }
        var parts: [String] = []
        if !hashed.isEmpty { parts.append("hash_record_extended(ROW(\(hashed.joined(separator: ", "))), 0)") }
        if !texted.isEmpty { parts.append("hashtextextended(ROW(\(texted.joined(separator: ", ")))::text, 1)") }
        return parts.isEmpty ? "0::bigint" : parts.joined(separator: " # ")
    }

    static func query(_ schema: String, _ table: String, rowHash: String) -> String {
        "SELECT count(*), coalesce(sum(\(rowHash)), 0) FROM ONLY \(quoteQualified(schema, table)) AS r"
    }

    /// Computes the checksum of `schema.table` on `connection`. Blocks.
    static func compute(_ schema: String, _ table: String, rowHash: String, on connection: PQConnection) throws -> TableChecksum {
        let row = try connection.execute(query(schema, table, rowHash: rowHash)).first
        guard let row, row.count == 2, let rows = row[0].flatMap({ Int64($0) }), let sum = row[1] else {
            throw PQError("the checksum of \(table) returned no row")
        }
        return TableChecksum(rows: rows, sum: sum)
    }
}
