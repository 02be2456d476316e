import ControlDatabase
import Logging
import PostgresNIO

/// Reads a tenant's schema from the source's catalog.
public enum SchemaReader {
    /// Why a tenant's schema could not be read.
    public enum ReadError: Error, CustomStringConvertible {
        case noSuchTenant(String)
        /// A query the reader needs came back in a shape it does not expect.
        case unexpected(String)

        public var description: String {
            switch self {
            case .noSuchTenant(let tenant): "tenant \(quoteIdent(tenant)) does not exist"
            case .unexpected(let what): "unexpected catalog contents: \(what)"
            }
        }
    }

    /// Reads the tenant `tenant` (a schema) with everything needed to recreate it, and names
    /// what Ferry refuses to copy in ``TenantSchema/unsupported``.
    ///
    /// Must run inside an open transaction (the caller's snapshot): it sets `search_path` to
    /// the tenant alone for the transaction, so the server deparses the tenant's own objects
    /// unqualified, and puts the previous value back before returning. It writes nothing.
    public static func read(tenant: String, on connection: PostgresConnection, logger: Logger) async throws -> TenantSchema {
        let header = try await connection.execute("""
            SELECT n.oid::int8, obj_description(n.oid, 'pg_namespace'), current_setting('search_path'),
                   current_setting('block_size')::int8
            FROM pg_namespace n WHERE n.nspname = \(tenant)
            """, logger: logger)
        guard let row = header.first else { throw ReadError.noSuchTenant(tenant) }
        let (namespace, comment, searchPath, blockSize) = try row.decode((Int64, String?, String, Int64).self)

        try await connection.execute("SELECT set_config('search_path', quote_ident(\(tenant)), true)", logger: logger)
        let schema: TenantSchema
        do {
            let reader = CatalogReader(connection: connection, logger: logger, tenant: tenant, namespace: namespace, blockSize: blockSize)
            schema = try await reader.read(schemaComment: comment)
        } catch {
            _ = try? await connection.execute("SELECT set_config('search_path', \(searchPath), true)", logger: logger)
            throw error
        }
        try await connection.execute("SELECT set_config('search_path', \(searchPath), true)", logger: logger)
        return schema
    }
}

/// The catalog queries of one read. The namespace's OID is written into the SQL (an integer
/// read from the server); nothing else is.
private struct CatalogReader {
    let connection: PostgresConnection
    let logger: Logger
    let tenant: String
    let namespace: Int64
    let blockSize: Int64

    /// Whether the relation `alias` is a table Ferry copies: a plain table of the tenant, not
    /// a partition, not in an inheritance tree, not typed, not an extension's.
    private func supportedTable(_ alias: String) -> String {
        """
        (\(alias).relnamespace = \(namespace) AND \(alias).relkind = 'r' AND NOT \(alias).relispartition \
        AND \(alias).reloftype = 0 \
        AND NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = \(alias).oid OR h.inhparent = \(alias).oid) \
        AND \(notExtensionMember("'pg_class'::regclass", "\(alias).oid")))
        """
    }

    /// Whether the object `oid` of the catalog `classid` (SQL expressions) belongs to no
    /// extension.
    private func notExtensionMember(_ classid: String, _ oid: String) -> String {
        "NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = \(classid) AND e.objid = \(oid) AND e.deptype = 'e')"
    }

    private func rows(_ sql: String) async throws -> [PostgresRow] {
        try await connection.execute(PostgresQuery(unsafeSQL: sql), logger: logger)
    }

    func read(schemaComment: String?) async throws -> TenantSchema {
        var catalog = SchemaCatalog(schemaComment: schemaComment)
        catalog.enums = try await enums()
        catalog.domains = try await domains()
        let (tables, definitions) = try await tables()
        catalog.tables = tables
        catalog.sequences = try await sequences(tables: Set(tables.map(\.name)))
        catalog.foreignKeys = try await foreignKeys()
        catalog.views = try await views()
        return TenantSchema(tenant: tenant, tables: definitions, unsupported: try await unsupported() + Self.equivalentNames(catalog), catalog: catalog)
    }

