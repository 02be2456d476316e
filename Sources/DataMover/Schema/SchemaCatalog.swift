/// What ``SchemaReader`` reads of a tenant's catalog beyond ``TableDefinition``: everything
/// ``TenantSchema/statements(into:)`` needs to recreate the supported objects. Codable: an
/// export archive's manifest carries it, and an import builds the target from it.
///
/// Expressions, types and view bodies are as the server deparsed them with `search_path` set
/// to the tenant alone, so the tenant's own objects appear unqualified and resolve in whatever
/// schema the statements run against. Names are unquoted.
struct SchemaCatalog: Sendable, Codable {
    var schemaComment: String?
    var enums: [EnumType] = []
    var domains: [DomainType] = []
    /// Every sequence of the tenant, identity sequences included, by name.
    var sequences: [SequenceDefinition] = []
    /// The supported tables, by name (the same order as ``TenantSchema/tables``).
    var tables: [TableModel] = []
    /// Foreign keys between the tenant's tables, by table and name.
    var foreignKeys: [ForeignKey] = []
    /// Views, each after every view it reads.
    var views: [ViewDefinition] = []
}

struct EnumType: Sendable, Codable {
    var name: String
    /// In `enumsortorder`.
    var labels: [String]
    var comment: String?
}

struct DomainType: Sendable, Codable {
    var name: String
    /// `format_type` of the base type with its modifier.
    var baseType: String
    /// A qualified, quoted collation when it differs from the base type's.
    var collation: String?
    var defaultExpression: String?
    var notNull: Bool
    var checks: [CheckConstraint]
    var comment: String?
}

/// A CHECK constraint of a table or domain.
struct CheckConstraint: Sendable, Codable {
    var name: String
    /// `pg_get_constraintdef`, e.g. `CHECK ((a > 0))`; it ends in ` NOT VALID` when the source
    /// holds the constraint unvalidated.
    var definition: String
    var validated: Bool
    var comment: String?
}

struct SequenceDefinition: Sendable, Codable {
    var name: String
    var unlogged: Bool
    /// `format_type` of `seqtypid`.
    var type: String
    var increment: Int64
    var minValue: Int64
    var maxValue: Int64
    var start: Int64
    var cache: Int64
    var cycle: Bool
    var lastValue: Int64
    var isCalled: Bool
    /// The column an identity sequence belongs to, or the column a sequence is `OWNED BY`.
    var owner: ColumnReference?
    /// True for a column's identity sequence, which the column creates itself.
    var identity: Bool
    var comment: String?
}

struct TableModel: Sendable, Codable {
    var name: String
    var unlogged: Bool
    /// `pg_class.reloptions` entries, `key=value`.
    var options: [String]
    /// `pg_class.relreplident`: `d` default, `n` nothing, `f` full, `i` an index.
    var replicaIdentity: String
    var columns: [ColumnModel]
    /// By name.
    var checks: [CheckConstraint]
    /// By name.
    var indexes: [IndexModel]
    var comment: String?
}

struct ColumnModel: Sendable, Codable {
    var name: String
    /// `format_type` with the modifier.
    var type: String
    var collation: String?
    var notNull: Bool
    /// `a` (ALWAYS) or `d` (BY DEFAULT) for an identity column, else empty.
    var identity: String
    /// The generation expression of a stored generated column.
    var generated: String?
    var defaultExpression: String?
    var comment: String?
}

struct IndexModel: Sendable, Codable {
    var name: String
    /// `pg_get_indexdef`, which names the source schema: ``prefix`` is its exact start.
    var definition: String
    /// `CREATE [UNIQUE] INDEX <index> ON <schema>.<table> USING `, quoted as the server quotes.
    var prefix: String
    var unique: Bool
    /// The primary key or unique constraint the index backs.
    var constraint: IndexConstraint?
    var clustered: Bool
    var replicaIdentity: Bool
    var comment: String?
}

struct IndexConstraint: Sendable, Codable {
    var name: String
    var primaryKey: Bool
    var deferrable: Bool
    var initiallyDeferred: Bool
    var comment: String?
}

struct ForeignKey: Sendable, Codable {
    var table: String
    var name: String
    /// `pg_get_constraintdef`: `FOREIGN KEY (…) REFERENCES …`, ending in ` NOT VALID` when the
    /// source holds it unvalidated.
    var definition: String
    var validated: Bool
    var comment: String?
}

struct ViewDefinition: Sendable, Codable {
    var name: String
    /// `pg_get_viewdef` without its final semicolon.
    var query: String
    var options: [String]
    var comment: String?
    /// Comments on the view's columns, in column order.
    var columnComments: [ColumnComment]
}

/// A column of one of the tenant's tables.
struct ColumnReference: Sendable, Codable {
    var table: String
    var column: String
}

/// A comment on a view's column.
struct ColumnComment: Sendable, Codable {
    var column: String
    var comment: String
}
