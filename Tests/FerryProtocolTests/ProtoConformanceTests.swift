// Checks the Swift message types in Sources/FerryProtocol/Messages against proto/ferry/v1/*.proto,
// the source of truth of `ferry/1` (DESIGN.md §4): every proto message has a Swift type of the
// same name whose JSON has exactly the proto3 JSON field names and value shapes, every enum has
// the same values in the same order, and `FerryMethod` lists exactly the proto's methods.
//
// The checks are plain functions returning a list of problems, so the "catches a mismatch"
// tests at the end can run them against deliberately broken proto text and see them fail.

import Foundation
import Testing

@testable import FerryProtocol

// MARK: - Fully populated examples, one per message type

private let exampleTime = ProtoTimestamp(Date(timeIntervalSince1970: 1_795_000_000))
private let laterTime = ProtoTimestamp(Date(timeIntervalSince1970: 1_795_000_600))

extension CloneParams {
    static let example = CloneParams(sourceInstance: "eu-1", sourceTenant: "acme", targetInstance: "us-1", targetTenant: "acme_copy")
}

extension ExportParams {
    static let example = ExportParams(sourceInstance: "eu-1", sourceTenant: "acme")
}

extension ImportParams {
    static let example = ImportParams(artifactId: "0b5a2c1e-6f2d-4c1a-9d7e-2f1e0c9b8a71", targetInstance: "us-1", targetTenant: "acme")
}

extension InstanceReplaceParams {
    static let example = InstanceReplaceParams(sourceInstance: "eu-1", targetInstance: "eu-2", tenants: ["acme", "globex"])
}

extension JobParams {
    static let example = JobParams(clone: .example, export: .example, import: .example, instanceReplace: .example)
}

extension StartJobRequest {
    static let example = StartJobRequest(
        clone: .example, export: .example, import: .example, instanceReplace: .example,
        queue: true, requestId: "req-1")
}

extension RerunJobRequest {
    static let example = RerunJobRequest(jobId: "5f0c6c4e-3a8b-4d39-9a43-8a3c1f6f2b10", queue: true, requestId: "req-2")
}

extension GetJobRequest {
    static let example = GetJobRequest(jobId: "5f0c6c4e-3a8b-4d39-9a43-8a3c1f6f2b10")
}

extension CancelJobRequest {
    static let example = CancelJobRequest(jobId: "5f0c6c4e-3a8b-4d39-9a43-8a3c1f6f2b10")
}

extension WatchJobRequest {
    static let example = WatchJobRequest(jobId: "5f0c6c4e-3a8b-4d39-9a43-8a3c1f6f2b10", afterSeq: 17)
}

extension ListJobsRequest {
    static let example = ListJobsRequest(status: .running, kind: .clone, instance: "eu-1", pageSize: 50, pageToken: "page-2")
}

extension ListJobsResponse {
    static let example = ListJobsResponse(jobs: [.example], nextPageToken: "page-3")
}

extension JobProgress {
    static let example = JobProgress(
        phase: "data", tablesTotal: 12, tablesDone: 5, rowsCopied: 1_234_567, bytesCopied: 9_876_543_210,
        tenantsTotal: 1, tenantsDone: 0, current: "acme.orders")
}

extension JobError {
    static let example = JobError(code: "UNAVAILABLE", message: "source instance eu-1 unreachable", retryable: true)
}

extension Job {
    static let example = Job(
        id: "5f0c6c4e-3a8b-4d39-9a43-8a3c1f6f2b10", kind: .clone, status: .failed, params: .example,
        attempt: 2, rerunOf: "1d7f9a02-44c1-4b8e-8f0e-6a2b3c4d5e6f", rootJobId: "1d7f9a02-44c1-4b8e-8f0e-6a2b3c4d5e6f",
        progress: .example, error: .example,
        createdAt: exampleTime, startedAt: exampleTime, finishedAt: laterTime,
        createdBy: "ops-bot")
}

extension JobEvent {
    static let example = JobEvent(
        seq: 3, type: .status, job: .example, progress: .example, status: .failed, error: .example,
        at: laterTime, jobId: "5f0c6c4e-3a8b-4d39-9a43-8a3c1f6f2b10")
}

extension Instance {
    static let example = Instance(id: "eu-1", dsn: "postgres://ferry@db-eu-1/app", hasPassword: true, createdAt: exampleTime, updatedAt: laterTime)
}

extension PutInstanceRequest {
    static let example = PutInstanceRequest(id: "eu-1", dsn: "postgres://ferry:secret@db-eu-1/app")
}

extension PutInstanceResponse {
    static let example = PutInstanceResponse(instance: .example)
}

extension ListInstancesRequest {
    static let example = ListInstancesRequest()
}

extension ListInstancesResponse {
    static let example = ListInstancesResponse(instances: [.example])
}

extension ListTenantsRequest {
    static let example = ListTenantsRequest(instanceId: "eu-1")
}

extension ListTenantsResponse {
    static let example = ListTenantsResponse(tenants: ["acme", "globex"])
}

extension HealthCheckRequest {
    static let example = HealthCheckRequest()
}

extension HealthCheckResponse {
    static let example = HealthCheckResponse(status: .serving)
}

// MARK: - The explicit proto name -> Swift type tables

/// A Swift message type, reached through its fully populated example.
struct SwiftMessage: Sendable {
    let typeName: String
    let example: any Sendable
    let encodeExample: @Sendable () throws -> Data
    let roundTrips: @Sendable () throws -> Bool

    init<T: Codable & Hashable & Sendable>(_ example: T) {
        typeName = String(describing: T.self)
        self.example = example
        encodeExample = { try JSONEncoder().encode(example) }
        roundTrips = { try JSONDecoder().decode(T.self, from: JSONEncoder().encode(example)) == example }
    }
}

/// A Swift enum mirroring a proto enum.
struct SwiftEnum: Sendable {
    let typeName: String
    let rawValues: [String]

    init<E: CaseIterable & RawRepresentable>(_ type: E.Type) where E.RawValue == String {
        typeName = String(describing: E.self)
        rawValues = E.allCases.map(\.rawValue)
    }
}

