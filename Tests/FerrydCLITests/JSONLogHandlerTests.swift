@testable import FerrydCLI
import Foundation
import Logging
import Synchronization
import Testing

/// The JSON log format: every line parses, carries the documented fields, and keeps any text
/// intact; and the format ferryd picks from its arguments and environment before parsing.
@Suite struct JSONLogHandlerTests {
    /// A logger whose lines are collected rather than written.
    final class Capture: Sendable {
        let lines = Mutex<[String]>([])

        func logger(label: String = "ferryd", provider: Logger.MetadataProvider? = nil) -> Logger {
            var logger = Logger(label: label) { label in
                JSONLogHandler(label: label, metadataProvider: provider) { line in self.lines.withLock { $0.append(line) } }
            }
            logger.logLevel = .trace
            return logger
        }

        /// Each line parsed; a line that does not parse fails the test.
        func objects(sourceLocation: SourceLocation = #_sourceLocation) throws -> [[String: Any]] {
            try lines.withLock { $0 }.map { line in
                #expect(line.hasSuffix("\n") && line.dropLast().firstIndex(of: "\n") == nil, "one line per event: \(line)", sourceLocation: sourceLocation)
                return try #require(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], sourceLocation: sourceLocation)
            }
        }
    }

    static func parse(_ line: String) throws -> [String: Any] {
        try #require(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
    }

    @Test func fixedFieldsComeFirstAndMetadataFollows() throws {
        let line = JSONLogHandler.line(
            time: Date(timeIntervalSince1970: 1_738_326_896.789_6), level: .notice, label: "ferryd", message: "job started",
            metadata: ["replica": "host:12:ab12", "job_id": "0a1b", "attempt": .stringConvertible(2)],
            source: "Executors", file: "Executors/ExecutorPool.swift", line: 201)
        #expect(line.hasPrefix(#"{"ts":"2025-01-31T12:34:56.789Z","level":"notice","logger":"ferryd","message":"job started","#))
        let object = try Self.parse(line)
        #expect(object["job_id"] as? String == "0a1b")
        #expect(object["attempt"] as? String == "2")
        #expect(object["replica"] as? String == "host:12:ab12")
        #expect(object["source"] as? String == "Executors")
        #expect(object["file"] as? String == "Executors/ExecutorPool.swift")
        #expect(object["line"] as? Int == 201)
        #expect(object.count == 10)
    }

    @Test func timestampsAreRFC3339UTCWithMilliseconds() {
        #expect(JSONLogHandler.timestamp(Date(timeIntervalSince1970: 0)) == "1970-01-01T00:00:00.000Z")
        // Truncated, never rounded up into the next second.
        #expect(JSONLogHandler.timestamp(Date(timeIntervalSince1970: 951_782_399.9999)) == "2000-02-28T23:59:59.999Z")
        #expect(JSONLogHandler.timestamp(Date(timeIntervalSince1970: 951_782_400.0055)) == "2000-02-29T00:00:00.005Z")
    }

    @Test func controlCharactersQuotesAndUnicodeRoundTrip() throws {
        let nasty = "quote \" backslash \\ slash / newline \n cr \r tab \t nul \u{0} bell \u{7} esc \u{1B} del \u{7F} sep \u{2028}\u{2029} é 漢 🚢 \u{FEFF}"
        let line = JSONLogHandler.line(
            time: Date(), level: .error, label: "lab\"el\n", message: nasty, metadata: [nasty: .string(nasty)],
            source: "S", file: "F", line: 1)
        #expect(!line.dropLast().contains("\n"))
        #expect(line.unicodeScalars.allSatisfy { $0.value >= 0x20 || $0 == "\n" })
        let object = try Self.parse(line)
        #expect(object["message"] as? String == nasty)
        #expect(object["logger"] as? String == "lab\"el\n")
        #expect(object[nasty] as? String == nasty)
    }

    @Test func randomTextAlwaysParsesBack() throws {
        var generator = SystemRandomNumberGenerator()
        // Mostly ASCII control and punctuation, some of everything else (surrogates excluded:
        // they are not scalars).
        func randomText() -> String {
            var scalars = String.UnicodeScalarView()
            for _ in 0..<Int.random(in: 0...40, using: &generator) {
                let value: UInt32 = switch Int.random(in: 0..<4, using: &generator) {
                case 0: UInt32.random(in: 0...0x20, using: &generator)
                case 1: UInt32.random(in: 0x21...0x7F, using: &generator)
                case 2: UInt32.random(in: 0x80...0xD7FF, using: &generator)
                default: UInt32.random(in: 0xE000...0x10FFFF, using: &generator)
                }
                scalars.append(Unicode.Scalar(value) ?? "?")
            }
            return String(scalars)
        }
        for _ in 0..<500 {
            let (message, key, value) = (randomText(), "k" + randomText(), randomText())
            let line = JSONLogHandler.line(time: Date(), level: .info, label: "l", message: message, metadata: [key: .string(value)], source: "s", file: "f", line: 3)
            let object = try Self.parse(line)
            #expect(object["message"] as? String == message)
            #expect(object[key] as? String == value)
        }
    }

