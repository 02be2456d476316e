import ArgumentParser
import Foundation
import Logging
import Synchronization

/// How ferryd writes its log lines on stderr.
public enum LogFormat: String, CaseIterable, Sendable, ExpressibleByArgument {
    /// swift-log's `StreamLogHandler` line: timestamp, level, label, `key=value` metadata,
    /// `[source]` and the message. For people reading a terminal.
    case text
    /// One JSON object per line (see ``JSONLogHandler``). For log shippers.
    case json

    public init?(argument: String) {
        self.init(rawValue: argument.lowercased())
    }

    /// The environment variable that sets the format when the flag is not given.
    static let variable = "FERRY_LOG_FORMAT"

    /// The format `arguments` (without the program name) and `environment` ask for, read
    /// before the command line is parsed: the logging system must be set up before any
    /// logger exists. Both `--log-format json` and `--log-format=json` count, the last one
    /// wins (as when parsing), and the flag wins over `FERRY_LOG_FORMAT`. A value that is
    /// not a format gives `text` here; parsing then refuses it with an error naming it.
    static func requested(arguments: [String], environment: [String: String]) -> LogFormat {
        var flag: String?
        var index = arguments.startIndex
        while index < arguments.endIndex {
            let argument = arguments[index]
            if argument == "--" { break }
            if argument == "--log-format" {
                flag = index + 1 < arguments.endIndex ? arguments[index + 1] : nil
                index += 2
                continue
            }
            if argument.hasPrefix("--log-format=") { flag = String(argument.dropFirst("--log-format=".count)) }
            index += 1
        }
        if let flag { return LogFormat(argument: flag) ?? .text }
        if let text = environment[variable], !text.isEmpty { return LogFormat(argument: text) ?? .text }
        return .text
    }
}

/// A swift-log handler that writes each event as one JSON object on one line, for log
/// shippers (Vector, Fluent Bit, Promtail, …) that parse lines without multi-line rules.
///
/// The fields, in this order:
/// - `ts`: the time, RFC 3339 in UTC with milliseconds (`2025-01-31T12:34:56.789Z`);
/// - `level`: `trace`, `debug`, `info`, `notice`, `warning`, `error` or `critical`;
/// - `logger`: the logger's label (`ferryd`);
/// - `message`;
/// - every metadata key as a field of its own, sorted by key: a string for plain values, an
///   object for dictionary metadata, an array for array metadata. A key that would overwrite
///   one of the fixed fields (`ts`, `level`, `logger`, `message`, `source`, `file`, `line`)
///   is written as `meta_<key>` instead. An error passed to the log call appears as
///   `error.message` and `error.type`, as in the text format;
/// - `source` (the module), `file` (`Module/File.swift`) and `line`: the log statement.
///
/// Strings are escaped per RFC 8259 (quotes, backslashes and every control character), so
/// every line parses whatever the message or metadata hold. A line is written with one
/// `write(2)` under a lock, so lines of concurrent tasks never interleave.
public struct JSONLogHandler: LogHandler {
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?

    private let label: String
    private let output: @Sendable (String) -> Void

    /// The fields every line has; metadata keys equal to one of them get a `meta_` prefix.
    static let fixedFields: Set<String> = ["ts", "level", "logger", "message", "source", "file", "line"]

    /// A handler writing to `output` (one call per line, with its trailing newline).
    public init(label: String, metadataProvider: Logger.MetadataProvider? = nil, output: @escaping @Sendable (String) -> Void) {
        self.label = label
        self.metadataProvider = metadataProvider
        self.output = output
    }

    /// A handler writing to stderr, like `StreamLogHandler.standardError`.
    public static func standardError(label: String, metadataProvider: Logger.MetadataProvider? = LoggingSystem.metadataProvider) -> JSONLogHandler {
        JSONLogHandler(label: label, metadataProvider: metadataProvider, output: StandardError.write)
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        // Precedence as in StreamLogHandler: the logger's metadata, then the provider's, then
        // the call's own.
        var merged = metadata
        if let provided = metadataProvider?.get(), !provided.isEmpty {
            merged.merge(provided) { _, new in new }
        }
        if let explicit = event.metadata, !explicit.isEmpty {
            merged.merge(explicit) { _, new in new }
        }
        if let error = event.error {
            merged["error.message"] = "\(error)"
            merged["error.type"] = "\(String(reflecting: type(of: error)))"
        }
        output(Self.line(
            time: Date(), level: event.level, label: label, message: event.message.description, metadata: merged,
            source: event.source, file: event.file, line: event.line))
    }