/// Proto message name -> Swift type. A proto message missing here is a failure.
let swiftMessages: [String: SwiftMessage] = [
    "CloneParams": SwiftMessage(CloneParams.example),
    "ExportParams": SwiftMessage(ExportParams.example),
    "ImportParams": SwiftMessage(ImportParams.example),
    "InstanceReplaceParams": SwiftMessage(InstanceReplaceParams.example),
    "JobParams": SwiftMessage(JobParams.example),
    "StartJobRequest": SwiftMessage(StartJobRequest.example),
    "RerunJobRequest": SwiftMessage(RerunJobRequest.example),
    "GetJobRequest": SwiftMessage(GetJobRequest.example),
    "CancelJobRequest": SwiftMessage(CancelJobRequest.example),
    "WatchJobRequest": SwiftMessage(WatchJobRequest.example),
    "ListJobsRequest": SwiftMessage(ListJobsRequest.example),
    "ListJobsResponse": SwiftMessage(ListJobsResponse.example),
    "Job": SwiftMessage(Job.example),
    "JobProgress": SwiftMessage(JobProgress.example),
    "JobError": SwiftMessage(JobError.example),
    "JobEvent": SwiftMessage(JobEvent.example),
    "Instance": SwiftMessage(Instance.example),
    "PutInstanceRequest": SwiftMessage(PutInstanceRequest.example),
    "PutInstanceResponse": SwiftMessage(PutInstanceResponse.example),
    "ListInstancesRequest": SwiftMessage(ListInstancesRequest.example),
    "ListInstancesResponse": SwiftMessage(ListInstancesResponse.example),
    "ListTenantsRequest": SwiftMessage(ListTenantsRequest.example),
    "ListTenantsResponse": SwiftMessage(ListTenantsResponse.example),
    "HealthCheckRequest": SwiftMessage(HealthCheckRequest.example),
    "HealthCheckResponse": SwiftMessage(HealthCheckResponse.example),
]

/// Proto enum name -> Swift enum. A proto enum missing here is a failure.
let swiftEnums: [String: SwiftEnum] = [
    "JobKind": SwiftEnum(JobKind.self),
    "JobStatus": SwiftEnum(JobStatus.self),
    "JobEventType": SwiftEnum(JobEventType.self),
    "ServingStatus": SwiftEnum(ServingStatus.self),
]

/// The Swift side of the method list, as the checks take it.
let swiftMethods: [(name: String, isServerStreaming: Bool)] = FerryMethod.allCases.map { ($0.rawValue, $0.isServerStreaming) }

// MARK: - A small parser for the subset of proto3 the ferry files use

struct ProtoField: Sendable, Equatable {
    var name: String
    var type: String
    var number: Int
    var isRepeated: Bool
    /// The name of the oneof holding the field, if any.
    var oneof: String?
    var isDocumented: Bool

    /// The proto3 JSON name, as protoc derives it: each `_` dropped and the letter after it upper-cased.
    var jsonName: String { protoJSONName(name) }
}

struct ProtoMessage: Sendable {
    var name: String
    var file: String
    var fields: [ProtoField] = []
    /// Oneof name -> whether it has a comment.
    var oneofs: [String: Bool] = [:]
    var isDocumented: Bool
}

struct ProtoEnumValue: Sendable, Equatable {
    var name: String
    var number: Int
    var isDocumented: Bool
}

struct ProtoEnum: Sendable {
    var name: String
    var file: String
    var values: [ProtoEnumValue] = []
    var isDocumented: Bool
}

struct ProtoMethod: Sendable {
    var name: String
    var request: String
    var response: String
    var clientStreaming: Bool
    var serverStreaming: Bool
    var isDocumented: Bool
}

struct ProtoService: Sendable {
    var name: String
    var file: String
    var methods: [ProtoMethod] = []
    var isDocumented: Bool
}

struct ProtoFile: Sendable {
    var name: String
    var syntax: String?
    var package: String?
    var imports: [String] = []
    var messages: [ProtoMessage] = []
    var enums: [ProtoEnum] = []
    var services: [ProtoService] = []
}

struct ProtoParseError: Error, CustomStringConvertible {
    var description: String
}

func protoJSONName(_ name: String) -> String {
    var result = ""
    var upperNext = false
    for character in name {
        if character == "_" {
            upperNext = true
        } else if upperNext {
            result += character.uppercased()
            upperNext = false
        } else {
            result.append(character)
        }
    }
    return result
}

struct ProtoToken: Sendable {
    var text: String
    var line: Int
    var isString: Bool
    /// A comment stood on its own line(s) between the previous `;`, `{` or `}` and this token.
    var isDocumented: Bool
}

func tokenizeProto(_ source: String, file: String) throws -> [ProtoToken] {
    let chars = Array(source)
    var tokens: [ProtoToken] = []
    var i = 0
    var line = 1
    var pendingComment = false
    var lastTerminatorLine = 0
    func isIdentifierCharacter(_ c: Character) -> Bool {
        c.isLetter || c.isNumber || c == "_" || c == "." || c == "-" || c == "+"
    }
    while i < chars.count {
        let c = chars[i]
        let next: Character? = i + 1 < chars.count ? chars[i + 1] : nil
        if c == "\n" {
            line += 1
            i += 1
        } else if c.isWhitespace {
            i += 1
        } else if c == "/" && next == "/" {
            if line > lastTerminatorLine { pendingComment = true }
            while i < chars.count && chars[i] != "\n" { i += 1 }
        } else if c == "/" && next == "*" {
            if line > lastTerminatorLine { pendingComment = true }
            i += 2
            while i < chars.count && !(chars[i] == "*" && i + 1 < chars.count && chars[i + 1] == "/") {
                if chars[i] == "\n" { line += 1 }
                i += 1
            }
            guard i < chars.count else { throw ProtoParseError(description: "\(file):\(line): unterminated comment") }
            i += 2
        } else if c == "\"" || c == "'" {
            var text = ""
            i += 1
            while i < chars.count && chars[i] != c {
                if chars[i] == "\\" && i + 1 < chars.count { i += 1 }
                if chars[i] == "\n" { throw ProtoParseError(description: "\(file):\(line): newline in string") }
                text.append(chars[i])
                i += 1
            }
            guard i < chars.count else { throw ProtoParseError(description: "\(file):\(line): unterminated string") }
            i += 1
            tokens.append(ProtoToken(text: text, line: line, isString: true, isDocumented: pendingComment))
        } else if isIdentifierCharacter(c) {
            var text = ""
            while i < chars.count && isIdentifierCharacter(chars[i]) {
                text.append(chars[i])
                i += 1
            }
            tokens.append(ProtoToken(text: text, line: line, isString: false, isDocumented: pendingComment))
        } else if "{}()[];=<>,".contains(c) {
            tokens.append(ProtoToken(text: String(c), line: line, isString: false, isDocumented: pendingComment))
            i += 1
            if c == ";" || c == "{" || c == "}" {
                pendingComment = false
                lastTerminatorLine = line
            }
        } else {
            throw ProtoParseError(description: "\(file):\(line): unexpected character '\(c)'")
        }
    }
    return tokens
}