    @Test func nestedMetadataBecomesObjectsAndArrays() throws {
        let line = JSONLogHandler.line(
            time: Date(), level: .info, label: "ferryd", message: "m",
            metadata: ["tables": .array(["a", .dictionary(["rows": "3"]), .array([])]), "empty": .dictionary([:])],
            source: "s", file: "f", line: 1)
        let object = try Self.parse(line)
        let tables = try #require(object["tables"] as? [Any])
        #expect(tables.count == 3)
        #expect(tables[0] as? String == "a")
        #expect((tables[1] as? [String: Any])?["rows"] as? String == "3")
        #expect((tables[2] as? [Any])?.isEmpty == true)
        #expect((object["empty"] as? [String: Any])?.isEmpty == true)
    }

    @Test func metadataNamedLikeAFixedFieldIsPrefixed() throws {
        let line = JSONLogHandler.line(
            time: Date(timeIntervalSince1970: 0), level: .info, label: "ferryd", message: "the message",
            metadata: ["message": "mine", "ts": "t", "meta_ts": "already", "line": "7", "level": "x", "logger": "y", "source": "z", "file": "w"],
            source: "s", file: "f", line: 1)
        let object = try Self.parse(line)
        #expect(object["message"] as? String == "the message")
        #expect(object["meta_message"] as? String == "mine")
        #expect(object["ts"] as? String == "1970-01-01T00:00:00.000Z")
        #expect(object["meta_ts"] as? String == "already")
        #expect(object["meta_meta_ts"] as? String == "t")
        #expect(object["line"] as? Int == 1)
        #expect(object["meta_line"] as? String == "7")
        for key in ["level", "logger", "source", "file"] { #expect(object["meta_" + key] != nil, "\(key)") }
    }

    @Test func handlerMergesLoggerProviderAndCallMetadata() throws {
        let capture = Capture()
        let provider = Logger.MetadataProvider { ["provided": "p", "shared": "provider"] }
        var logger = capture.logger(provider: provider)
        logger[metadataKey: "job_id"] = "j1"
        logger[metadataKey: "shared"] = "logger"
        logger.info("one", metadata: ["attempt": "1"])
        logger.warning("two", metadata: ["shared": "call"])
        logger.debug("three")
        struct Failure: Error, CustomStringConvertible { var description: String { "it broke\non two lines" } }
        logger.log(level: .error, "four", error: Failure())
        let objects = try capture.objects()
        try #require(objects.count == 4)
        #expect(objects[0]["job_id"] as? String == "j1")
        #expect(objects[0]["attempt"] as? String == "1")
        #expect(objects[0]["provided"] as? String == "p")
        #expect(objects[0]["shared"] as? String == "provider")
        #expect(objects[1]["shared"] as? String == "call")
        #expect(objects[2]["level"] as? String == "debug")
        #expect(objects[2]["source"] as? String == "FerrydCLITests")
        #expect(objects[3]["error.message"] as? String == "it broke\non two lines")
        #expect((objects[3]["error.type"] as? String)?.hasSuffix("Failure") == true)
        #expect(objects.allSatisfy { $0["logger"] as? String == "ferryd" })
    }

    @Test func concurrentLinesStayWhole() async throws {
        let capture = Capture()
        let logger = capture.logger()
        await withTaskGroup(of: Void.self) { group in
            for task in 0..<8 {
                group.addTask {
                    for index in 0..<200 { logger.info("line \(index)", metadata: ["task": "\(task)", "padding": "\(String(repeating: "x", count: index * 20))"]) }
                }
            }
        }
        let objects = try capture.objects()
        #expect(objects.count == 1600)
    }

    @Test(arguments: [
        ([], [:], LogFormat.text),
        (["serve", "--log-format", "json"], [:], .json),
        (["serve", "--log-format=json"], [:], .json),
        (["--log-format=JSON", "serve"], [:], .json),
        (["serve"], ["FERRY_LOG_FORMAT": "json"], .json),
        (["serve", "--log-format", "text"], ["FERRY_LOG_FORMAT": "json"], .text),
        (["serve", "--log-format=json", "--log-format", "text"], [:], .text),
        // Unknown values: text here, refused by the parser or at start-up.
        (["serve", "--log-format", "xml"], ["FERRY_LOG_FORMAT": "json"], .text),
        (["serve"], ["FERRY_LOG_FORMAT": "xml"], .text),
        (["serve", "--log-format"], [:], .text),
        (["serve", "--", "--log-format=json"], [:], .text),
        (["serve"], ["FERRY_LOG_FORMAT": ""], .text),
    ] as [([String], [String: String], LogFormat)])
    func formatIsReadBeforeParsing(arguments: [String], environment: [String: String], expected: LogFormat) {
        #expect(LogFormat.requested(arguments: arguments, environment: environment) == expected)
    }
}
