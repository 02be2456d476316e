import ArgumentParser
import FerryProtocol
import Foundation
import SwiftProtobuf

/// `-o/--output`: how results are printed.
enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    /// Aligned tables and short summaries for people.
    case human
    /// As human, with more columns.
    case wide
    /// The protocol's messages as JSON (proto3 JSON mapping); one object per line when
    /// several are printed (NDJSON).
    case json
}

struct OutputOptions: ParsableArguments {
    @Option(name: [.customShort("o"), .customLong("output")], help: ArgumentHelp("human, wide or json.", valueName: "format"))
    var format: OutputFormat = .human
}

/// `--limit`, `--page-token` and `--all` of the list commands.
struct PagingOptions: ParsableArguments {
    @Option(name: .customLong("limit"), help: "Items per page (1 to 500). Default 50.")
    var limit: Int32 = 50
    @Option(name: .customLong("page-token"), help: "Continue a previous listing (its next-page token).")
    var pageToken: String?
    @Flag(name: .customLong("all"), help: "Follow every page.")
    var all = false

    func validate() throws {
        guard (1...500).contains(limit) else { throw ValidationError("--limit must be between 1 and 500") }
    }

    /// The first page (from `--page-token`), or every page from there with `--all`; `fetch`
    /// gets a page token and returns the page and the next token.
    func pages<Page>(_ fetch: (String) async throws -> (page: Page, next: String)) async throws -> (pages: [Page], next: String) {
        var token = pageToken ?? ""
        var pages: [Page] = []
        while true {
            let (page, next) = try await fetch(token)
            pages.append(page)
            token = next
            guard all, !next.isEmpty else { return (pages, next) }
        }
    }

    /// Says on stderr how to get the next page, when there is one.
    func mentionMore(_ next: String, command: String) {
        guard !next.isEmpty else { return }
        FileHandle.standardError.write(Data("more: \(command) --page-token \(next) (or --all)\n".utf8))
    }
}

/// Prints a message as one line of JSON.
func printJSON(_ message: some SwiftProtobuf.Message) throws {
    print(try message.jsonString())
}

/// Columns padded to their widest cell; the last column is not padded.
struct TextTable {
    private var rows: [[String]]

    init(_ headers: [String]) { rows = [headers] }

    mutating func add(_ cells: [String]) { rows.append(cells.map(printable)) }

    var rendered: String {
        let columns = rows.map(\.count).max() ?? 0
        var widths = [Int](repeating: 0, count: columns)
        for row in rows { for (index, cell) in row.enumerated() { widths[index] = max(widths[index], cell.count) } }
        return rows.map { row in
            row.enumerated().map { index, cell in
                index == row.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
            }.joined(separator: "  ")
        }.joined(separator: "\n")
    }

    func print() { Swift.print(rendered) }
}

/// `Key:` and value lines with the values aligned (control characters in values escaped).
func keyValues(_ lines: [(String, String)]) -> String {
    let width = (lines.map(\.0.count).max() ?? 0) + 2
    return lines.map { "\($0.0 + ":")".padding(toLength: width, withPad: " ", startingAt: 0) + printable($0.1) }.joined(separator: "\n")
}

// MARK: Numbers and times

/// 1234567 → "1,234,567".
func grouped(_ value: Int64) -> String {
    let digits = String(value.magnitude)
    var out = ""
    for (index, character) in digits.enumerated() {
        if index > 0, (digits.count - index) % 3 == 0 { out.append(",") }
        out.append(character)
    }
    return value < 0 ? "-" + out : out
}

/// Bytes in binary units, e.g. "45.6 MB" (MiB, printed as people read them).
func byteSize(_ bytes: Int64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"]
    var value = Double(bytes)
    var unit = 0
    while value >= 1024, unit < units.count - 1 {
        value /= 1024
        unit += 1
    }
    return unit == 0 ? "\(bytes) B" : String(format: value < 10 ? "%.2f %@" : "%.1f %@", value, units[unit])
}

/// Seconds as "4s", "3m05s", "2h10m".
func shortDuration(_ seconds: Double) -> String {
    let whole = Int(seconds.rounded())
    if seconds < 10 { return String(format: "%.1fs", seconds) }
    if whole < 60 { return "\(whole)s" }
    if whole < 3600 { return String(format: "%dm%02ds", whole / 60, whole % 60) }
    if whole < 86400 { return String(format: "%dh%02dm", whole / 3600, (whole % 3600) / 60) }
    return "\(whole / 86400)d\((whole % 86400) / 3600)h"
}

extension Google_Protobuf_Timestamp {
    var seconds1970: Double { Double(seconds) + Double(nanos) / 1e9 }

    /// How long ago, e.g. "3m05s".
    var age: String { shortDuration(max(0, Date().timeIntervalSince1970 - seconds1970)) }
}

/// Parses a duration as seconds, or with a unit: `90`, `90s`, `15m`, `12h`, `7d`.
func parseSeconds(_ text: String, flag: String) throws -> Int64 {
    let units: [Character: Int64] = ["s": 1, "m": 60, "h": 3600, "d": 86400]
    var digits = Substring(text)
    var multiplier: Int64 = 1
    if let last = text.last, let unit = units[last] {
        digits = digits.dropLast()
        multiplier = unit
    }
    guard let value = Int64(digits), value > 0 else {
        throw CLIError.usage("invalid \(flag) '\(text)': expected seconds or a number with s, m, h or d, e.g. 12h or 7d")
    }
    return value * multiplier
}

// MARK: Enums as people type them

extension JobStatus {
    /// `running` or `RUNNING`.
    static func parse(_ text: String) throws -> JobStatus {
        guard let status = JobStatus(name: text.uppercased()), status != .unspecified else {
            throw CLIError.usage("unknown status '\(text)': expected queued, running, succeeded, failed or cancelled")
        }
        return status
    }
}

extension JobKind {
    /// `clone`, `export`, `import`, `replace` (or `instance_replace`).
    static func parse(_ text: String) throws -> JobKind {
        let name = text.uppercased() == "REPLACE" ? "INSTANCE_REPLACE" : text.uppercased()
        guard let kind = JobKind(name: name), kind != .unspecified else {
            throw CLIError.usage("unknown kind '\(text)': expected clone, export, import or replace")
        }
        return kind
    }

    /// How the CLI names the kind: clone, export, import, replace.
    var label: String { self == .instanceReplace ? "replace" : name.lowercased() }
}

/// `INSTANCE/TENANT`.
func instanceAndTenant(_ text: String, flag: String) throws -> (instance: String, tenant: String) {
    let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
    guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
        throw CLIError.usage("invalid \(flag) '\(text)': expected INSTANCE/TENANT, e.g. eu-1/acme")
    }
    return (parts[0], parts[1])
}
