import Foundation

/// A tenant's schema as read from the source's catalog: what the data mover copies, and the
/// statements that recreate it under another name.
///
/// Read by ``SchemaReader/read(tenant:on:logger:)``. ``unsupported`` names every object
/// Ferry cannot copy; a kind refuses such a tenant in its plan step.
public struct TenantSchema: Sendable {
    /// The source schema's name.
    public var tenant: String
    /// Every table, in the order they are created.
    public var tables: [TableDefinition]
    /// Objects in the tenant Ferry cannot copy, each named for a person, e.g.
    /// `function t1.f(integer)` or `trigger audit on table t1.orders`. Empty when the whole
    /// tenant is supported.
    public var unsupported: [String]

    /// The rest of what was read, for ``statements(into:)``; empty for a schema built with
    /// the public initializer.
    var catalog: SchemaCatalog

    public init(tenant: String, tables: [TableDefinition], unsupported: [String]) {
        self.init(tenant: tenant, tables: tables, unsupported: unsupported, catalog: SchemaCatalog())
    }

    init(tenant: String, tables: [TableDefinition], unsupported: [String], catalog: SchemaCatalog) {
        self.tenant = tenant
        self.tables = tables
        self.unsupported = unsupported
        self.catalog = catalog
    }

    public func table(_ name: String) -> TableDefinition? { tables.first { $0.name == name } }
}

/// One table of a tenant, as the copy engine needs it.
public struct TableDefinition: Sendable, Hashable, Codable {
    /// The table's name (unquoted).
    public var name: String
    /// The columns COPY moves, in attribute order, unquoted: every column except generated
    /// ones (PostgreSQL computes those on the target).
    public var copyColumns: [String]
    /// False when a column's binary COPY form embeds a type OID that differs between
    /// databases (an array of an enum or a domain, for one): such a table copies in text.
    public var binarySafe: Bool
    /// Size of the table's main fork in bytes at read time (sizing and splitting).
    public var bytes: Int64
    /// Number of blocks in the main fork at read time (ctid ranges of a split table).
    public var blocks: Int64

    public init(name: String, copyColumns: [String], binarySafe: Bool, bytes: Int64, blocks: Int64) {
        self.name = name
        self.copyColumns = copyColumns
        self.binarySafe = binarySafe
        self.bytes = bytes
        self.blocks = blocks
    }
}

/// The statements that recreate a tenant as the target schema, in the phases the clone runs
/// them. Every statement is meant to run with `search_path` set to the target schema alone
/// (expressions, defaults and view bodies name the tenant's own objects unqualified); names
/// the builder writes itself are qualified with the target schema anyway.
public struct SchemaStatements: Sendable {
    /// Before any table: `CREATE SCHEMA`, enum types, domains, and sequences (options only;
    /// their values and `OWNED BY` come in ``postData``).
    public var prelude: [String]
    /// Per table: the statements that create it alone, with its columns, types, collations,
    /// defaults, NOT NULL, identity and generated columns, and CHECK constraints; no index,
    /// primary key, unique or foreign key. A rerun drops a table it must redo and runs these
    /// again.
    public var createTable: [String: [String]]
    /// Per table, run once its data is in: every index (the ones behind primary keys and
    /// unique constraints as plain `CREATE UNIQUE INDEX`), then `ALTER TABLE … ADD
    /// CONSTRAINT … PRIMARY KEY / UNIQUE USING INDEX …`.
    public var indexes: [String: [String]]
    /// Foreign keys, each added `NOT VALID` (checked at once for new rows only).
    public var foreignKeys: [String]
    /// `ALTER TABLE … VALIDATE CONSTRAINT …` for every foreign key (and CHECK constraint the
    /// source holds as validated), run last.
    public var validations: [String]
    /// After every table: sequence values (`setval` with `last_value` and `is_called`, for
    /// identity sequences too) and ownership (`OWNED BY`), views in dependency order, and
    /// comments on every object.
    public var postData: [String]

    public init(prelude: [String], createTable: [String: [String]], indexes: [String: [String]], foreignKeys: [String],
                validations: [String], postData: [String]) {
        self.prelude = prelude
        self.createTable = createTable
        self.indexes = indexes
        self.foreignKeys = foreignKeys
        self.validations = validations
        self.postData = postData
    }
}