struct ProtoParser {
    let file: String
    var tokens: [ProtoToken]
    var position = 0

    init(source: String, file: String) throws {
        self.file = file
        tokens = try tokenizeProto(source, file: file)
    }

    private var atEnd: Bool { position >= tokens.count }

    private func peek() -> ProtoToken? { atEnd ? nil : tokens[position] }

    private func error(_ message: String) -> ProtoParseError {
        ProtoParseError(description: "\(file):\(peek()?.line ?? tokens.last?.line ?? 0): \(message)")
    }

    private mutating func next() throws -> ProtoToken {
        guard let token = peek() else { throw error("unexpected end of file") }
        position += 1
        return token
    }

    private mutating func expect(_ text: String) throws {
        let token = try next()
        guard token.text == text, !token.isString else {
            throw ProtoParseError(description: "\(file):\(token.line): expected '\(text)', found '\(token.text)'")
        }
    }

    private mutating func identifier() throws -> String {
        let token = try next()
        guard !token.isString, let first = token.text.first, first.isLetter || first == "_" || first == "." else {
            throw ProtoParseError(description: "\(file):\(token.line): expected a name, found '\(token.text)'")
        }
        return token.text
    }

    private mutating func integer() throws -> Int {
        let token = try next()
        guard !token.isString, let value = Int(token.text) else {
            throw ProtoParseError(description: "\(file):\(token.line): expected a number, found '\(token.text)'")
        }
        return value
    }

    /// Skips a statement such as `option ...;` or `reserved ...;`, through its `;`.
    private mutating func skipStatement() throws {
        while try next().text != ";" {}
    }

    /// Skips `[ ... ]` field options if present.
    private mutating func skipFieldOptions() throws {
        guard peek()?.text == "[" else { return }
        while try next().text != "]" {}
    }

    mutating func parseFile() throws -> ProtoFile {
        var result = ProtoFile(name: file)
        while let token = peek() {
            switch token.text {
            case "syntax":
                position += 1
                try expect("=")
                result.syntax = try next().text
                try expect(";")
            case "package":
                position += 1
                result.package = try identifier()
                try expect(";")
            case "import":
                position += 1
                var path = try next()
                if !path.isString, path.text == "public" || path.text == "weak" { path = try next() }
                result.imports.append(path.text)
                try expect(";")
            case "option":
                try skipStatement()
            case "message":
                result.messages.append(try parseMessage())
            case "enum":
                result.enums.append(try parseEnum())
            case "service":
                result.services.append(try parseService())
            case ";":
                position += 1
            default:
                throw error("unexpected '\(token.text)' at top level")
            }
        }
        return result
    }

    private mutating func parseMessage() throws -> ProtoMessage {
        let documented = try next().isDocumented  // "message"
        var message = ProtoMessage(name: try identifier(), file: file, isDocumented: documented)
        try expect("{")
        while true {
            guard let token = peek() else { throw error("unterminated message \(message.name)") }
            switch token.text {
            case "}":
                position += 1
                return message
            case "message", "enum":
                throw error("nested \(token.text) in \(message.name): keep messages flat")
            case "option", "reserved", "extensions":
                try skipStatement()
            case ";":
                position += 1
            case "oneof":
                position += 1
                let oneof = try identifier()
                message.oneofs[oneof] = token.isDocumented
                try expect("{")
                while peek()?.text != "}" {
                    if peek()?.text == "option" { try skipStatement(); continue }
                    message.fields.append(try parseField(oneof: oneof))
                }
                try expect("}")
            default:
                message.fields.append(try parseField(oneof: nil))
            }
        }
    }

    private mutating func parseField(oneof: String?) throws -> ProtoField {
        let documented = peek()?.isDocumented ?? false
        var repeated = false
        if peek()?.text == "repeated" {
            repeated = true
            position += 1
        } else if peek()?.text == "optional" {
            position += 1
        }
        if peek()?.text == "map" { throw error("map fields are not supported") }
        let type = try identifier()
        let name = try identifier()
        try expect("=")
        let number = try integer()
        try skipFieldOptions()
        try expect(";")
        return ProtoField(name: name, type: type, number: number, isRepeated: repeated, oneof: oneof, isDocumented: documented)
    }

    private mutating func parseEnum() throws -> ProtoEnum {
        let documented = try next().isDocumented  // "enum"
        var result = ProtoEnum(name: try identifier(), file: file, isDocumented: documented)
        try expect("{")
        while true {
            guard let token = peek() else { throw error("unterminated enum \(result.name)") }
            switch token.text {
            case "}":
                position += 1
                return result
            case "option", "reserved":
                try skipStatement()
            case ";":
                position += 1
            default:
                let name = try identifier()
                try expect("=")
                let number = try integer()
                try skipFieldOptions()
                try expect(";")
                result.values.append(ProtoEnumValue(name: name, number: number, isDocumented: token.isDocumented))
            }
        }
    }

    private mutating func parseService() throws -> ProtoService {
        let documented = try next().isDocumented  // "service"
        var service = ProtoService(name: try identifier(), file: file, isDocumented: documented)
        try expect("{")
        while true {
            guard let token = peek() else { throw error("unterminated service \(service.name)") }
            switch token.text {
            case "}":
                position += 1
                return service
            case "option":
                try skipStatement()
            case ";":
                position += 1
            case "rpc":
                position += 1
                let name = try identifier()
                try expect("(")
                var clientStreaming = false
                if peek()?.text == "stream" && tokens.count > position + 1 && tokens[position + 1].text != ")" {
                    clientStreaming = true
                    position += 1
                }
                let request = try identifier()
                try expect(")")
                try expect("returns")
                try expect("(")
                var serverStreaming = false
                if peek()?.text == "stream" && tokens.count > position + 1 && tokens[position + 1].text != ")" {
                    serverStreaming = true
                    position += 1
                }
                let response = try identifier()
                try expect(")")
                if peek()?.text == "{" {
                    position += 1
                    while peek()?.text != "}" {
                        guard peek()?.text == "option" else { throw error("unexpected '\(peek()?.text ?? "")' in rpc body") }
                        try skipStatement()
                    }
                    try expect("}")
                } else {
                    try expect(";")
                }
                service.methods.append(ProtoMethod(
                    name: name, request: request, response: response,
                    clientStreaming: clientStreaming, serverStreaming: serverStreaming,
                    isDocumented: token.isDocumented))
            default:
                throw error("unexpected '\(token.text)' in service \(service.name)")
            }
        }
    }
}