    private func enums() async throws -> [EnumType] {
        try await rows("""
            SELECT t.typname::text,
                   array(SELECT e.enumlabel::text FROM pg_enum e WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder),
                   obj_description(t.oid, 'pg_type')
            FROM pg_type t
            WHERE t.typnamespace = \(namespace) AND t.typtype = 'e' AND \(notExtensionMember("'pg_type'::regclass", "t.oid"))
            ORDER BY t.typname
            """).map { row in
            let (name, labels, comment) = try row.decode((String, [String], String?).self)
            return EnumType(name: name, labels: labels, comment: comment)
        }
    }

    private func domains() async throws -> [DomainType] {
        var checks: [Int64: [CheckConstraint]] = [:]
        for row in try await rows("""
            SELECT k.contypid::int8, k.conname::text, pg_get_constraintdef(k.oid), k.convalidated,
                   obj_description(k.oid, 'pg_constraint')
            FROM pg_constraint k JOIN pg_type t ON t.oid = k.contypid
            WHERE t.typnamespace = \(namespace) AND k.contype = 'c'
            ORDER BY k.contypid, k.conname
            """) {
            let (domain, name, definition, validated, comment) = try row.decode((Int64, String, String, Bool, String?).self)
            checks[domain, default: []].append(CheckConstraint(name: name, definition: definition, validated: validated, comment: comment))
        }
        // Only domains over pg_catalog types: a domain over one of the tenant's types (or
        // another schema's) is refused.
        return try await rows("""
            SELECT t.oid::int8, t.typname::text, format_type(t.typbasetype, t.typtypmod),
                   CASE WHEN t.typcollation <> 0 AND t.typcollation <> b.typcollation
                        THEN quote_ident(cn.nspname) || '.' || quote_ident(co.collname) END,
                   pg_get_expr(t.typdefaultbin, 0), t.typnotnull, obj_description(t.oid, 'pg_type')
            FROM pg_type t
            JOIN pg_type b ON b.oid = t.typbasetype
            LEFT JOIN pg_collation co ON co.oid = t.typcollation
            LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
            WHERE t.typnamespace = \(namespace) AND t.typtype = 'd' AND b.typnamespace = 'pg_catalog'::regnamespace
              AND \(notExtensionMember("'pg_type'::regclass", "t.oid"))
            ORDER BY t.typname
            """).map { row in
            let (oid, name, base, collation, defaultExpression, notNull, comment) =
                try row.decode((Int64, String, String, String?, String?, Bool, String?).self)
            return DomainType(name: name, baseType: base, collation: collation, defaultExpression: defaultExpression,
                              notNull: notNull, checks: checks[oid] ?? [], comment: comment)
        }
    }

