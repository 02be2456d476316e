import Testing
@testable import ControlDatabase

@Suite struct SQLScriptTests {
    @Test func splitsAtTopLevelSemicolons() throws {
        let statements = try SQLScript.statements(in: "CREATE TABLE a (x int);\n\nINSERT INTO a VALUES (1) ;SELECT 1")
        #expect(statements == ["CREATE TABLE a (x int)", "INSERT INTO a VALUES (1)", "SELECT 1"])
    }

    @Test func keepsSemicolonsInsideQuotesCommentsAndDollarQuotes() throws {
        let script = """
            -- a comment; not a statement
            INSERT INTO t VALUES ('a;b', 'it''s; fine', E'back\\'slash;');
            CREATE TABLE "weird;name" (x int); /* block; /* nested; */ still comment; */
            DO $body$ BEGIN PERFORM 1; END $body$;
            SELECT $$x;y$$, $1;
            """
        let statements = try SQLScript.statements(in: script)
        #expect(statements.count == 4)
        #expect(statements[0].hasSuffix("E'back\\'slash;')"))
        #expect(statements[1] == "CREATE TABLE \"weird;name\" (x int)")
        #expect(statements[2].hasPrefix("/* block;") && statements[2].hasSuffix("END $body$"))
        #expect(statements[3] == "SELECT $$x;y$$, $1")
    }

    @Test func keepsSemicolonsInsideParentheses() throws {
        let script = "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); INSERT INTO b VALUES (2));\nSELECT 1;"
        let statements = try SQLScript.statements(in: script)
        #expect(statements.count == 2)
        #expect(statements[0].hasSuffix("INSERT INTO b VALUES (2))"))
    }

    @Test(arguments: [
        ("CREATE TABLE a (x int);\nCOMMIT;", "transaction control (COMMIT) on line 2"),
        ("BEGIN;\nCREATE TABLE a (x int);", "transaction control (BEGIN) on line 1"),
        ("-- note\nstart transaction;", "transaction control (START) on line 2"),
        ("CREATE FUNCTION f() RETURNS int LANGUAGE sql\nBEGIN ATOMIC SELECT 1; SELECT 2; END;", "BEGIN ATOMIC body in the statement on line 1"),
    ])
    func refusesTransactionControlAndBeginAtomic(script: String, fragment: String) {
        let error = #expect(throws: SQLScript.SplitError.self) { try SQLScript.statements(in: script) }
        #expect(error?.message.contains(fragment) == true, "\(error?.message ?? "")")
    }

    @Test func keywordsInsideStringsAndBodiesAreNotTransactionControl() throws {
        let statements = try SQLScript.statements(in: """
            COMMENT ON TABLE t IS 'BEGIN; COMMIT';
            CREATE FUNCTION g() RETURNS void LANGUAGE plpgsql AS $$ BEGIN PERFORM 1; END $$;
            PREPARE q AS SELECT 1;
            """)
        #expect(statements.count == 3)
    }

    @Test func theNoTransactionMarkerIsFoundInCRLFFiles() throws {
        let migration = try Migration(fileName: "0002_x.sql", sql: "-- ferry:no-transaction\r\nCREATE INDEX CONCURRENTLY i ON t (x);\r\n")
        #expect(!migration.isTransactional)
    }

    @Test func dropsCommentOnlyAndEmptyStatements() throws {
        #expect(try SQLScript.statements(in: "-- only a comment\n;;  ;\n/* c */") == [])
    }

    @Test(arguments: [
        ("SELECT 'open", "unterminated string starting on line 1"),
        ("SELECT 1;\nSELECT \"open", "unterminated quoted identifier starting on line 2"),
        ("SELECT $a$ open", "unterminated dollar-quoted string $a$ starting on line 1"),
        ("/* open /* nested */", "unterminated /* comment starting on line 1"),
    ])
    func refusesUnterminatedConstructs(script: String, message: String) {
        #expect(throws: SQLScript.SplitError(message: message)) {
            try SQLScript.statements(in: script)
        }
    }
}