/// Every parsed file, with the declarations of all of them merged.
struct ProtoSchema: Sendable {
    var files: [ProtoFile]

    var messages: [ProtoMessage] { files.flatMap(\.messages) }
    var enums: [ProtoEnum] { files.flatMap(\.enums) }
    var services: [ProtoService] { files.flatMap(\.services) }

    func message(_ name: String) -> ProtoMessage? { messages.first { $0.name == localName(name) } }
    func enumeration(_ name: String) -> ProtoEnum? { enums.first { $0.name == localName(name) } }

    /// `ferry.v1.Job` and `.ferry.v1.Job` name the same message as `Job`.
    func localName(_ type: String) -> String {
        var name = type.hasPrefix(".") ? String(type.dropFirst()) : type
        if name.hasPrefix("ferry.v1.") { name = String(name.dropFirst("ferry.v1.".count)) }
        return name
    }

    init(files: [ProtoFile]) { self.files = files }

    init(sources: [(file: String, text: String)]) throws {
        var parsed: [ProtoFile] = []
        for source in sources {
            var parser = try ProtoParser(source: source.text, file: source.file)
            parsed.append(try parser.parseFile())
        }
        self.init(files: parsed)
    }
}

let protoDirectory = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent()  // FerryProtocolTests
    .deletingLastPathComponent()  // Tests
    .deletingLastPathComponent()  // package root
    .appendingPathComponent("proto/ferry/v1")

let expectedProtoFiles = ["health.proto", "instances.proto", "jobs.proto"]

func loadProtoSources() throws -> [(file: String, text: String)] {
    let names = try FileManager.default.contentsOfDirectory(atPath: protoDirectory.path)
        .filter { $0.hasSuffix(".proto") }
        .sorted()
    return try names.map { name in
        (name, try String(contentsOf: protoDirectory.appendingPathComponent(name), encoding: .utf8))
    }
}

func loadProtoSchema() throws -> ProtoSchema {
    try ProtoSchema(sources: loadProtoSources())
}

/// The real sources with `edit` applied to one file's text, for the "catches a mismatch" tests.
func editedSchema(_ file: String, _ edit: (String) -> String) throws -> ProtoSchema {
    let sources = try loadProtoSources().map { source in
        source.file == file ? (source.file, edit(source.text)) : source
    }
    return try ProtoSchema(sources: sources)
}

// MARK: - JSON as the checks look at it

/// The checks look at encoded messages through the protocol's own JSON value type.
typealias ProbeJSON = JSONValue

extension JSONValue {
    static func parse(_ data: Data) throws -> JSONValue {
        try JSONDecoder().decode(JSONValue.self, from: data)
    }
}

// MARK: - The checks: each returns the problems it found

let int32Types: Set<String> = ["int32", "sint32", "sfixed32", "uint32", "fixed32"]
let int64Types: Set<String> = ["int64", "sint64", "sfixed64", "uint64", "fixed64"]
let scalarTypes: Set<String> = int32Types.union(int64Types).union(["string", "bool", "bytes", "double", "float"])
let timestampType = "google.protobuf.Timestamp"

/// Problems with the proto files themselves: unresolved types, duplicate names and numbers,
/// enums without a zero `<ENUM>_UNSPECIFIED` value, enum value names clashing across the package.
func consistencyIssues(_ schema: ProtoSchema) -> [String] {
    var issues: [String] = []
    let fileNames = Set(schema.files.map(\.name))
    for expected in expectedProtoFiles where !fileNames.contains(expected) {
        issues.append("missing proto file \(expected)")
    }
    for file in schema.files {
        if file.syntax != "proto3" { issues.append("\(file.name): syntax is \(file.syntax ?? "unset"), not proto3") }
        if file.package != "ferry.v1" { issues.append("\(file.name): package is \(file.package ?? "unset"), not ferry.v1") }
        let usesTimestamp = file.messages.contains { $0.fields.contains { schema.localName($0.type) == timestampType } }
        if usesTimestamp && !file.imports.contains("google/protobuf/timestamp.proto") {
            issues.append("\(file.name): uses \(timestampType) without importing google/protobuf/timestamp.proto")
        }
    }
    var typeNames: [String: Int] = [:]
    for name in schema.messages.map(\.name) + schema.enums.map(\.name) + schema.services.map(\.name) {
        typeNames[name, default: 0] += 1
    }
    for (name, count) in typeNames where count > 1 { issues.append("\(name) is declared \(count) times") }

    for message in schema.messages {
        var numbers: Set<Int> = []
        var jsonNames: Set<String> = []
        for field in message.fields {
            if field.number < 1 || !numbers.insert(field.number).inserted {
                issues.append("\(message.name).\(field.name): bad or duplicate field number \(field.number)")
            }
            if !jsonNames.insert(field.jsonName).inserted {
                issues.append("\(message.name).\(field.name): duplicate JSON name \(field.jsonName)")
            }
            let type = schema.localName(field.type)
            if !scalarTypes.contains(type) && type != timestampType && schema.message(type) == nil && schema.enumeration(type) == nil {
                issues.append("\(message.name).\(field.name): unknown type \(field.type)")
            }
            if field.oneof != nil && field.isRepeated {
                issues.append("\(message.name).\(field.name): repeated field in a oneof")
            }
        }
    }

    var enumValueNames: [String: String] = [:]
    for enumeration in schema.enums {
        let prefix = screamingSnakeCase(enumeration.name)
        if let first = enumeration.values.first {
            if first.number != 0 || first.name != "\(prefix)_UNSPECIFIED" {
                issues.append("\(enumeration.name): first value must be \(prefix)_UNSPECIFIED = 0, is \(first.name) = \(first.number)")
            }
        } else {
            issues.append("\(enumeration.name): no values")
        }
        var numbers: Set<Int> = []
        for value in enumeration.values {
            if !numbers.insert(value.number).inserted {
                issues.append("\(enumeration.name).\(value.name): duplicate number \(value.number)")
            }
            if let other = enumValueNames[value.name] {
                issues.append("enum value \(value.name) is in both \(other) and \(enumeration.name): names must be unique in the package")
            }
            enumValueNames[value.name] = enumeration.name
        }
    }

    for service in schema.services {
        var names: Set<String> = []
        for method in service.methods {
            if !names.insert(method.name).inserted { issues.append("\(service.name).\(method.name) is declared twice") }
            for type in [method.request, method.response] where schema.message(type) == nil {
                issues.append("\(service.name).\(method.name): \(type) is not a declared message")
            }
        }
    }
    return issues
}

