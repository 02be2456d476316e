/// Splits a SQL script into single statements.
///
/// PostgresNIO speaks only the extended query protocol, which runs one statement per
/// message, and `CREATE INDEX CONCURRENTLY` must run as a statement of its own; so a
/// migration file is cut at top-level semicolons. Semicolons inside quoted strings,
/// quoted identifiers, dollar-quoted bodies, comments and parentheses (`CREATE RULE … DO
/// (…; …)`) do not cut.
///
/// Two things are refused rather than guessed at: SQL-standard `BEGIN ATOMIC … END`
/// bodies (their inner semicolons need a full parser; use a dollar-quoted body), and
/// transaction control (`BEGIN`, `COMMIT`, …), which would end the transaction Ferry runs
/// a migration in and with it the lock that serializes migrators.
public enum SQLScript {
    /// Why a script could not be split.
    public struct SplitError: Error, Sendable, Equatable, CustomStringConvertible {
        public var message: String
        public var description: String { message }
    }

    /// The statements of `script`, trimmed, without empty or comment-only ones.
    public static func statements(in script: String) throws(SplitError) -> [String] {
        try split(script).map(\.text)
    }

    /// The statements of `script` as the server sees them: comments dropped and each run of
    /// whitespace outside strings, quoted identifiers and dollar quotes made one space (none
    /// beside a parenthesis or comma). Two
    /// scripts that differ only in comments or layout have the same canonical statements
    /// (what a migration's checksum covers).
    public static func canonicalStatements(in script: String) throws(SplitError) -> [String] {
        try split(script).map(\.canonical)
    }

