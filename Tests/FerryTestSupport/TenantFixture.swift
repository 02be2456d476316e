/// A tenant holding every object and type Ferry copies, with rich, deterministic data:
/// the round trip of the schema builder and the end-to-end clone tests run against it.
///
/// Run the whole script in one simple-protocol call (several statements, e.g. libpq's
/// `PQexec`) on a database that has no schema of that name; it leaves the session's
/// `search_path` set to the tenant. Nothing in it is refused (``TenantSchema/unsupported`` is
/// empty). Tables whose binary COPY form is not portable: `tagged` alone.
public enum TenantFixture {
    /// Tables the fixture creates, and how many rows each holds.
    public static let rowCounts: [String: Int] = [
        "every_type": 212, "regions": 12, "customers": 60, "orders": 150, "order_lines": 300, "shipments": 41,
        "ident_always": 25, "ident_default": 20, "ident_cycle": 15, "ident_unused": 0, "serial_things": 30,
        "measurements": 40, "tagged": 30, "Upper \"Quoted\" Table": 20, "empty_table": 0, "dropped_col": 25,
        "scratch": 10,
    ]

    /// The script that creates the tenant `schema`.
    public static func sql(schema: String) -> String {
        let s = "\"" + schema.replacingOccurrences(of: "\"", with: "\"\"") + "\""
        // The schema's name inside a string literal, to prove nothing rewrites definitions as text.
        let literal = "'" + schema.replacingOccurrences(of: "'", with: "''") + ".every_type'"
        return #"""
        SET standard_conforming_strings = on;
        SET client_encoding = 'UTF8';
        SET lc_monetary = 'C';
        -- The script is one transaction: deferred constraints would keep their tables from being altered.
        SET CONSTRAINTS ALL IMMEDIATE;
        CREATE SCHEMA \#(s);
        COMMENT ON SCHEMA \#(s) IS 'A tenant holding every object Ferry copies';
        SET search_path = \#(s);

        -- Types
        CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'it''s "quoted"');
        -- No row uses 'meh': a value added in the script's own transaction cannot be used in it.
        ALTER TYPE mood ADD VALUE 'meh' BEFORE 'ok';
        COMMENT ON TYPE mood IS 'an enum, one label added BEFORE another';

        CREATE DOMAIN positive_int AS integer DEFAULT 1 NOT NULL CONSTRAINT positive_int_check CHECK (VALUE > 0);
        COMMENT ON DOMAIN positive_int IS 'a domain with a default, NOT NULL and a check';
        COMMENT ON CONSTRAINT positive_int_check ON DOMAIN positive_int IS 'the domain''s check';
        CREATE DOMAIN short_text AS varchar(20) COLLATE "C" CONSTRAINT short_text_not_blank CHECK (VALUE <> '');
        CREATE DOMAIN us_zip AS text CHECK (VALUE ~ '^\d{5}$');

        -- Sequences: negative increment, cycling smallint with a cache, never used, odd name
        CREATE SEQUENCE down_seq AS integer INCREMENT BY -3 MINVALUE -1000 MAXVALUE 100 START WITH 100;
        COMMENT ON SEQUENCE down_seq IS 'counts down';
        CREATE SEQUENCE cycle_seq AS smallint INCREMENT BY 7 MINVALUE 1 MAXVALUE 50 START WITH 45 CACHE 5 CYCLE;
        CREATE SEQUENCE fresh_seq;
        CREATE SEQUENCE "Odd ""seq""" AS bigint START WITH 10;
        SELECT nextval('down_seq') FROM generate_series(1, 5);
        SELECT nextval('cycle_seq') FROM generate_series(1, 3);
        SELECT setval('"Odd ""seq"""', 42, false);