    private func tables() async throws -> ([TableModel], [TableDefinition]) {
        var columns: [Int64: [ColumnModel]] = [:]
        var copyColumns: [Int64: [String]] = [:]
        var binaryUnsafe: Set<Int64> = []
        // A column's binary COPY form embeds a type OID for an array (its element type) and
        // for a composite (each field's type): only pg_catalog's OIDs are the same in every
        // database.
        for row in try await rows("""
            SELECT a.attrelid::int8, a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                   a.attidentity::text, a.attgenerated::text, pg_get_expr(d.adbin, d.adrelid),
                   CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation
                        THEN quote_ident(cn.nspname) || '.' || quote_ident(co.collname) END,
                   col_description(a.attrelid, a.attnum),
                   (t.typtype = 'c' OR el.typtype = 'c' OR el.typnamespace <> 'pg_catalog'::regnamespace) IS TRUE
            FROM pg_attribute a
            JOIN pg_class c ON c.oid = a.attrelid
            JOIN pg_type t ON t.oid = a.atttypid
            LEFT JOIN pg_type el ON t.typsubscript = 'array_subscript_handler'::regproc AND el.oid = t.typelem
            LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
            LEFT JOIN pg_collation co ON co.oid = a.attcollation
            LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
            WHERE \(supportedTable("c")) AND a.attnum > 0 AND NOT a.attisdropped
            ORDER BY a.attrelid, a.attnum
            """) {
            let (table, name, type, notNull, identity, generated, expression, collation, comment, unsafe) =
                try row.decode((Int64, String, String, Bool, String, String, String?, String?, String?, Bool).self)
            let isGenerated = generated == "s"
            columns[table, default: []].append(ColumnModel(
                name: name, type: type, collation: collation, notNull: notNull, identity: identity,
                generated: isGenerated ? expression : nil, defaultExpression: isGenerated ? nil : expression, comment: comment))
            if !isGenerated {
                copyColumns[table, default: []].append(name)
                if unsafe { binaryUnsafe.insert(table) }
            }
        }

        var checks: [Int64: [CheckConstraint]] = [:]
        for row in try await rows("""
            SELECT k.conrelid::int8, k.conname::text, pg_get_constraintdef(k.oid), k.convalidated,
                   obj_description(k.oid, 'pg_constraint')
            FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
            WHERE \(supportedTable("c")) AND k.contype = 'c'
            ORDER BY k.conrelid, k.conname
            """) {
            let (table, name, definition, validated, comment) = try row.decode((Int64, String, String, Bool, String?).self)
            checks[table, default: []].append(CheckConstraint(name: name, definition: definition, validated: validated, comment: comment))
        }

        var indexes: [Int64: [IndexModel]] = [:]
        // pg_get_indexdef names the table qualified whatever search_path says; the prefix it
        // starts with is rebuilt here, quoted by the server as pg_get_indexdef quotes, so the
        // builder can swap exactly that prefix. Indexes of exclusion constraints are refused
        // with their constraint; invalid ones (a failed concurrent build) are not copied.
        for row in try await rows("""
            SELECT i.indrelid::int8, ic.relname::text, pg_get_indexdef(i.indexrelid), i.indisunique,
                   'CREATE ' || CASE WHEN i.indisunique THEN 'UNIQUE ' ELSE '' END || 'INDEX '
                       || quote_ident(ic.relname) || ' ON ' || quote_ident(n.nspname) || '.' || quote_ident(c.relname)
                       || ' USING ',
                   k.conname::text, k.contype = 'p', k.condeferrable, k.condeferred, obj_description(k.oid, 'pg_constraint'),
                   i.indisclustered, i.indisreplident, obj_description(i.indexrelid, 'pg_class')
            FROM pg_index i
            JOIN pg_class ic ON ic.oid = i.indexrelid
            JOIN pg_class c ON c.oid = i.indrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace
            LEFT JOIN pg_constraint k ON k.conindid = i.indexrelid AND k.conrelid = c.oid AND k.contype IN ('p', 'u', 'x')
            WHERE \(supportedTable("c")) AND i.indisvalid AND k.contype IS DISTINCT FROM 'x'
            ORDER BY i.indrelid, ic.relname
            """) {
            let (table, name, definition, unique, prefix, constraintName, primaryKey, deferrable, deferred, constraintComment,
                 clustered, replicaIdentity, comment) =
                try row.decode((Int64, String, String, Bool, String, String?, Bool?, Bool?, Bool?, String?, Bool, Bool, String?).self)
            // Compared as bytes: the builder cuts exactly this many bytes off.
            guard definition.utf8.starts(with: prefix.utf8) else {
                throw SchemaReader.ReadError.unexpected("the definition of index \(quoteQualified(tenant, name)) does not start with "
                    + "\"\(prefix)\": \(definition)")
            }
            let constraint = constraintName.map {
                IndexConstraint(name: $0, primaryKey: primaryKey ?? false, deferrable: deferrable ?? false,
                                initiallyDeferred: deferred ?? false, comment: constraintComment)
            }
            indexes[table, default: []].append(IndexModel(
                name: name, definition: definition, prefix: prefix, unique: unique, constraint: constraint,
                clustered: clustered, replicaIdentity: replicaIdentity, comment: comment))
        }

        var models: [TableModel] = []
        var definitions: [TableDefinition] = []
        for row in try await rows("""
            SELECT c.oid::int8, c.relname::text, c.relpersistence = 'u', coalesce(c.reloptions, '{}')::text[],
                   c.relreplident::text, pg_relation_size(c.oid, 'main'), obj_description(c.oid, 'pg_class')
            FROM pg_class c
            WHERE \(supportedTable("c"))
            ORDER BY c.relname
            """) {
            let (oid, name, unlogged, options, replicaIdentity, bytes, comment) =
                try row.decode((Int64, String, Bool, [String], String, Int64, String?).self)
            models.append(TableModel(
                name: name, unlogged: unlogged, options: options, replicaIdentity: replicaIdentity,
                columns: columns[oid] ?? [], checks: checks[oid] ?? [], indexes: indexes[oid] ?? [], comment: comment))
            definitions.append(TableDefinition(
                name: name, copyColumns: copyColumns[oid] ?? [], binarySafe: !binaryUnsafe.contains(oid),
                bytes: bytes, blocks: bytes / blockSize))
        }
        return (models, definitions)
    }