func screamingSnakeCase(_ name: String) -> String {
    var result = ""
    var previous: Character?
    for character in name {
        if character.isUppercase, let previous, previous.isLowercase || previous.isNumber { result += "_" }
        result += character.uppercased()
        previous = character
    }
    return result
}

/// Declarations without a comment: the .proto files are what other-language clients are written from.
func documentationIssues(_ schema: ProtoSchema) -> [String] {
    var issues: [String] = []
    for service in schema.services {
        if !service.isDocumented { issues.append("service \(service.name) has no comment") }
        for method in service.methods where !method.isDocumented {
            issues.append("rpc \(service.name).\(method.name) has no comment")
        }
    }
    for message in schema.messages {
        if !message.isDocumented { issues.append("message \(message.name) has no comment") }
        for field in message.fields where !field.isDocumented {
            issues.append("field \(message.name).\(field.name) has no comment")
        }
        for (oneof, documented) in message.oneofs where !documented {
            issues.append("oneof \(message.name).\(oneof) has no comment")
        }
    }
    for enumeration in schema.enums {
        if !enumeration.isDocumented { issues.append("enum \(enumeration.name) has no comment") }
        for value in enumeration.values where !value.isDocumented {
            issues.append("enum value \(enumeration.name).\(value.name) has no comment")
        }
    }
    return issues
}

/// Whether a reflected stored property holds nothing (nil, or an empty collection).
private func isEmptyValue(_ value: Any) -> Bool {
    let mirror = Mirror(reflecting: value)
    switch mirror.displayStyle {
    case .optional?, .collection?: return mirror.children.isEmpty
    default: return false
    }
}

/// Problems in `json` as the JSON of proto message `messageName`: keys other than exactly the
/// proto's JSON names, and values whose shape does not fit the field's proto type.
func jsonIssues(_ json: ProbeJSON, message messageName: String, schema: ProtoSchema, path: String) -> [String] {
    guard let message = schema.message(messageName) else { return ["\(path): no proto message \(messageName)"] }
    guard case .object(let object) = json else { return ["\(path): expected a JSON object for \(messageName), got \(json)"] }
    var issues: [String] = []
    let expected = Set(message.fields.map(\.jsonName))
    let actual = Set(object.keys)
    for key in expected.subtracting(actual).sorted() { issues.append("\(path): missing key \"\(key)\"") }
    for key in actual.subtracting(expected).sorted() { issues.append("\(path): unexpected key \"\(key)\" (not in the proto)") }
    for field in message.fields {
        guard let value = object[field.jsonName] else { continue }
        let fieldPath = "\(path).\(field.jsonName)"
        if field.isRepeated {
            guard case .array(let elements) = value else {
                issues.append("\(fieldPath): repeated field must be a JSON array, got \(value)")
                continue
            }
            if elements.isEmpty { issues.append("\(fieldPath): example array is empty, so its elements go unchecked") }
            for (index, element) in elements.enumerated() {
                issues += valueIssues(element, type: field.type, schema: schema, path: "\(fieldPath)[\(index)]")
            }
        } else {
            issues += valueIssues(value, type: field.type, schema: schema, path: fieldPath)
        }
    }
    return issues
}

/// Problems with one singular JSON value of proto type `type`.
func valueIssues(_ value: ProbeJSON, type protoType: String, schema: ProtoSchema, path: String) -> [String] {
    let type = schema.localName(protoType)
    switch (type, value) {
    case ("string", .string), ("bytes", .string), ("bool", .bool), ("double", .number), ("float", .number):
        return []
    case (_, .number(let number)) where int32Types.contains(type):
        return number.rounded() == number && abs(number) <= Double(UInt32.max) ? [] : ["\(path): \(number) is not a 32-bit integer"]
    case (_, .string(let text)) where int64Types.contains(type):
        return Int64(text) != nil || UInt64(text) != nil ? [] : ["\(path): \"\(text)\" is not a 64-bit integer string"]
    case (_, _) where int64Types.contains(type):
        return ["\(path): a 64-bit integer must be a JSON string, got \(value)"]
    case (timestampType, .string(let text)):
        return ProtoTimestamp.parse(text) != nil ? [] : ["\(path): \"\(text)\" is not an RFC 3339 timestamp"]
    default:
        break
    }
    if let enumeration = schema.enumeration(type) {
        guard case .string(let name) = value, enumeration.values.contains(where: { $0.name == name }) else {
            return ["\(path): \(value) is not a value name of enum \(type)"]
        }
        return []
    }
    if schema.message(type) != nil {
        return jsonIssues(value, message: type, schema: schema, path: path)
    }
    return ["\(path): \(value) does not fit proto type \(protoType)"]
}