        -- Every built-in type, extremes and oddities included
        CREATE TABLE every_type (
            id bigserial PRIMARY KEY,
            t text,
            vc varchar(20),
            ch char(5),
            nm name,
            i2 smallint,
            i4 integer,
            i8 bigint,
            num numeric,
            num_fixed numeric(12,4),
            f4 real,
            f8 double precision,
            b boolean,
            ba bytea,
            j json,
            jb jsonb,
            ia integer[],
            ta text[],
            i2d integer[][],
            ts timestamp,
            tstz timestamptz,
            d date,
            tm time,
            tmtz timetz,
            iv interval,
            u uuid,
            ip inet,
            net cidr,
            mac macaddr,
            mac8 macaddr8,
            m money,
            bt bit(8),
            vb varbit(16),
            pt point,
            ln line,
            ls lseg,
            bx box,
            pth path,
            pg polygon,
            ci circle,
            tsv tsvector,
            tsq tsquery,
            x xml,
            r4 int4range,
            rts tstzrange,
            status mood DEFAULT 'ok',
            zip us_zip,
            pos positive_int,
            short short_text,
            c_text text COLLATE "C",
            countdown integer DEFAULT nextval('down_seq'),
            created date DEFAULT '2000-01-01',
            flags boolean[] DEFAULT '{t,f}'
        );
        COMMENT ON TABLE every_type IS 'one column of every built-in type';
        COMMENT ON COLUMN every_type.t IS 'text with "quotes", \backslashes and ''apostrophes''';
        COMMENT ON COLUMN every_type.countdown IS 'defaults to a sequence it does not own';

        INSERT INTO every_type (t, vc, ch, nm, i2, i4, i8, num, num_fixed, f4, f8, b, ba, j, jb, ia, ta, i2d, ts, tstz, d,
                                tm, tmtz, iv, u, ip, net, mac, mac8, m, bt, vb, pt, ln, ls, bx, pth, pg, ci, tsv, tsq, x,
                                r4, rts, status, zip, pos, short, c_text, countdown)
        SELECT 'row ' || g || repeat(' text', g % 7),
               'vc' || g,
               chr(65 + g % 26),
               'name_' || g,
               (g * 37 % 32000 - 16000)::smallint,
               g * 1000003 % 2000000000 - 1000000000,
               g::bigint * 92233720368547 - 4611686018427387904,
               (g * 3.14159265358979)::numeric / 7,
               round(g * 12.3456, 4),
               g / 3.0::real,
               g / 7.0::float8,
               g % 3 = 0,
               decode(md5(g::text), 'hex'),
               json_build_object('n', g, 'sq', g * g, 'tags', json_build_array('a', 'b', g)),
               jsonb_build_object('n', g, 'even', g % 2 = 0, 'nested', jsonb_build_object('k', 'v' || g)),
               ARRAY[g, g + 1, g * 2],
               ARRAY['x' || g, 'y', NULL],
               ARRAY[ARRAY[g, g + 1], ARRAY[g + 2, NULL]],
               timestamp '2001-02-03 04:05:06.789' + g * interval '1 day 1 hour 1 minute',
               timestamptz '2020-06-01 12:00:00+00' + g * interval '13 hours 7 seconds',
               date '1999-12-31' + g * 11,
               time '00:00:01' + g * interval '7 minutes',
               timetz '12:00:00+05:30' + g * interval '3 minutes',
               g * interval '1 mon 2 days 3 hours 4.5 seconds',
               md5('uuid' || g)::uuid,
               ('10.' || g % 256 || '.0.' || g % 200 + 1)::inet,
               ('10.' || g % 256 || '.0.0/16')::cidr,
               ('08:00:2b:01:02:' || lpad(to_hex(g % 256), 2, '0'))::macaddr,
               ('08:00:2b:01:02:03:04:' || lpad(to_hex(g % 256), 2, '0'))::macaddr8,
               (g * 1.25)::numeric::money,
               (g % 256)::bit(8),
               (g % 4096)::bit(12)::varbit,
               point(g, -g / 2.0),
               line(point(0, 0), point(g, g + 1)),
               lseg(point(g, 0), point(0, g)),
               box(point(g, g), point(g + 3, g + 4)),
               path(polygon(box(point(0, 0), point(g, g)))),
               polygon(box(point(-g, -g), point(g, g))),
               circle(point(g, g), g),
               to_tsvector('simple', 'the row number ' || g || ' jumps'),
               to_tsquery('simple', 'row & ' || g),
               xmlelement(name item, xmlattributes(g AS n), 'value ' || g),
               int4range(g, g + 10),
               tstzrange(timestamptz '2020-01-01 00:00+00' + g * interval '1 day', NULL),
               (ARRAY['sad', 'ok', 'happy', 'it''s "quoted"'])[g % 4 + 1]::mood,
               lpad((g * 7919 % 100000)::text, 5, '0'),
               g,
               'short ' || g,
               'C-collated ' || (200 - g),
               -g
        FROM generate_series(1, 200) g;