    /// Every sequence with its options and current value. An identity sequence of a table
    /// Ferry does not copy is left out (it goes with its table).
    private func sequences(tables: Set<String>) async throws -> [SequenceDefinition] {
        var sequences: [SequenceDefinition] = []
        for row in try await rows("""
            SELECT c.relname::text, c.relpersistence = 'u', format_type(s.seqtypid, NULL), s.seqincrement, s.seqmin,
                   s.seqmax, s.seqstart, s.seqcache, s.seqcycle, o.relname::text, o.attname::text,
                   EXISTS (SELECT 1 FROM pg_depend i WHERE i.classid = 'pg_class'::regclass AND i.objid = c.oid
                           AND i.deptype = 'i'),
                   obj_description(c.oid, 'pg_class')
            FROM pg_class c
            JOIN pg_sequence s ON s.seqrelid = c.oid
            LEFT JOIN LATERAL (
                SELECT t.relname, a.attname FROM pg_depend d
                JOIN pg_class t ON t.oid = d.refobjid
                JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
                WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.refclassid = 'pg_class'::regclass
                  AND d.deptype IN ('a', 'i') AND t.relnamespace = \(namespace)
            ) o ON true
            WHERE c.relnamespace = \(namespace) AND c.relkind = 'S' AND \(notExtensionMember("'pg_class'::regclass", "c.oid"))
            ORDER BY c.relname
            """) {
            let (name, unlogged, type, increment, minValue, maxValue, start, cache, cycle, ownerTable, ownerColumn,
                 identity, comment) =
                try row.decode((String, Bool, String, Int64, Int64, Int64, Int64, Int64, Bool, String?, String?, Bool, String?).self)
            var owner: ColumnReference?
            if let ownerTable, let ownerColumn, tables.contains(ownerTable) { owner = ColumnReference(table: ownerTable, column: ownerColumn) }
            if identity && owner == nil { continue }
            let state = try await rows("SELECT last_value, is_called FROM \(quoteQualified(tenant, name))")
            guard let (lastValue, isCalled) = try state.first?.decode((Int64, Bool).self) else {
                throw SchemaReader.ReadError.unexpected("sequence \(quoteQualified(tenant, name)) returned no row")
            }
            sequences.append(SequenceDefinition(
                name: name, unlogged: unlogged, type: type, increment: increment, minValue: minValue, maxValue: maxValue,
                start: start, cache: cache, cycle: cycle, lastValue: lastValue, isCalled: isCalled, owner: owner,
                identity: identity, comment: comment))
        }
        return sequences
    }