/// Problems between the proto messages and the Swift types in `table`.
func messageIssues(_ schema: ProtoSchema, table: [String: SwiftMessage]) -> [String] {
    var issues: [String] = []
    for message in schema.messages.sorted(by: { $0.name < $1.name }) {
        guard let swift = table[message.name] else {
            issues.append("proto message \(message.name) has no Swift type in the table")
            continue
        }
        if swift.typeName != message.name {
            issues.append("proto message \(message.name) is mapped to Swift type \(swift.typeName): names must match")
        }
        // The Swift stored properties, by name: exactly the proto JSON names, each set in the example.
        let children = Mirror(reflecting: swift.example).children
        let propertyNames = Set(children.compactMap(\.label))
        let expected = Set(message.fields.map(\.jsonName))
        for name in expected.subtracting(propertyNames).sorted() {
            issues.append("\(message.name): Swift type has no property \(name)")
        }
        for name in propertyNames.subtracting(expected).sorted() {
            issues.append("\(message.name): Swift property \(name) is not a field of the proto message")
        }
        for child in children where isEmptyValue(child.value) {
            issues.append("\(message.name).example leaves \(child.label ?? "?") empty: populate every field")
        }
        do {
            issues += jsonIssues(try ProbeJSON.parse(swift.encodeExample()), message: message.name, schema: schema, path: message.name)
            if try !swift.roundTrips() { issues.append("\(message.name): example does not survive a JSON round trip") }
        } catch {
            issues.append("\(message.name): \(error)")
        }
    }
    for name in Set(table.keys).subtracting(schema.messages.map(\.name)).sorted() {
        issues.append("Swift table has \(name), which is not a proto message")
    }
    return issues
}

/// Problems between the proto enums and the Swift enums in `table`.
func enumIssues(_ schema: ProtoSchema, table: [String: SwiftEnum]) -> [String] {
    var issues: [String] = []
    for enumeration in schema.enums.sorted(by: { $0.name < $1.name }) {
        guard let swift = table[enumeration.name] else {
            issues.append("proto enum \(enumeration.name) has no Swift enum in the table")
            continue
        }
        if swift.typeName != enumeration.name {
            issues.append("proto enum \(enumeration.name) is mapped to Swift enum \(swift.typeName): names must match")
        }
        let protoValues = enumeration.values.map(\.name)
        if swift.rawValues != protoValues {
            issues.append("\(enumeration.name): Swift raw values \(swift.rawValues) differ from proto values \(protoValues)")
        }
    }
    for name in Set(table.keys).subtracting(schema.enums.map(\.name)).sorted() {
        issues.append("Swift table has \(name), which is not a proto enum")
    }
    return issues
}

/// Problems between the proto services and `FerryMethod`.
func methodIssues(_ schema: ProtoSchema, swift: [(name: String, isServerStreaming: Bool)]) -> [String] {
    var issues: [String] = []
    var proto: [String: ProtoMethod] = [:]
    for file in schema.files {
        for service in file.services {
            for method in service.methods {
                proto["\(file.package ?? "").\(service.name)/\(method.name)"] = method
            }
        }
    }
    let swiftNames = swift.map(\.name)
    if Set(swiftNames).count != swiftNames.count { issues.append("FerryMethod has duplicate raw values: \(swiftNames)") }
    for name in Set(proto.keys).subtracting(swiftNames).sorted() { issues.append("proto method \(name) has no FerryMethod case") }
    for name in Set(swiftNames).subtracting(proto.keys).sorted() { issues.append("FerryMethod \(name) is not a proto method") }
    for method in swift {
        guard let protoMethod = proto[method.name] else { continue }
        if protoMethod.serverStreaming != method.isServerStreaming {
            issues.append("\(method.name): isServerStreaming is \(method.isServerStreaming), proto says \(protoMethod.serverStreaming)")
        }
        if protoMethod.clientStreaming {
            issues.append("\(method.name): client streaming is not part of ferry/1 (a call carries one request)")
        }
    }
    return issues
}

// MARK: - Tests

/// Records one issue listing every problem, one per line, when there are any.
func expectNoIssues(_ issues: [String], sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(issues.isEmpty, Comment(rawValue: "\n" + issues.joined(separator: "\n")), sourceLocation: sourceLocation)
}