        -- NULLs everywhere the column allows them (a domain's default still applies when it is left out)
        INSERT INTO every_type (t, status, flags, created, countdown) VALUES (NULL, NULL, NULL, NULL, NULL);
        -- Strings that break naive encoders, empty values
        INSERT INTO every_type (t, vc, ch, nm, ta, ba, j, jb, c_text, x, tsv)
        VALUES (E'it''s a "quote" \\ back\\slash\ttab\nnewline\r\ncrlf é ü ß 日本語 🚀 \\N \\.', '', '', '',
                ARRAY['', NULL, E'a,b', E'{brace}', E'"dq"', E'back\\slash', 'NULL', ' spaced '], '\x', '{}', '[]',
                E'tab\there', '<a>&amp;</a>', '');
        -- Numeric and float extremes
        INSERT INTO every_type (num, num_fixed, f4, f8, i2, i4, i8, t)
        VALUES ('NaN', '99999999.9999', 'NaN', 'NaN', 32767, 2147483647, 9223372036854775807, 'max'),
               ('Infinity', '-99999999.9999', 'Infinity', 'Infinity', -32768, -2147483648, -9223372036854775808, 'min'),
               ('-Infinity', 0, '-Infinity', '-Infinity', 0, 0, 0, 'inf'),
               (1e-300::numeric * 1e300::numeric + 0.000000000000000000000000000001, NULL, 1.17549435e-38, 2.2250738585072014e-308, NULL, NULL, NULL, 'tiny'),
               (10::numeric ^ 100, NULL, 3.4028234e+38, 1.7976931348623157e+308, NULL, NULL, NULL, 'huge'),
               ('-0', NULL, '-0', '-0', NULL, NULL, NULL, 'negative zero');
        -- Date and time extremes
        INSERT INTO every_type (ts, tstz, d, iv, t)
        VALUES ('infinity', 'infinity', 'infinity', '178000000 years', 'future'),
               ('-infinity', '-infinity', '-infinity', '-178000000 years', 'past'),
               ('4713-01-01 00:00:00 BC', '4713-01-01 00:00:00+00 BC', '4713-01-01 BC', '-1 mon 2 days -03:04:05.678', 'first'),
               ('294276-12-31 23:59:59.999999', '294276-12-30 23:59:59.999999+00', '5874897-12-31', '0', 'last');

        -- Identity columns: ALWAYS counting down, a bigint BY DEFAULT near the top, cycling, never used
        CREATE TABLE ident_always (
            id integer GENERATED ALWAYS AS IDENTITY (START WITH 1000 INCREMENT BY -10 MINVALUE -100000 MAXVALUE 1000),
            label text NOT NULL
        );
        INSERT INTO ident_always (label) SELECT 'always ' || g FROM generate_series(1, 25) g;
        CREATE TABLE ident_default (
            id bigint GENERATED BY DEFAULT AS IDENTITY (START WITH 9223372036854775000 CACHE 10) PRIMARY KEY,
            note text
        );
        INSERT INTO ident_default (note) SELECT 'default ' || g FROM generate_series(1, 20) g;
        CREATE TABLE ident_cycle (
            id smallint GENERATED BY DEFAULT AS IDENTITY (MINVALUE 1 MAXVALUE 10 CYCLE),
            v integer
        );
        INSERT INTO ident_cycle (v) SELECT g FROM generate_series(1, 15) g;
        CREATE TABLE ident_unused (id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
        COMMENT ON COLUMN ident_unused.id IS 'its sequence was never called';

        -- Serial columns
        CREATE TABLE serial_things (id serial PRIMARY KEY, small smallserial, code text UNIQUE);
        INSERT INTO serial_things (code) SELECT 'code-' || g FROM generate_series(1, 30) g;

        -- Generated columns
        CREATE TABLE measurements (
            id integer PRIMARY KEY,
            celsius numeric(6,2) NOT NULL,
            fahrenheit numeric GENERATED ALWAYS AS (celsius * 9 / 5 + 32) STORED,
            label text GENERATED ALWAYS AS ('m' || id::text) STORED
        );
        INSERT INTO measurements (id, celsius) SELECT g, g * 1.5 - 20 FROM generate_series(1, 40) g;
        ALTER SEQUENCE "Odd ""seq""" OWNED BY measurements.id;

        -- A foreign-key chain orders → customers → regions, a self-reference, composite and MATCH FULL keys
        CREATE TABLE regions (id integer PRIMARY KEY, name text NOT NULL);
        COMMENT ON TABLE regions IS 'the end of the chain';
        INSERT INTO regions SELECT g, 'Region ' || g FROM generate_series(1, 12) g;
        CREATE UNIQUE INDEX regions_lower_name ON regions (lower(name));
        ALTER TABLE regions REPLICA IDENTITY FULL;

        CREATE TABLE customers (
            id integer PRIMARY KEY,
            name text NOT NULL,
            email text,
            region_id integer NOT NULL REFERENCES regions ON DELETE RESTRICT,
            referrer_id integer CONSTRAINT customers_referrer_fkey REFERENCES customers (id) ON DELETE SET NULL,
            CONSTRAINT customers_email_key UNIQUE NULLS NOT DISTINCT (email) DEFERRABLE INITIALLY DEFERRED,
            CONSTRAINT customers_name_check CHECK (name <> '')
        );
        COMMENT ON CONSTRAINT customers_referrer_fkey ON customers IS 'a self-reference';
        COMMENT ON CONSTRAINT customers_email_key ON customers IS 'NULLS NOT DISTINCT, deferred';
        COMMENT ON INDEX customers_email_key IS 'the index behind the unique constraint';
        INSERT INTO customers
        SELECT g, 'Customer ' || g, CASE WHEN g = 60 THEN NULL ELSE 'c' || g || '@example.com' END,
               g % 12 + 1, CASE WHEN g > 5 THEN g / 5 END
        FROM generate_series(1, 60) g;
        CREATE INDEX customers_lower_name ON customers (lower(name));
        ALTER TABLE customers CLUSTER ON customers_pkey;

        CREATE TABLE orders (
            id bigint PRIMARY KEY,
            customer_id integer NOT NULL,
            amount numeric(10,2) CONSTRAINT orders_amount_check CHECK (amount >= 0),
            status mood NOT NULL DEFAULT 'ok',
            placed timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT orders_customer_fkey FOREIGN KEY (customer_id) REFERENCES customers
                ON DELETE CASCADE ON UPDATE CASCADE DEFERRABLE INITIALLY DEFERRED
        ) WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.05);
        COMMENT ON COLUMN orders.amount IS 'never negative';
        COMMENT ON CONSTRAINT orders_amount_check ON orders IS 'a check';
        INSERT INTO orders (id, customer_id, amount, status, placed)
        SELECT g, g % 60 + 1, g * 7.5, (ARRAY['sad', 'ok', 'happy'])[g % 3 + 1]::mood,
               timestamptz '2024-01-01 00:00+00' + g * interval '1 hour'
        FROM generate_series(1, 149) g;
        INSERT INTO orders (id, customer_id, amount, placed) VALUES (150, 1, 50000, '2024-02-01 00:00+00');
        -- Rows older than a constraint: it stays NOT VALID
        ALTER TABLE orders ADD CONSTRAINT orders_amount_small CHECK (amount < 10000) NOT VALID;
        CREATE INDEX orders_open_idx ON orders (customer_id) WHERE status <> 'happy';
        CREATE INDEX orders_customer_incl ON orders (customer_id) INCLUDE (amount) WITH (fillfactor = 70);
        CREATE INDEX orders_placed_brin ON orders USING brin (placed);
        COMMENT ON INDEX orders_open_idx IS 'a partial index';

        CREATE TABLE order_lines (
            order_id bigint NOT NULL REFERENCES orders ON DELETE CASCADE,
            line_no integer NOT NULL,
            sku text NOT NULL,
            qty integer NOT NULL DEFAULT 1,
            PRIMARY KEY (order_id, line_no),
            CONSTRAINT order_lines_order_sku UNIQUE (order_id, sku)
        );
        INSERT INTO order_lines SELECT o, l, 'SKU-' || (o * 10 + l), l FROM generate_series(1, 150) o, generate_series(1, 2) l;

        CREATE TABLE shipments (
            id integer PRIMARY KEY,
            order_id bigint,
            line_no integer,
            carrier_id integer,
            CONSTRAINT shipments_line_fkey FOREIGN KEY (order_id, line_no) REFERENCES order_lines MATCH FULL
                ON UPDATE RESTRICT ON DELETE SET NULL
        );
        INSERT INTO shipments SELECT g, g, 1, g % 12 + 1 FROM generate_series(1, 40) g;
        INSERT INTO shipments VALUES (41, NULL, NULL, 777);
        -- A dangling reference the source never validated
        ALTER TABLE shipments ADD CONSTRAINT shipments_carrier_fkey FOREIGN KEY (carrier_id) REFERENCES regions NOT VALID;

        -- Arrays of an enum and of domains: their binary form names the element type's OID
        CREATE TABLE tagged (id integer PRIMARY KEY, moods mood[], zips us_zip[], counts positive_int[]);
        INSERT INTO tagged
        SELECT g, ARRAY['sad', 'happy', NULL]::mood[], ARRAY[lpad(g::text, 5, '0')]::us_zip[], ARRAY[g, g + 1]::positive_int[]
        FROM generate_series(1, 30) g;

        -- Names that need quoting
        CREATE TABLE "Upper ""Quoted"" Table" (
            "Order" integer PRIMARY KEY,
            "select" text,
            "a""b" text,
            "with space" text,
            t text,
            "ÜnïcødeCol" text
        );
        COMMENT ON TABLE "Upper ""Quoted"" Table" IS 'upper case, a quote and a space';
        COMMENT ON COLUMN "Upper ""Quoted"" Table"."a""b" IS 'a quote in a column name';
        INSERT INTO "Upper ""Quoted"" Table"
        SELECT g, 'select ' || g, 'a"b ' || g, 'with space ' || g, 't' || g, 'ü' || g FROM generate_series(1, 20) g;
        CREATE INDEX "Weird ""idx""" ON "Upper ""Quoted"" Table" ("select" DESC NULLS LAST, "a""b");

        -- Indexes of every shape on every_type
        CREATE INDEX every_type_multi ON every_type (i4 DESC NULLS FIRST, t text_pattern_ops, ts NULLS FIRST);
        CREATE INDEX every_type_u_hash ON every_type USING hash (u);
        CREATE INDEX every_type_jb_gin ON every_type USING gin (jb jsonb_path_ops);
        CREATE INDEX every_type_tsv_gin ON every_type USING gin (tsv);
        CREATE INDEX every_type_bx_gist ON every_type USING gist (bx);
        CREATE INDEX every_type_expr ON every_type ((i4 % 10), lower(t) COLLATE "C");
        CREATE INDEX every_type_tricky ON every_type (t) WHERE t <> \#(literal);
        COMMENT ON INDEX every_type_u_hash IS 'a hash index';

        -- An empty table, a table with a dropped column, an unlogged table
        CREATE TABLE empty_table (id integer PRIMARY KEY, v text);
        CREATE TABLE dropped_col (id integer PRIMARY KEY, gone text, kept text);
        INSERT INTO dropped_col SELECT g, 'gone ' || g, 'kept ' || g FROM generate_series(1, 20) g;
        ALTER TABLE dropped_col DROP COLUMN gone;
        INSERT INTO dropped_col SELECT g, 'after ' || g FROM generate_series(21, 25) g;
        CREATE UNLOGGED TABLE scratch (id serial PRIMARY KEY, v text) WITH (autovacuum_enabled = false);
        INSERT INTO scratch (v) SELECT 'scratch ' || g FROM generate_series(1, 10) g;

        -- Views over views, created so that a view's name sorts before the view it reads
        CREATE VIEW v_customers AS SELECT id, name, region_id FROM customers WHERE email IS NOT NULL;
        CREATE VIEW b_customer_orders AS
            SELECT c.name, o.id AS order_id, o.amount FROM v_customers c JOIN orders o ON o.customer_id = c.id;
        CREATE VIEW a_big_orders AS SELECT name, amount FROM b_customer_orders WHERE amount > 100;
        CREATE VIEW v_regions_local WITH (security_barrier = true) AS
            SELECT id, name FROM regions WHERE id < 10 WITH LOCAL CHECK OPTION;
        COMMENT ON VIEW a_big_orders IS 'a view over a view over a view';
        COMMENT ON COLUMN a_big_orders.amount IS 'a view column';
        """#
    }
}