    /// Foreign keys between the tenant's tables; one to anywhere else is refused.
    private func foreignKeys() async throws -> [ForeignKey] {
        try await rows("""
            SELECT c.relname::text, k.conname::text, pg_get_constraintdef(k.oid), k.convalidated,
                   obj_description(k.oid, 'pg_constraint')
            FROM pg_constraint k
            JOIN pg_class c ON c.oid = k.conrelid
            JOIN pg_class r ON r.oid = k.confrelid
            WHERE \(supportedTable("c")) AND \(supportedTable("r")) AND k.contype = 'f'
            ORDER BY c.relname, k.conname
            """).map { row in
            let (table, name, definition, validated, comment) = try row.decode((String, String, String, Bool, String?).self)
            return ForeignKey(table: table, name: name, definition: definition, validated: validated, comment: comment)
        }
    }

    /// Views, ordered so that each comes after the views its query reads (its `_RETURN`
    /// rule's dependencies), by name otherwise.
    private func views() async throws -> [ViewDefinition] {
        var views: [Int64: ViewDefinition] = [:]
        var order: [Int64] = []
        var reads: [Int64: Set<Int64>] = [:]
        for row in try await rows("""
            SELECT c.oid::int8, c.relname::text, pg_get_viewdef(c.oid), coalesce(c.reloptions, '{}')::text[],
                   obj_description(c.oid, 'pg_class'),
                   array(SELECT a.attname::text FROM pg_attribute a
                         WHERE a.attrelid = c.oid AND a.attnum > 0 AND col_description(c.oid, a.attnum) IS NOT NULL
                         ORDER BY a.attnum),
                   array(SELECT col_description(c.oid, a.attnum) FROM pg_attribute a
                         WHERE a.attrelid = c.oid AND a.attnum > 0 AND col_description(c.oid, a.attnum) IS NOT NULL
                         ORDER BY a.attnum),
                   array(SELECT DISTINCT d.refobjid::int8 FROM pg_rewrite r
                         JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
                              AND d.refclassid = 'pg_class'::regclass
                         JOIN pg_class v ON v.oid = d.refobjid
                         WHERE r.ev_class = c.oid AND v.relkind = 'v' AND v.relnamespace = \(namespace) AND v.oid <> c.oid)
            FROM pg_class c
            WHERE c.relnamespace = \(namespace) AND c.relkind = 'v' AND \(notExtensionMember("'pg_class'::regclass", "c.oid"))
            ORDER BY c.relname
            """) {
            let (oid, name, definition, options, comment, commentedColumns, columnComments, dependencies) =
                try row.decode((Int64, String, String, [String], String?, [String], [String], [Int64]).self)
            var query = definition.trimmingCharacters(in: .whitespacesAndNewlines)
            if query.hasSuffix(";") { query.removeLast() }
            views[oid] = ViewDefinition(name: name, query: query, options: options, comment: comment,
                                        columnComments: zip(commentedColumns, columnComments).map { ColumnComment(column: $0, comment: $1) })
            order.append(oid)
            reads[oid] = Set(dependencies)
        }
        var sorted: [ViewDefinition] = []
        var done: Set<Int64> = []
        while done.count < order.count {
            guard let next = order.first(where: { !done.contains($0) && reads[$0, default: []].isSubset(of: done) }) else {
                throw SchemaReader.ReadError.unexpected("views of \(quoteIdent(tenant)) depend on each other in a cycle")
            }
            done.insert(next)
            sorted.append(views[next]!)
        }
        return sorted
    }