@Suite struct ProtoConformanceTests {
    @Test func protoFilesParseAndAreConsistent() throws {
        let schema = try loadProtoSchema()
        #expect(schema.files.map(\.name).sorted() == expectedProtoFiles)
        expectNoIssues(consistencyIssues(schema))
        // The parser found what is there (guards against a parser that silently skips things).
        #expect(schema.services.map(\.name).sorted() == ["Health", "Instances", "Jobs"])
        #expect(schema.message("StartJobRequest")?.fields.filter { $0.oneof == "params" }.map(\.jsonName)
            == ["clone", "export", "import", "instanceReplace"])
        #expect(schema.message("InstanceReplaceParams")?.fields.first { $0.name == "tenants" }?.isRepeated == true)
        #expect(schema.services.first { $0.name == "Jobs" }?.methods.first { $0.name == "WatchJob" }?.serverStreaming == true)
    }

    @Test func everyProtoDeclarationIsDocumented() throws {
        expectNoIssues(documentationIssues(try loadProtoSchema()))
    }

    @Test func swiftMessagesMatchProtoMessages() throws {
        expectNoIssues(messageIssues(try loadProtoSchema(), table: swiftMessages))
    }

    @Test func swiftEnumsMatchProtoEnums() throws {
        expectNoIssues(enumIssues(try loadProtoSchema(), table: swiftEnums))
    }

    @Test func ferryMethodMatchesProtoServices() throws {
        expectNoIssues(methodIssues(try loadProtoSchema(), swift: swiftMethods))
    }

    @Test func requiredRolesFollowTheDesign() {
        let expected: [FerryMethod: Role?] = [
            .healthCheck: nil,
            .getJob: .viewer, .listJobs: .viewer, .watchJob: .viewer,
            .listInstances: .viewer, .listTenants: .viewer,
            .startJob: .operator, .rerunJob: .operator, .cancelJob: .operator,
            .putInstance: .admin,
        ]
        #expect(Set(expected.keys) == Set(FerryMethod.allCases))
        for method in FerryMethod.allCases {
            #expect(method.requiredRole == expected[method] ?? nil, "\(method.rawValue)")
        }
        #expect(Role.viewer < Role.operator && Role.operator < Role.admin && Role.viewer < Role.admin)
        #expect(!(Role.admin < Role.viewer) && !(Role.operator < Role.operator))
        #expect(Role.allCases.sorted() == [.viewer, .operator, .admin])
        #expect(Role.allCases.map(\.rawValue) == ["viewer", "operator", "admin"])
    }

    @Test func probeJSONTellsBooleansFromNumbers() throws {
        #expect(try ProbeJSON.parse(Data(#"[true, 1, "1", null, {"a": []}]"#.utf8))
            == .array([.bool(true), .number(1), .string("1"), .null, .object(["a": .array([])])]))
    }

    @Test func protoInt64IsAStringOnTheWireAndReadsBothForms() throws {
        let encoded = try JSONEncoder().encode(WatchJobRequest(afterSeq: 42))
        #expect(try ProbeJSON.parse(encoded) == .object(["afterSeq": .string("42")]))
        #expect(try JSONDecoder().decode(WatchJobRequest.self, from: Data(#"{"afterSeq":"42"}"#.utf8)).afterSeq == 42)
        #expect(try JSONDecoder().decode(WatchJobRequest.self, from: Data(#"{"afterSeq":42}"#.utf8)).afterSeq == 42)
        let big = try JSONDecoder().decode(JobProgress.self, from: Data(#"{"bytesCopied":"9223372036854775807"}"#.utf8))
        #expect(big.bytesCopied == ProtoInt64(Int64.max))
        #expect(throws: DecodingError.self) {
            try JSONDecoder().decode(WatchJobRequest.self, from: Data(#"{"afterSeq":"4x2"}"#.utf8))
        }
        #expect(throws: DecodingError.self) {
            try JSONDecoder().decode(WatchJobRequest.self, from: Data(#"{"afterSeq":true}"#.utf8))
        }
    }

    @Test func unknownFieldsAreIgnoredWhenDecodingAJob() throws {
        let json = #"""
        {
          "id": "5f0c6c4e-3a8b-4d39-9a43-8a3c1f6f2b10",
          "kind": "EXPORT",
          "status": "RUNNING",
          "attempt": 1,
          "someFutureField": {"nested": [1, 2, 3]},
          "another": "x",
          "params": {"export": {"sourceInstance": "eu-1", "sourceTenant": "acme", "extra": true}, "futureKind": {}},
          "progress": {"phase": "data", "rowsCopied": 10, "unknownCounter": "5"},
          "startedAt": "2026-11-27T06:00:00Z"
        }
        """#
        let job = try JSONDecoder().decode(Job.self, from: Data(json.utf8))
        #expect(job.id == "5f0c6c4e-3a8b-4d39-9a43-8a3c1f6f2b10")
        #expect(job.kind == .export)
        #expect(job.status == .running)
        #expect(job.attempt == 1)
        #expect(job.params == JobParams(export: ExportParams(sourceInstance: "eu-1", sourceTenant: "acme")))
        #expect(job.progress == JobProgress(phase: "data", rowsCopied: 10))
        #expect(job.startedAt == ProtoTimestamp(Date(timeIntervalSince1970: 1_795_759_200)))
        #expect(job.error == nil && job.finishedAt == nil && job.createdBy == nil)
    }

    @Test func aJobRoundTripsThroughJSON() throws {
        let data = try JSONEncoder().encode(Job.example)
        #expect(try JSONDecoder().decode(Job.self, from: data) == Job.example)
        let event = try JSONEncoder().encode(JobEvent.example)
        #expect(try JSONDecoder().decode(JobEvent.self, from: event) == JobEvent.example)
    }

    @Test func unsetFieldsAreOmittedAndMissingRepeatedFieldsReadAsEmpty() throws {
        #expect(try ProbeJSON.parse(JSONEncoder().encode(Job())) == .object([:]))
        #expect(try ProbeJSON.parse(JSONEncoder().encode(StartJobRequest(clone: .example, queue: true)))
            == .object([
                "clone": .object([
                    "sourceInstance": .string("eu-1"), "sourceTenant": .string("acme"),
                    "targetInstance": .string("us-1"), "targetTenant": .string("acme_copy"),
                ]),
                "queue": .bool(true),
            ]))
        let empty = Data("{}".utf8)
        #expect(try JSONDecoder().decode(ListJobsResponse.self, from: empty) == ListJobsResponse())
        #expect(try JSONDecoder().decode(ListInstancesResponse.self, from: empty).instances == [])
        #expect(try JSONDecoder().decode(ListTenantsResponse.self, from: empty).tenants == [])
        #expect(try JSONDecoder().decode(InstanceReplaceParams.self, from: Data(#"{"sourceInstance":"eu-1"}"#.utf8))
            == InstanceReplaceParams(sourceInstance: "eu-1"))
        #expect(try JSONDecoder().decode(HealthCheckRequest.self, from: Data(#"{"x":1}"#.utf8)) == HealthCheckRequest())
        #expect(try JSONDecoder().decode(ListInstancesRequest.self, from: empty) == ListInstancesRequest())
    }

    // MARK: The checks catch mismatches

    @Test func aProtoFieldMissingInSwiftIsCaught() throws {
        let schema = try editedSchema("jobs.proto") {
            $0.replacingOccurrences(of: "  string created_by = 13;\n", with: "  string created_by = 13;\n  // New.\n  string owner_team = 14;\n")
        }
        let issues = messageIssues(schema, table: swiftMessages)
        #expect(issues.contains("Job: Swift type has no property ownerTeam"))
        #expect(issues.contains("Job: missing key \"ownerTeam\""))
        // The same field missing from a nested Job (inside ListJobsResponse and JobEvent) is caught there too.
        #expect(issues.contains("ListJobsResponse.jobs[0]: missing key \"ownerTeam\""))
    }

    @Test func aSwiftFieldMissingInTheProtoIsCaught() throws {
        let schema = try editedSchema("jobs.proto") { $0.replacingOccurrences(of: "  string created_by = 13;\n", with: "") }
        let issues = messageIssues(schema, table: swiftMessages)
        #expect(issues.contains("Job: Swift property createdBy is not a field of the proto message"))
        #expect(issues.contains("Job: unexpected key \"createdBy\" (not in the proto)"))
    }

    @Test func aTypeMismatchIsCaught() throws {
        // attempt is Int32 in Swift, so it encodes as a number, not as an int64 string.
        let asInt64 = try editedSchema("jobs.proto") { $0.replacingOccurrences(of: "int32 attempt = 5;", with: "int64 attempt = 5;") }
        #expect(messageIssues(asInt64, table: swiftMessages).contains("Job.attempt: a 64-bit integer must be a JSON string, got number(2.0)"))
        // A message field whose Swift type is a different message: its keys do not match.
        let otherMessage = try editedSchema("jobs.proto") { $0.replacingOccurrences(of: "JobError error = 9;", with: "JobProgress error = 9;") }
        #expect(messageIssues(otherMessage, table: swiftMessages).contains("Job.error: missing key \"phase\""))
        // An enum field whose Swift values are not the proto enum's.
        let otherEnum = try editedSchema("jobs.proto") { $0.replacingOccurrences(of: "JobKind kind = 2;", with: "JobStatus kind = 2;") }
        #expect(messageIssues(otherEnum, table: swiftMessages).contains(#"Job.kind: string("CLONE") is not a value name of enum JobStatus"#))
        // A repeated field that Swift holds as a single value.
        let repeated = try editedSchema("health.proto") { $0.replacingOccurrences(of: "ServingStatus status = 1;", with: "repeated ServingStatus status = 1;") }
        #expect(messageIssues(repeated, table: swiftMessages).contains { $0.hasPrefix("HealthCheckResponse.status: repeated field must be a JSON array") })
    }

    @Test func aMessageWithoutASwiftTypeIsCaught() throws {
        let schema = try editedSchema("health.proto") { $0 + "\n// New.\nmessage HealthWatchRequest {\n}\n" }
        #expect(messageIssues(schema, table: swiftMessages).contains("proto message HealthWatchRequest has no Swift type in the table"))
        var table = swiftMessages
        table["HealthCheckResponse"] = SwiftMessage(HealthCheckRequest.example)
        #expect(messageIssues(try loadProtoSchema(), table: table).contains(
            "proto message HealthCheckResponse is mapped to Swift type HealthCheckRequest: names must match"))
    }

    @Test func anExampleThatLeavesAFieldUnsetIsCaught() throws {
        var table = swiftMessages
        table["JobError"] = SwiftMessage(JobError(code: "INTERNAL", message: "boom"))
        let issues = messageIssues(try loadProtoSchema(), table: table)
        #expect(issues.contains("JobError.example leaves retryable empty: populate every field"))
        #expect(issues.contains("JobError: missing key \"retryable\""))
    }

    @Test func anEnumMismatchIsCaught() throws {
        let added = try editedSchema("jobs.proto") { $0.replacingOccurrences(of: "  CANCELLED = 5;\n", with: "  CANCELLED = 5;\n  // New.\n  PAUSED = 6;\n") }
        #expect(enumIssues(added, table: swiftEnums).contains { $0.hasPrefix("JobStatus: Swift raw values") })
        let reordered = try editedSchema("health.proto") {
            $0.replacingOccurrences(of: "SERVING = 1;", with: "SERVING = 2;").replacingOccurrences(of: "NOT_SERVING = 2;", with: "NOT_SERVING = 1;")
        }
        #expect(consistencyIssues(reordered) == [])  // still a valid proto…
        #expect(enumIssues(reordered, table: swiftEnums) == [])  // …and the order of declaration is the same
        let swapped = try editedSchema("health.proto") {
            $0.replacingOccurrences(of: "  SERVING = 1;\n", with: "").replacingOccurrences(of: "  NOT_SERVING = 2;\n", with: "  NOT_SERVING = 2;\n  // Moved.\n  SERVING = 1;\n")
        }
        #expect(enumIssues(swapped, table: swiftEnums).contains { $0.hasPrefix("ServingStatus: Swift raw values") })
        let newEnum = try editedSchema("health.proto") { $0 + "\n// New.\nenum Color {\n  // Unset.\n  COLOR_UNSPECIFIED = 0;\n}\n" }
        #expect(enumIssues(newEnum, table: swiftEnums).contains("proto enum Color has no Swift enum in the table"))
    }

    @Test func aMethodMismatchIsCaught() throws {
        let added = try editedSchema("health.proto") {
            $0.replacingOccurrences(of: "  rpc Check(", with: "  // New.\n  rpc Watch(HealthCheckRequest) returns (stream HealthCheckResponse);\n  // Old.\n  rpc Check(")
        }
        #expect(methodIssues(added, swift: swiftMethods) == ["proto method ferry.v1.Health/Watch has no FerryMethod case"])
        let unary = try editedSchema("jobs.proto") { $0.replacingOccurrences(of: "returns (stream JobEvent)", with: "returns (JobEvent)") }
        #expect(methodIssues(unary, swift: swiftMethods) == ["ferry.v1.Jobs/WatchJob: isServerStreaming is true, proto says false"])
        let extra = swiftMethods + [("ferry.v1.Jobs/DeleteJob", false)]
        #expect(methodIssues(try loadProtoSchema(), swift: extra) == ["FerryMethod ferry.v1.Jobs/DeleteJob is not a proto method"])
    }

    @Test func protoProblemsAreCaught() throws {
        let undocumented = try editedSchema("jobs.proto") {
            $0.replacingOccurrences(of: "  // The principal (token owner) that started the job.\n", with: "")
        }
        #expect(documentationIssues(undocumented) == ["field Job.created_by has no comment"])
        let trailingOnly = try editedSchema("health.proto") {
            $0.replacingOccurrences(of: "  // The server's serving status.\n  ServingStatus status = 1;", with: "  ServingStatus status = 1; // trailing")
        }
        #expect(documentationIssues(trailingOnly) == ["field HealthCheckResponse.status has no comment"])
        let clash = try editedSchema("health.proto") { $0.replacingOccurrences(of: "NOT_SERVING = 2;", with: "NOT_SERVING = 2;\n  // Clash.\n  RUNNING = 3;") }
        #expect(consistencyIssues(clash).contains { $0.hasPrefix("enum value RUNNING is in both") })
        let unknownType = try editedSchema("jobs.proto") { $0.replacingOccurrences(of: "JobError error = 9;", with: "JobFailure error = 9;") }
        #expect(consistencyIssues(unknownType).contains("Job.error: unknown type JobFailure"))
        let noImport = try editedSchema("instances.proto") { $0.replacingOccurrences(of: "import \"google/protobuf/timestamp.proto\";", with: "") }
        #expect(consistencyIssues(noImport).contains { $0.contains("without importing") })
        #expect(throws: ProtoParseError.self) {
            try editedSchema("jobs.proto") { $0.replacingOccurrences(of: "message JobError {", with: "message JobError {\n  message Inner {}") }
        }
    }

    @Test func jsonNamesFollowProtoc() {
        #expect(protoJSONName("request_id") == "requestId")
        #expect(protoJSONName("instance_replace") == "instanceReplace")
        #expect(protoJSONName("import") == "import")
        #expect(protoJSONName("next_page_token") == "nextPageToken")
        #expect(screamingSnakeCase("JobEventType") == "JOB_EVENT_TYPE")
    }
}
