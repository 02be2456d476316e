import ControlDatabase
import Executors
import Foundation
import LibPQ

/// The libpq sessions of the data path: source readers inside the job's exported snapshot,
/// and target writers that proved they hold the target's fence.
///
/// Every session carries the attempt's application_name, so the executor's stop (cancel,
/// lost ownership, shutdown) terminates it on its server and a COPY in flight stops there,
/// not only in this process.
enum DataSessions {
    /// Session settings both sides share, so that text output (COPY text for servers of
    /// different major versions, and the checksums' row text) is the same everywhere: the
    /// same choices pg_dump makes, plus a fixed money format.
    static let settings = """
        SET client_encoding = 'UTF8';
        SET datestyle = 'ISO, YMD';
        SET intervalstyle = 'postgres';
        SET timezone = 'UTC';
        SET extra_float_digits = 3;
        SET bytea_output = 'hex';
        SET lc_monetary = 'C';
        SET statement_timeout = 0;
        SET lock_timeout = 0;
        SET idle_in_transaction_session_timeout = 0;
        """

    /// A reader of `url` that sees exactly the exported `snapshot`. Blocks.
    static func reader(_ url: DatabaseURL, snapshot: String) throws -> PQConnection {
        let connection = try PQConnection(parameters: url.libpqParameters)
        do {
            try connection.execute(settings)
            try connection.execute("""
                BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;
                SET TRANSACTION SNAPSHOT \(literal(snapshot));
                """)
            return connection
        } catch {
            connection.close()
            throw error
        }
    }

    /// A writer of `url` that ran `fenceCheck` on itself and found the fence is this
    /// attempt's; nil when it is not (the caller reports the lost fence). Blocks.
    static func writer(_ url: DatabaseURL, fenceCheck: String) throws -> PQConnection? {
        let connection = try PQConnection(parameters: url.libpqParameters)
        do {
            guard try connection.execute(fenceCheck).first?.first == "t" else {
                connection.close()
                return nil
            }
            try connection.execute(settings)
            return connection
        } catch {
            connection.close()
            throw error
        }
    }

    /// A SQL string literal (standard_conforming_strings).
    static func literal(_ text: String) -> String {
        "'" + text.replacingOccurrences(of: "'", with: "''") + "'"
    }
}

/// A quoted SQL identifier, as PostgreSQL's quote_ident writes it when quoting is needed.
func quoted(_ name: String) -> String {
    "\"" + name.replacingOccurrences(of: "\"", with: "\"\"") + "\""
}

/// `schema.table`, both quoted.
func qualified(_ schema: String, _ name: String) -> String {
    quoted(schema) + "." + quoted(name)
}

extension DatabaseURL {
    /// The URL as libpq's keyword parameters.
    var libpqParameters: [(String, String)] {
        var parameters: [(String, String)] = [
            ("host", host), ("port", String(port)), ("user", user), ("dbname", database),
            ("sslmode", sslMode.rawValue), ("connect_timeout", String(connectTimeout)),
        ]
        if let password { parameters.append(("password", password)) }
        if let applicationName { parameters.append(("application_name", applicationName)) }
        return parameters
    }
}