    /// Everything in the tenant Ferry does not copy, each named for a person, sorted.
    /// Objects whose names differ in bytes but are one name to Swift (Unicode canonical
    /// equivalence, e.g. a precomposed `é` and `e` + a combining accent): PostgreSQL keeps
    /// them apart, but the copy engine keys its work by name and would merge them. Refused.
    static func equivalentNames(_ catalog: SchemaCatalog) -> [String] {
        let names = catalog.tables.map(\.name) + catalog.sequences.map(\.name) + catalog.views.map(\.name)
            + catalog.enums.map(\.name) + catalog.domains.map(\.name)
        return Dictionary(grouping: names, by: { $0 }).values
            .filter { group in Set(group.map { Array($0.utf8) }).count > 1 }
            .map { group in "objects " + group.map { "\"\($0)\" (UTF-8 \(Array($0.utf8).map { String(format: "%02x", $0) }.joined()))" }
                .joined(separator: " and ") + " have names that differ only in Unicode normalization" }
            .sorted()
    }

    private func unsupported() async throws -> [String] {
        let pgCatalog = "'pg_catalog'::regnamespace"
        let qualifiedRelation = "quote_ident(n.nspname) || '.' || quote_ident(c.relname)"
        let relationWord = "CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'f' THEN 'foreign table' ELSE 'table' END"
        let sql = """
            WITH rel AS (
                SELECT c.*, \(qualifiedRelation) AS qname, \(relationWord) AS word
                FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE c.relnamespace = \(namespace)
            ),
            -- The tenant's objects whose dependencies on other schemas matter; a column's type
            -- is checked apart, and a foreign key's target too.
            own AS (
                SELECT 'pg_class'::regclass AS classid, c.oid AS objid FROM pg_class c WHERE c.relnamespace = \(namespace)
                UNION ALL
                SELECT 'pg_attrdef'::regclass, d.oid FROM pg_attrdef d JOIN pg_class c ON c.oid = d.adrelid
                WHERE c.relnamespace = \(namespace)
                UNION ALL
                SELECT 'pg_rewrite'::regclass, r.oid FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class
                WHERE c.relnamespace = \(namespace)
                UNION ALL
                SELECT 'pg_constraint'::regclass, k.oid FROM pg_constraint k
                WHERE k.connamespace = \(namespace) AND k.contype <> 'f'
                UNION ALL
                SELECT 'pg_type'::regclass, t.oid FROM pg_type t WHERE t.typnamespace = \(namespace) AND t.typtype = 'd'
            ),
            outside AS (
                SELECT DISTINCT o.classid, o.objid, d.refclassid, d.refobjid
                FROM own o JOIN pg_depend d ON d.classid = o.classid AND d.objid = o.objid
                WHERE d.deptype IN ('n', 'a')
                  AND NOT (d.refclassid = 'pg_type'::regclass AND d.classid IN ('pg_class'::regclass, 'pg_type'::regclass))
            ),
            -- Objects of the catalogs a tenant must not hold at all.
            other AS (
                SELECT 'pg_proc'::regclass AS classid, oid FROM pg_proc WHERE pronamespace = \(namespace)
                UNION ALL SELECT 'pg_operator'::regclass, oid FROM pg_operator WHERE oprnamespace = \(namespace)
                UNION ALL SELECT 'pg_opclass'::regclass, oid FROM pg_opclass WHERE opcnamespace = \(namespace)
                UNION ALL SELECT 'pg_opfamily'::regclass, oid FROM pg_opfamily WHERE opfnamespace = \(namespace)
                UNION ALL SELECT 'pg_collation'::regclass, oid FROM pg_collation WHERE collnamespace = \(namespace)
                UNION ALL SELECT 'pg_conversion'::regclass, oid FROM pg_conversion WHERE connamespace = \(namespace)
                UNION ALL SELECT 'pg_ts_config'::regclass, oid FROM pg_ts_config WHERE cfgnamespace = \(namespace)
                UNION ALL SELECT 'pg_ts_dict'::regclass, oid FROM pg_ts_dict WHERE dictnamespace = \(namespace)
                UNION ALL SELECT 'pg_ts_parser'::regclass, oid FROM pg_ts_parser WHERE prsnamespace = \(namespace)
                UNION ALL SELECT 'pg_ts_template'::regclass, oid FROM pg_ts_template WHERE tmplnamespace = \(namespace)
                UNION ALL SELECT 'pg_statistic_ext'::regclass, oid FROM pg_statistic_ext WHERE stxnamespace = \(namespace)
            )
            SELECT DISTINCT what FROM (
                SELECT 'extension ' || quote_ident(x.extname) AS what
                FROM pg_extension x
                WHERE x.extnamespace = \(namespace)
                   OR EXISTS (SELECT 1 FROM pg_depend d CROSS JOIN LATERAL pg_identify_object(d.classid, d.objid, 0) o
                              WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = x.oid AND d.deptype = 'e'
                                AND o.schema = (SELECT nspname FROM pg_namespace WHERE oid = \(namespace)))
                UNION ALL
                SELECT o.type || ' ' || o.identity
                FROM other x CROSS JOIN LATERAL pg_identify_object(x.classid, x.oid, 0) o
                WHERE \(notExtensionMember("x.classid", "x.oid"))
                  -- A range type's constructors are part of it, not objects of their own.
                  AND NOT EXISTS (SELECT 1 FROM pg_depend i WHERE i.classid = x.classid AND i.objid = x.oid AND i.deptype = 'i')
                UNION ALL
                SELECT CASE
                         WHEN t.typtype = 'r' THEN 'range type '
                         WHEN t.typtype = 'd' THEN 'domain '
                         WHEN t.typtype = 'b' THEN 'base type '
                         ELSE 'type '
                       END || quote_ident(n.nspname) || '.' || quote_ident(t.typname)
                       || CASE WHEN t.typtype = 'd' THEN ' over ' || format_type(t.typbasetype, t.typtypmod) ELSE '' END
                FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                LEFT JOIN pg_type b ON b.oid = t.typbasetype
                WHERE t.typnamespace = \(namespace) AND t.typtype IN ('b', 'r', 'p', 'd')
                  AND (t.typtype <> 'd' OR b.typnamespace <> \(pgCatalog))
                  AND NOT EXISTS (SELECT 1 FROM pg_type a WHERE a.typarray = t.oid)
                  AND \(notExtensionMember("'pg_type'::regclass", "t.oid"))
                UNION ALL
                SELECT CASE
                         WHEN c.relkind = 'm' THEN 'materialized view ' || c.qname
                         WHEN c.relkind = 'f' THEN 'foreign table ' || c.qname
                         WHEN c.relkind = 'p' THEN 'partitioned table ' || c.qname
                         WHEN c.relkind = 'c' THEN 'composite type ' || c.qname
                         WHEN c.relispartition THEN 'partition ' || c.qname
                         WHEN c.reloftype <> 0 THEN 'typed table ' || c.qname || ' of type ' || format_type(c.reloftype, NULL)
                       END
                FROM rel c
                WHERE (c.relkind IN ('m', 'f', 'p', 'c') OR (c.relkind = 'r' AND (c.relispartition OR c.reloftype <> 0)))
                  AND \(notExtensionMember("'pg_class'::regclass", "c.oid"))
                UNION ALL
                SELECT 'table ' || c.qname || ' inheriting from table '
                       || quote_ident(pn.nspname) || '.' || quote_ident(p.relname)
                FROM pg_inherits h
                JOIN pg_class c0 ON c0.oid = h.inhrelid
                JOIN pg_class p ON p.oid = h.inhparent
                JOIN pg_namespace pn ON pn.oid = p.relnamespace
                JOIN LATERAL (SELECT quote_ident(n.nspname) || '.' || quote_ident(c0.relname) AS qname
                              FROM pg_namespace n WHERE n.oid = c0.relnamespace) c ON true
                WHERE NOT c0.relispartition AND (c0.relnamespace = \(namespace) OR p.relnamespace = \(namespace))
                UNION ALL
                SELECT 'trigger ' || quote_ident(g.tgname) || ' on ' || c.word || ' ' || c.qname
                FROM pg_trigger g JOIN rel c ON c.oid = g.tgrelid
                WHERE NOT g.tgisinternal
                UNION ALL
                SELECT 'rule ' || quote_ident(r.rulename) || ' on ' || c.word || ' ' || c.qname
                FROM pg_rewrite r JOIN rel c ON c.oid = r.ev_class
                WHERE NOT (r.rulename = '_RETURN' AND c.relkind IN ('v', 'm'))
                UNION ALL
                SELECT 'policy ' || quote_ident(p.polname) || ' on table ' || c.qname
                FROM pg_policy p JOIN rel c ON c.oid = p.polrelid
                UNION ALL
                SELECT 'row-level security on table ' || c.qname FROM rel c WHERE c.relrowsecurity
                UNION ALL
                SELECT 'exclusion constraint ' || quote_ident(k.conname) || ' on table ' || c.qname
                FROM pg_constraint k JOIN rel c ON c.oid = k.conrelid
                WHERE k.contype = 'x'
                UNION ALL
                SELECT 'foreign key ' || quote_ident(k.conname) || ' on table ' || c.qname || ' referencing table '
                       || quote_ident(rn.nspname) || '.' || quote_ident(r.relname)
                FROM pg_constraint k JOIN rel c ON c.oid = k.conrelid
                JOIN pg_class r ON r.oid = k.confrelid JOIN pg_namespace rn ON rn.oid = r.relnamespace
                WHERE k.contype = 'f' AND r.relnamespace <> \(namespace)
                UNION ALL
                SELECT 'column ' || c.qname || '.' || quote_ident(a.attname) || ' of type '
                       || CASE WHEN b.typnamespace = \(namespace) THEN quote_ident(bn.nspname) || '.' ELSE '' END
                       || format_type(a.atttypid, a.atttypmod)
                FROM pg_attribute a
                JOIN rel c ON c.oid = a.attrelid
                JOIN pg_type t ON t.oid = a.atttypid
                LEFT JOIN pg_type el ON t.typsubscript = 'array_subscript_handler'::regproc AND el.oid = t.typelem
                JOIN pg_type b ON b.oid = coalesce(el.oid, t.oid)
                JOIN pg_namespace bn ON bn.oid = b.typnamespace
                LEFT JOIN pg_type bb ON b.typtype = 'd' AND bb.oid = b.typbasetype
                WHERE c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
                  -- Built-in types, but not catalog row types nor the OID alias types
                  -- (regclass and the like), whose values name objects by OID: they would point
                  -- at other objects, or none, in another database.
                  AND NOT ((b.typnamespace = \(pgCatalog) AND b.typtype <> 'c'
                            AND b.typname NOT IN ('regproc', 'regprocedure', 'regoper', 'regoperator', 'regclass', 'regcollation',
                                                  'regtype', 'regrole', 'regnamespace', 'regconfig', 'regdictionary'))
                           OR (b.typnamespace = \(namespace)
                               AND (b.typtype = 'e' OR (b.typtype = 'd' AND bb.typnamespace = \(pgCatalog)))))
                UNION ALL
                SELECT CASE WHEN c.relkind = 'v' THEN 'view ' || c.qname ELSE src.type || ' ' || src.identity END
                       || ' references ' || ref.type || ' ' || ref.identity
                FROM outside x
                CROSS JOIN LATERAL pg_identify_object(x.classid, x.objid, 0) src
                CROSS JOIN LATERAL pg_identify_object(x.refclassid, x.refobjid, 0) ref
                LEFT JOIN pg_rewrite r ON x.classid = 'pg_rewrite'::regclass AND r.oid = x.objid AND r.rulename = '_RETURN'
                LEFT JOIN rel c ON c.oid = r.ev_class
                WHERE ref.schema IS NOT NULL AND ref.schema NOT IN ('pg_catalog', (SELECT nspname FROM pg_namespace WHERE oid = \(namespace)))
            ) refused
            WHERE what IS NOT NULL
            """
        // Sorted here rather than by the database's collation, so the order is the same everywhere.
        return try await rows(sql).map { try $0.decode(String.self) }.sorted()
    }
}