    private static func split(_ script: String) throws(SplitError) -> [(text: String, canonical: String)] {
        let text = Array(script.unicodeScalars)
        var statements: [(text: String, canonical: String)] = []
        var current = String.UnicodeScalarView()
        // The statement without comments, whitespace runs as one space (or none).
        var canonical = String.UnicodeScalarView()
        var pendingSpace = false
        var hasCode = false
        var index = 0
        var line = 1
        var depth = 0
        var statementLine = 1
        // The statement's code outside strings and comments, for the keyword checks.
        var code = ""

        func flush() throws(SplitError) {
            let statement = String(current).trimmingWhitespace()
            if hasCode, !statement.isEmpty {
                try check(code, line: statementLine)
                statements.append((statement, String(canonical)))
            }
            current = String.UnicodeScalarView()
            canonical = String.UnicodeScalarView()
            pendingSpace = false
            hasCode = false
            code = ""
        }
        func peek(_ offset: Int) -> Unicode.Scalar? {
            index + offset < text.count ? text[index + offset] : nil
        }
        func copy(through end: Int, canonically: Bool = true) {
            if canonically {
                // Space next to a parenthesis or comma never matters; elsewhere one is kept
                // (it separates words, and `- -` is not `--`).
                if pendingSpace, let last = canonical.last, !"(),".unicodeScalars.contains(last),
                   !"(),".unicodeScalars.contains(text[index]) {
                    canonical.append(" ")
                }
                pendingSpace = false
                canonical.append(contentsOf: text[index..<end])
            }
            for position in index..<end {
                if text[position] == "\n" { line += 1 }
                current.append(text[position])
            }
            index = end
        }

        while index < text.count {
            let scalar = text[index]
            switch scalar {
            case "-" where peek(1) == "-":
                var end = index
                while end < text.count, text[end] != "\n" { end += 1 }
                code += " "
                pendingSpace = true
                copy(through: end, canonically: false)
            case "/" where peek(1) == "*":
                // PostgreSQL block comments nest.
                let startLine = line
                var depth = 0
                var end = index
                repeat {
                    if end + 1 < text.count, text[end] == "/", text[end + 1] == "*" {
                        depth += 1
                        end += 2
                    } else if end + 1 < text.count, text[end] == "*", text[end + 1] == "/" {
                        depth -= 1
                        end += 2
                    } else if end < text.count {
                        end += 1
                    } else {
                        throw SplitError(message: "unterminated /* comment starting on line \(startLine)")
                    }
                } while depth > 0
                code += " "
                pendingSpace = true
                copy(through: end, canonically: false)
            case "'", "\"":
                let startLine = line
                // E'…' strings take backslash escapes; standard strings double the quote.
                let backslashEscapes = scalar == "'" && index > 0 && (text[index - 1] == "E" || text[index - 1] == "e")
                    && (index < 2 || !Self.isIdentifierScalar(text[index - 2]))
                var end = index + 1
                while true {
                    guard end < text.count else {
                        throw SplitError(message: "unterminated \(scalar == "'" ? "string" : "quoted identifier") starting on line \(startLine)")
                    }
                    if backslashEscapes, text[end] == "\\" {
                        end += 2
                        continue
                    }
                    if text[end] == scalar {
                        if end + 1 < text.count, text[end + 1] == scalar {
                            end += 2
                            continue
                        }
                        end += 1
                        break
                    }
                    end += 1
                }
                hasCode = true
                code += " "
                copy(through: end)
            case "$" where index == 0 || !Self.isIdentifierScalar(text[index - 1]):
                // A dollar quote is $tag$ … $tag$ with an optional identifier tag; `$1` is a parameter.
                var tagEnd = index + 1
                while tagEnd < text.count, Self.isIdentifierScalar(text[tagEnd]), !(text[tagEnd].properties.numericType != nil && tagEnd == index + 1) {
                    tagEnd += 1
                }
                guard tagEnd < text.count, text[tagEnd] == "$" else {
                    hasCode = true
                    code += "$"
                    copy(through: index + 1)
                    continue
                }
                let tag = Array(text[index...tagEnd])
                let startLine = line
                var end = tagEnd + 1
                var found = false
                while end + tag.count <= text.count {
                    if Array(text[end..<(end + tag.count)]) == tag {
                        end += tag.count
                        found = true
                        break
                    }
                    end += 1
                }
                guard found else {
                    throw SplitError(message: "unterminated dollar-quoted string \(String(String.UnicodeScalarView(tag))) starting on line \(startLine)")
                }
                hasCode = true
                code += " "
                copy(through: end)
            case ";" where depth == 0:
                index += 1
                try flush()
                statementLine = line
            default:
                if scalar == "(" { depth += 1 }
                if scalar == ")", depth > 0 { depth -= 1 }
                if !scalar.properties.isWhitespace {
                    if !hasCode { statementLine = line }
                    hasCode = true
                }
                code.unicodeScalars.append(scalar)
                if scalar.properties.isWhitespace {
                    pendingSpace = true
                    copy(through: index + 1, canonically: false)
                } else {
                    copy(through: index + 1)
                }
            }
        }
        try flush()
        return statements
    }

    private static let transactionControl: Set<String> = ["BEGIN", "COMMIT", "ROLLBACK", "END", "START", "ABORT", "SAVEPOINT", "RELEASE", "PREPARE"]

    private static func check(_ code: String, line: Int) throws(SplitError) {
        let words = code.uppercased().split { !($0.isLetter || $0 == "_") }
        if let first = words.first, transactionControl.contains(String(first)),
           !(first == "PREPARE" && words.dropFirst().first != "TRANSACTION") {
            throw SplitError(message: "transaction control (\(first)) on line \(line): Ferry runs each migration in its own transaction (or, with -- ferry:no-transaction, statement by statement); remove it")
        }
        for (word, next) in zip(words, words.dropFirst()) where word == "BEGIN" && next == "ATOMIC" {
            throw SplitError(message: "BEGIN ATOMIC body in the statement on line \(line) is not supported in migrations; write the function body dollar-quoted (AS $$ … $$)")
        }
    }

    private static func isIdentifierScalar(_ scalar: Unicode.Scalar) -> Bool {
        scalar == "_" || scalar.properties.isAlphabetic || ("0"..."9").contains(scalar)
    }
}

extension String {
    func trimmingWhitespace() -> String {
        let scalars = unicodeScalars
        guard let first = scalars.firstIndex(where: { !$0.properties.isWhitespace }),
              let last = scalars.lastIndex(where: { !$0.properties.isWhitespace })
        else { return "" }
        return String(scalars[first...last])
    }
}
