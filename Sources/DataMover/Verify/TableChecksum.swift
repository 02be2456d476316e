import LibPQ

/// A table's row count and content checksum, both computed by PostgreSQL.
///
/// The checksum is the sum (as an exact numeric, so it never overflows) of a 64-bit hash of
/// every row's text form: order-independent, so neither side sorts, and every column
/// (generated ones included) counts. The row is referred to as `(r.*)`, which means the whole
/// row even when the table has a column named `r`. Row text depends on session settings
/// (dates, floats, money); both sides run with ``DataSessions/settings``.
public struct TableChecksum: Sendable, Hashable, CustomStringConvertible {
    public var rows: Int64
    public var sum: String

    public var description: String { "\(rows) rows, checksum \(sum)" }

    static func query(_ schema: String, _ table: String) -> String {
        "SELECT count(*), coalesce(sum(hashtextextended((r.*)::text, 0)), 0) FROM ONLY \(qualified(schema, table)) AS r"
    }

    /// Computes the checksum of `schema.table` on `connection`. Blocks.
    static func compute(_ schema: String, _ table: String, on connection: PQConnection) throws -> TableChecksum {
        let row = try connection.execute(query(schema, table)).first
        guard let row, row.count == 2, let rows = row[0].flatMap({ Int64($0) }), let sum = row[1] else {
            throw PQError("the checksum of \(table) returned no row")
        }
        return TableChecksum(rows: rows, sum: sum)
    }
}
