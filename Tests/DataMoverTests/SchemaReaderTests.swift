import ControlDatabase
import DataMover
import FerryTestSupport
import Logging
import PostgresNIO
import Testing

@Suite("Schema reader")
struct SchemaReaderTests {
    @Test("copy columns, binary safety and sizes of the fixture's tables")
    func tableDefinitions() async throws {
        let database = try await TestPostgres.shared.freshDatabase("schema_tables")
        try await SchemaTesting.runScript(TenantFixture.sql(schema: "fixture"), on: database)
        let schema = try await SchemaTesting.read("fixture", on: database)

        #expect(schema.tables.map(\.name) == TenantFixture.rowCounts.keys.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) })
        #expect(schema.tables.filter { !$0.binarySafe }.map(\.name) == ["tagged"])
        #expect(schema.table("measurements")?.copyColumns == ["id", "celsius"])
        #expect(schema.table("dropped_col")?.copyColumns == ["id", "kept"])
        #expect(schema.table("Upper \"Quoted\" Table")?.copyColumns == ["Order", "select", "a\"b", "with space", "t", "ÜnïcødeCol"])
        #expect(schema.table("ident_always")?.copyColumns == ["id", "label"])
        #expect(schema.table("every_type")?.copyColumns.count == 53)
        #expect(schema.table("empty_table")?.bytes == 0)
        let everyType = try #require(schema.table("every_type"))
        #expect(everyType.bytes > 0)
        #expect(everyType.blocks == everyType.bytes / 8192)
    }

    @Test("a tenant that does not exist is an error")
    func missingTenant() async throws {
        let database = try await TestPostgres.shared.freshDatabase("schema_missing")
        await #expect(throws: SchemaReader.ReadError.self) {
            _ = try await SchemaTesting.read("no_such_tenant", on: database)
        }
    }

    @Test("every object Ferry refuses is named")
    func refusedObjects() async throws {
        let database = try await TestPostgres.shared.freshDatabase("schema_refused")
        try await SchemaTesting.runScript("""
            CREATE SCHEMA other;
            CREATE TYPE other.color AS ENUM ('red', 'green');
            CREATE TABLE other.ref (id integer PRIMARY KEY);
            CREATE SEQUENCE other.seq;
            CREATE SCHEMA ext;
            CREATE EXTENSION citext SCHEMA ext;

            CREATE SCHEMA refused;
            SET search_path = refused;
            CREATE EXTENSION pg_trgm SCHEMA refused;
            CREATE TABLE orders (id integer PRIMARY KEY, note text);
            CREATE FUNCTION f(integer) RETURNS integer LANGUAGE sql AS 'SELECT $1';
            CREATE PROCEDURE p() LANGUAGE sql AS 'SELECT 1';
            CREATE AGGREGATE total(integer) (SFUNC = int4pl, STYPE = integer);
            CREATE FUNCTION audit_row() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
            CREATE TRIGGER audit BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION audit_row();
            CREATE RULE no_delete AS ON DELETE TO orders DO INSTEAD NOTHING;
            CREATE POLICY own_rows ON orders USING (true);
            ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
            CREATE MATERIALIZED VIEW mv AS SELECT id FROM orders;
            CREATE TYPE pair AS (a integer, b integer);
            CREATE TYPE span AS RANGE (subtype = integer);
            CREATE TYPE mood AS ENUM ('sad', 'ok');
            CREATE DOMAIN mood_domain AS mood;
            CREATE TABLE parted (id integer, at date) PARTITION BY RANGE (at);
            CREATE TABLE parted_2024 PARTITION OF parted FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
            CREATE TABLE base_t (id integer);
            CREATE TABLE child_t (extra text) INHERITS (base_t);
            CREATE TABLE typed_t OF pair;
            CREATE TABLE bookings (id integer, during int4range, EXCLUDE USING gist (during WITH &&));
            CREATE STATISTICS orders_stats ON id, note FROM orders;
            CREATE COLLATION my_c FROM "C";
            CREATE TEXT SEARCH CONFIGURATION my_ts (COPY = simple);
            CREATE TABLE outside_refs (
                id integer PRIMARY KEY,
                color other.color,
                colors other.color[],
                name ext.citext,
                ref_id integer CONSTRAINT outside_refs_ref_fkey REFERENCES other.ref,
                counter bigint DEFAULT nextval('other.seq'),
                p pair,
                trigrams text,
                rel regclass,
                cls pg_class
            );
            CREATE INDEX outside_refs_trgm ON outside_refs USING gin (trigrams gin_trgm_ops);
            CREATE VIEW v_other AS SELECT id FROM other.ref;
            CREATE VIEW v_fine AS SELECT id FROM orders;
            """, on: database)
        let schema = try await SchemaTesting.read("refused", on: database)
        #expect(schema.unsupported == [
            "aggregate refused.total(integer)",
            "column refused.outside_refs.color of type other.color",
            "column refused.outside_refs.colors of type other.color[]",
            "column refused.outside_refs.name of type ext.citext",
            "column refused.outside_refs.p of type refused.pair",
            "column refused.outside_refs.rel of type regclass",
            "column refused.outside_refs.cls of type pg_class",
            "composite type refused.pair",
            "default value for refused.outside_refs.counter references sequence other.seq",
            "domain refused.mood_domain over mood",
            "exclusion constraint bookings_during_excl on table refused.bookings",
            "extension pg_trgm",
            "foreign key outside_refs_ref_fkey on table refused.outside_refs referencing table other.ref",
            "function refused.audit_row()",
            "function refused.f(integer)",
            "materialized view refused.mv",
            "partition refused.parted_2024",
            "partitioned table refused.parted",
            "policy own_rows on table refused.orders",
            "procedure refused.p()",
            "range type refused.span",
            "row-level security on table refused.orders",
            "rule no_delete on table refused.orders",
            "statistics object refused.orders_stats",
            "table refused.child_t inheriting from table refused.base_t",
            "text search configuration refused.my_ts",
            "collation refused.my_c",
            "trigger audit on table refused.orders",
            "typed table refused.typed_t of type pair",
            "view refused.v_other references table other.ref",
        ].sorted())
        #expect(schema.tables.map(\.name) == ["bookings", "orders", "outside_refs"])
    }
}