    @available(*, deprecated, renamed: "log(event:)")
    public func log(level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata?, source: String, file: String, function: String, line: UInt) {
        log(event: LogEvent(level: level, message: message, metadata: metadata, source: source, file: file, function: function, line: line))
    }

    /// One event as a JSON line, newline included.
    static func line(
        time: Date, level: Logger.Level, label: String, message: String, metadata: Logger.Metadata,
        source: String, file: String, line: UInt
    ) -> String {
        var text = "{\"ts\":\"" + timestamp(time) + "\",\"level\":\"" + level.rawValue + "\",\"logger\":"
        appendString(label, to: &text)
        text += ",\"message\":"
        appendString(message, to: &text)
        for (key, value) in metadata.sorted(by: { $0.key < $1.key }) {
            var name = key
            while fixedFields.contains(name) || (name != key && metadata[name] != nil) { name = "meta_" + name }
            text += ","
            appendString(name, to: &text)
            text += ":"
            appendValue(value, to: &text)
        }
        text += ",\"source\":"
        appendString(source, to: &text)
        text += ",\"file\":"
        appendString(file, to: &text)
        text += ",\"line\":\(line)}\n"
        return text
    }

    private static func appendValue(_ value: Logger.MetadataValue, to text: inout String) {
        switch value {
        case .string(let string):
            appendString(string, to: &text)
        case .stringConvertible(let convertible):
            appendString(convertible.description, to: &text)
        case .dictionary(let dictionary):
            text += "{"
            for (index, (key, value)) in dictionary.sorted(by: { $0.key < $1.key }).enumerated() {
                if index > 0 { text += "," }
                appendString(key, to: &text)
                text += ":"
                appendValue(value, to: &text)
            }
            text += "}"
        case .array(let array):
            text += "["
            for (index, value) in array.enumerated() {
                if index > 0 { text += "," }
                appendValue(value, to: &text)
            }
            text += "]"
        }
    }

    /// A JSON string literal (RFC 8259): `"` and `\` escaped, control characters as `\n`,
    /// `\t`, … or `\u00XX`; U+2028 and U+2029 too, for consumers that embed lines in
    /// JavaScript. Everything else is written as UTF-8.
    static func appendString(_ string: String, to text: inout String) {
        text += "\""
        for scalar in string.unicodeScalars {
            switch scalar {
            case "\"": text += "\\\""
            case "\\": text += "\\\\"
            case "\n": text += "\\n"
            case "\r": text += "\\r"
            case "\t": text += "\\t"
            case "\u{08}": text += "\\b"
            case "\u{0C}": text += "\\f"
            case "\u{00}"..."\u{1F}", "\u{7F}", "\u{2028}", "\u{2029}":
                text += "\\u" + String(format: "%04x", scalar.value)
            default:
                text.unicodeScalars.append(scalar)
            }
        }
        text += "\""
    }

    /// RFC 3339 in UTC with milliseconds, e.g. `2025-01-31T12:34:56.789Z`.
    static func timestamp(_ date: Date) -> String {
        let interval = date.timeIntervalSince1970
        var seconds = time_t(interval.rounded(.down))
        let milliseconds = Int((interval - Double(seconds)) * 1000) // truncated, never 1000
        var parts = tm()
        gmtime_r(&seconds, &parts)
        return String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
                      Int(parts.tm_year) + 1900, Int(parts.tm_mon) + 1, Int(parts.tm_mday),
                      Int(parts.tm_hour), Int(parts.tm_min), Int(parts.tm_sec), min(milliseconds, 999))
    }
}

/// Whole lines to stderr, one at a time.
enum StandardError {
    private static let lock = Mutex(())

    @Sendable static func write(_ line: String) {
        var bytes = Array(line.utf8)
        lock.withLock { _ in
            bytes.withUnsafeMutableBytes { buffer in
                var offset = 0
                while offset < buffer.count {
                    let written = Foundation.write(2, buffer.baseAddress! + offset, buffer.count - offset)
                    if written < 0 {
                        if errno == EINTR { continue }
                        return // stderr is gone: nothing better to do with a log line
                    }
                    offset += written
                }
            }
        }
    }
}
